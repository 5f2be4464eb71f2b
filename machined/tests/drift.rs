//! Drift correction against a dev-mode machined: a value changed behind machined's back
//! (the dev host's simulated state edited, as another process would change the real one) is
//! put back by the next reconciliation round and reported.

mod common;

use basalt_proto::machine::v1 as pb;
use common::{Fixture, Machined};
use std::time::{Duration, Instant};

fn dev_state(node: &Machined) -> serde_json::Value {
    let data = std::fs::read(node.state.join(machined::host::DEV_STATE_FILE)).unwrap();
    serde_json::from_slice(&data).unwrap()
}

#[tokio::test]
async fn drift_is_corrected_and_reported() {
    let fx = Fixture::new();
    let state = fx.state_dir("drift");
    // The fixture's configuration is one MachineConfig document: add a sysctl to it.
    assert!(!fx.config_yaml.contains("\n---"));
    let config = format!("{}sysctls:\n  vm.swappiness: \"10\"\n", fx.config_yaml);
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    let node = Machined::start_with(&state, &["--reconcile-interval", "1"]);
    // The start applied the settings.
    let s = dev_state(&node);
    assert_eq!(s["hostname"], "node-1");
    assert_eq!(s["sysctls"]["vm.swappiness"], "10");

    // Somebody changes both behind machined's back.
    let mut drifted = s.clone();
    drifted["hostname"] = "intruder".into();
    drifted["sysctls"]["vm.swappiness"] = "60".into();
    std::fs::write(
        node.state.join(machined::host::DEV_STATE_FILE),
        serde_json::to_vec(&drifted).unwrap(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(node
        .stderr()
        .contains("drift corrected: hostname was \"intruder\"")
        && node
            .stderr()
            .contains("drift corrected: sysctl vm.swappiness was \"60\""))
    {
        assert!(
            Instant::now() < deadline,
            "no correction:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = dev_state(&node);
    assert_eq!(s["hostname"], "node-1");
    assert_eq!(s["sysctls"]["vm.swappiness"], "10");

    // Each correction is an event too.
    let mut c = fx.connect(&node, "reader", None).await.unwrap();
    let mut stream = c
        .machine
        .events(pb::EventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut subjects = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a replay ends by itself")
        .unwrap()
    {
        if e.message.starts_with("drift corrected") {
            assert_eq!(e.kind, pb::EventKind::Config as i32);
            subjects.push(e.subject);
        }
    }
    assert!(subjects.contains(&"hostname".to_string()), "{subjects:?}");
    assert!(
        subjects.contains(&"sysctl/vm.swappiness".to_string()),
        "{subjects:?}"
    );

    // A configuration change moves the target: the next rounds keep the new value.
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    c.machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: config.replace("\"10\"", "\"20\"").into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(dev_state(&node)["sysctls"]["vm.swappiness"], "20");
    assert!(!node.stderr().contains("was \"20\""), "{}", node.stderr());
}
