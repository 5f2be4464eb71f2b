//! The network controller against the real kernel, in a network namespace of its own (needs
//! root, like the other tests that use loop devices): a veth pair is configured from a
//! NetworkConfig, drift made with netlink (address deleted, link set down) is put back, and
//! a configuration change moves the address and removes the route machined had set.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use futures_util::TryStreamExt;
use machined::network::Network;
use machined::network::controller::{NetCorrection, NetworkController, Route};

const MACHINE: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: netns-1\n";

fn network_doc(address: &str, route: bool) -> String {
    let routes = if route {
        "    routes:\n      - network: 10.10.0.0/16\n        gateway: 10.9.0.2\n"
    } else {
        ""
    };
    format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\ninterfaces:\n  - name: v0\n    \
         addresses: [\"{address}\"]\n    mtu: 1400\n{routes}nameservers: [\"10.9.0.53\"]\n"
    )
}

fn kinds(done: &[NetCorrection]) -> Vec<String> {
    done.iter().map(|c| c.to_string()).collect()
}

async fn scenario() {
    let (connection, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(connection);
    handle
        .link()
        .add(rtnetlink::LinkVeth::new("v0", "v1").build())
        .execute()
        .await
        .unwrap();
    let index_of = |name: &'static str| {
        let handle = handle.clone();
        async move {
            let mut s = handle.link().get().match_name(name.to_string()).execute();
            s.try_next().await.unwrap().unwrap().header.index
        }
    };
    let (v0, v1) = (index_of("v0").await, index_of("v1").await);
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(v1).up().build())
        .execute()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let applied = machined::config_watch::ConfigPublisher::default();
    let decode = |text: String| basalt_config::Config::from_yaml(&text).unwrap();
    applied.publish(
        1,
        decode(format!("{MACHINE}{}", network_doc("10.9.0.1/24", true))),
    );
    let resources = Arc::new(machined::resources::ResourceStore::default());
    let controller = NetworkController {
        network: Network::connect().unwrap(),
        config: applied.watch(),
        resources: resources.clone(),
        events: Arc::new(machined::events::EventBus::new(100)),
        state_dir: dir.path().to_path_buf(),
        resolv_path: dir.path().join("resolv.conf"),
        correct: true,
        owned: Mutex::new((BTreeSet::new(), BTreeSet::new())),
        reported: Mutex::new(BTreeSet::new()),
    };

    // The first round applies the configuration to the fresh link.
    let done = controller.round().await.unwrap();
    assert_eq!(
        kinds(&done),
        [
            "link v0 was down, set it up",
            "link v0 had MTU Some(1500), set 1400",
            "address 10.9.0.1/24 on v0 was missing, added it",
            "route 10.10.0.0/16 via 10.9.0.2 on v0 was missing, added it",
            "resolv.conf differed, wrote it",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap(),
        "# written by machined\nnameserver 10.9.0.53\n"
    );
    assert!(
        controller.round().await.unwrap().is_empty(),
        "a second round has nothing to do"
    );
    let observed = controller
        .network
        .observe(&dir.path().join("resolv.conf"))
        .await
        .unwrap();
    let link = observed.links.iter().find(|l| l.link.name == "v0").unwrap();
    assert!(link.up && link.mtu == Some(1400), "{link:?}");
    assert!(
        resources
            .get("network", "Address", "v0/10.9.0.1/24")
            .is_some()
    );
    assert!(
        resources
            .get("network", "Route", "v0/10.10.0.0/16")
            .is_some()
    );

    // Drift: somebody deletes the address (the kernel drops the route with it) and sets
    // the link down.
    let mut addrs = handle.address().get().set_link_index_filter(v0).execute();
    while let Some(msg) = addrs.try_next().await.unwrap() {
        handle.address().del(msg).execute().await.unwrap();
    }
    machined::network::Network::connect()
        .unwrap()
        .set_down(v0)
        .await
        .unwrap();
    let done = controller.round().await.unwrap();
    assert_eq!(
        kinds(&done),
        [
            "link v0 was down, set it up",
            "address 10.9.0.1/24 on v0 was missing, added it",
            "route 10.10.0.0/16 via 10.9.0.2 on v0 was missing, added it",
        ]
    );

    // A new configuration: another address, no route. machined removes what it had set.
    applied.publish(
        2,
        decode(format!("{MACHINE}{}", network_doc("10.9.0.5/24", false))),
    );
    let done = controller.round().await.unwrap();
    assert_eq!(
        done,
        [
            NetCorrection::RemoveRoute(Route {
                link: "v0".into(),
                destination: Ipv4Addr::new(10, 10, 0, 0),
                prefix_len: 16,
                gateway: Some(Ipv4Addr::new(10, 9, 0, 2)),
                metric: None,
            }),
            NetCorrection::RemoveAddress(("v0".into(), Ipv4Addr::new(10, 9, 0, 1), 24)),
            NetCorrection::AddAddress(("v0".into(), Ipv4Addr::new(10, 9, 0, 5), 24)),
        ]
    );
    let observed = controller
        .network
        .observe(&dir.path().join("resolv.conf"))
        .await
        .unwrap();
    let on_v0: Vec<_> = observed.addresses.iter().filter(|a| a.0 == "v0").collect();
    assert_eq!(on_v0, [&("v0".to_string(), Ipv4Addr::new(10, 9, 0, 5), 24)]);
    assert!(
        !observed
            .routes
            .iter()
            .any(|r| r.destination == Ipv4Addr::new(10, 10, 0, 0))
    );
    assert!(controller.round().await.unwrap().is_empty());
}

#[test]
fn network_config_is_applied_kept_and_changed_in_a_namespace() {
    // Network namespaces are per thread: unshare in a fresh thread and run a
    // current-thread runtime there, so every netlink socket lives in the new namespace.
    std::thread::spawn(|| {
        // SAFETY: only CLONE_NEWNET, in a thread that shares no network state yet; the
        // flags that make unshare unsafe (file table, fs) are not used.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
            .expect("unshare(CLONE_NEWNET) needs root: run the tests as root");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    })
    .join()
    .unwrap();
}
