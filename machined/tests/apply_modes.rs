//! ApplyConfiguration over mutual TLS against dev-mode machined processes: TRY reverts by
//! itself unless confirmed (also across a restart), and a malformed or invalid configuration
//! never changes the running one.

mod common;

use basalt_proto::machine::v1 as pb;
use common::{Fixture, Machined};
use std::time::{Duration, Instant};
use tonic::Code;

fn try_request(data: &str, seconds: i64) -> pb::ApplyConfigurationRequest {
    pb::ApplyConfigurationRequest {
        data: data.as_bytes().to_vec(),
        mode: pb::ApplyMode::Try as i32,
        dry_run: false,
        try_timeout: Some(prost_types::Duration { seconds, nanos: 0 }),
    }
}

async fn current(c: &mut basaltctl::connect::Clients) -> (String, u64) {
    let g = c
        .machine
        .get_configuration(pb::GetConfigurationRequest {})
        .await
        .unwrap()
        .into_inner();
    (String::from_utf8(g.data).unwrap(), g.version)
}

/// The hostnames machined set through the dev host, in order.
fn hostnames_set(node: &Machined) -> Vec<String> {
    let log = std::fs::read_to_string(node.state.join("host-actions.jsonl")).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v.pointer("/action/hostname")
                .or_else(|| v.get("hostname"))
                .and_then(|h| h.as_str())
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn try_reverts_unless_confirmed() {
    let fx = Fixture::new();
    let node = fx.start_configured("try-revert");
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let original = fx.config_yaml.clone();
    let trial = original.replace("hostname: node-1", "hostname: node-trial");

    let r = c
        .machine
        .apply_configuration(try_request(&trial, 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.mode, pb::ApplyMode::Try as i32);
    assert_eq!(r.version, 2);
    assert!(r.message.contains("on trial for 2s"), "{}", r.message);
    assert_eq!(current(&mut c).await, (trial.clone(), 2));

    // Not confirmed: the previous configuration comes back as version 3.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (data, version) = current(&mut c).await;
        if version == 3 {
            assert_eq!(data, original);
            break;
        }
        assert!(Instant::now() < deadline, "no revert:\n{}", node.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        node.stderr().contains("not confirmed within 2s"),
        "{}",
        node.stderr()
    );
    let names = hostnames_set(&node);
    assert_eq!(
        names[names.len() - 2..],
        ["node-trial".to_string(), "node-1".to_string()],
        "{names:?}"
    );

    // Confirmed by applying it again: it stays after the timeout.
    c.machine
        .apply_configuration(try_request(&trial, 1))
        .await
        .unwrap();
    let confirm = c
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: trial.clone().into_bytes(),
            mode: pb::ApplyMode::NoReboot as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        confirm.message.contains("trial confirmed"),
        "{}",
        confirm.message
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(current(&mut c).await, (trial, 5));
}

#[tokio::test]
async fn a_trial_pending_at_restart_is_reverted() {
    let fx = Fixture::new();
    let node = fx.start_configured("try-restart");
    let state = node.state.clone();
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let trial = fx
        .config_yaml
        .replace("hostname: node-1", "hostname: node-trial");
    c.machine
        .apply_configuration(try_request(&trial, 3600))
        .await
        .unwrap();
    drop(c);
    drop(node); // killed: like a reboot before the confirmation

    let node = Machined::start(&state);
    assert!(
        node.stderr()
            .contains("was not confirmed before this start"),
        "{}",
        node.stderr()
    );
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    assert_eq!(current(&mut c).await, (fx.config_yaml.clone(), 3));
}

#[tokio::test]
async fn bad_configurations_change_nothing() {
    let fx = Fixture::new();
    let node = fx.start_configured("bad-config");
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let before = current(&mut c).await;
    let head = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n";
    let cases = [
        // Strict decoding: the unknown field with its line and column.
        (
            fx.config_yaml
                .replace("hostname: node-1", "hostname: node-1\nhostnme: typo"),
            vec!["hostnme", "line 4"],
        ),
        // Not YAML at all.
        (format!("{head}hostname: [unclosed\n"), vec!["line"]),
        // Validation: every error at once.
        (
            format!(
                "{head}hostname: -bad-\nsysctls:\n  swappiness: \"1\"\nkernelModules:\n  - name: \"\"\n"
            ),
            vec![
                "MachineConfig.hostname",
                "MachineConfig.sysctls",
                "MachineConfig.kernelModules[0]",
            ],
        ),
        // Valid but without API certificates: the node would lock everybody out.
        (
            format!("{head}hostname: node-1\n"),
            vec!["MachineConfig.api.ca is required"],
        ),
    ];
    for (data, needles) in cases {
        for mode in [pb::ApplyMode::Auto, pb::ApplyMode::Try] {
            let e = c
                .machine
                .apply_configuration(pb::ApplyConfigurationRequest {
                    data: data.clone().into_bytes(),
                    mode: mode as i32,
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
            for needle in &needles {
                assert!(e.message().contains(needle), "{needle}: {}", e.message());
            }
        }
    }
    assert_eq!(current(&mut c).await, before);
    assert!(hostnames_set(&node).iter().all(|h| h == "node-1"));
}

#[tokio::test]
async fn try_needs_a_configuration_to_return_to() {
    let fx = Fixture::new();
    let node = Machined::start(&fx.state_dir("try-maintenance"));
    let fp = node.fingerprint.clone().expect("maintenance mode");
    let mut c = common::connect_with(&node, &common::pinned(&fp), None)
        .await
        .unwrap();
    let e = c
        .machine
        .apply_configuration(try_request(&fx.config_yaml, 60))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("needs a configuration"),
        "{}",
        e.message()
    );
}
