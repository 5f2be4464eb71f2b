//! ResourceService over mutual TLS against a dev-mode machined: the status controller's
//! resources are listed, read and watched; a change of the machine shows up as a watch
//! event with a higher version.

mod common;

use basalt_proto::machine::v1 as pb;
use basalt_proto::resource::v1 as rs;
use common::Fixture;
use std::time::Duration;
use tonic::Code;

fn spec(r: &rs::Resource) -> serde_json::Value {
    serde_json::from_slice(&r.spec_json).unwrap()
}

async fn next(s: &mut tonic::Streaming<rs::WatchEvent>) -> rs::WatchEvent {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("a watch event in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn resources_are_listed_read_and_watched() {
    let fx = Fixture::new();
    let node = fx.start_configured("resources");
    let mut c = fx.connect(&node, "reader", None).await.unwrap();

    // The controller publishes within a second of the start.
    let mut hostname = None;
    for _ in 0..50 {
        match c
            .resource
            .get(rs::GetRequest {
                namespace: "machine".into(),
                r#type: "Hostname".into(),
                id: "hostname".into(),
            })
            .await
        {
            Ok(r) => {
                hostname = r.into_inner().resource;
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::NotFound),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let hostname = hostname.expect("Hostname resource published");
    assert_eq!(spec(&hostname)["hostname"], "node-1");
    assert_eq!(spec(&hostname)["want"], "node-1");
    let meta = hostname.metadata.unwrap();
    assert_eq!(meta.owner, "StatusController");
    let list = c
        .resource
        .list(rs::ListRequest {
            namespace: "config".into(),
            r#type: "MachineConfig".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.resources.len(), 1);
    assert_eq!(spec(&list.resources[0])["version"], 1);

    // Watch the config resource, then apply a new configuration: an UPDATED event follows.
    let mut watch = c
        .resource
        .watch(rs::WatchRequest {
            namespace: "config".into(),
            r#type: "MachineConfig".into(),
            id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut watch).await;
    assert_eq!(first.r#type, rs::WatchEventType::Existing as i32);
    assert_eq!(
        next(&mut watch).await.r#type,
        rs::WatchEventType::Bootstrapped as i32
    );
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    admin
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: fx
                .config_yaml
                .replace("hostname: node-1", "hostname: node-2")
                .into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    let updated = next(&mut watch).await;
    assert_eq!(updated.r#type, rs::WatchEventType::Updated as i32);
    let r = updated.resource.unwrap();
    assert_eq!(spec(&r)["version"], 2);
    assert_eq!(spec(&r)["hostname"], "node-2");
    assert_eq!(r.metadata.unwrap().version, 2);

    // The network controller publishes what it observes (dev mode: the workstation's
    // links, read-only): the loopback link with its address.
    let lo = c
        .resource
        .get(rs::GetRequest {
            namespace: "network".into(),
            r#type: "Link".into(),
            id: "lo".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .expect("network/Link lo");
    assert_eq!(spec(&lo)["loopback"], true);
    assert_eq!(
        spec(&lo)["up"],
        true,
        "{}",
        String::from_utf8_lossy(&lo.spec_json)
    );
    let addresses = c
        .resource
        .list(rs::ListRequest {
            namespace: "network".into(),
            r#type: "Address".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert!(
        addresses
            .iter()
            .any(|a| spec(a)["address"] == "127.0.0.1/8"),
        "{addresses:?}"
    );

    // Bad requests name the problem.
    let e = c
        .resource
        .list(rs::ListRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .resource
        .get(rs::GetRequest {
            namespace: "machine".into(),
            r#type: "Hostname".into(),
            id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
