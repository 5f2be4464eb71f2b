//! The Reset RPC in dev mode over mutual TLS: only admins may call it, a request that wipes
//! nothing is refused, and a STATE wipe empties the state directory, records the wipe and
//! the reboot, and the node comes back in maintenance mode.

mod common;

use basalt_proto::machine::v1 as pb;
use common::{Fixture, Machined};
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn reset_wipes_state_in_dev_mode() {
    let fx = Fixture::new();
    let mut node = fx.start_configured("reset");
    let state = node.state.clone();
    assert!(state.join("audit").exists());
    let mut operator = fx.connect(&node, "operator", None).await.unwrap();
    let denied = operator
        .machine
        .reset(pb::ResetRequest {
            wipe_state: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let nothing = admin
        .machine
        .reset(pb::ResetRequest::default())
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::InvalidArgument);
    assert!(nothing.message().contains("wipe_state"), "{nothing:?}");
    let r = admin
        .machine
        .reset(pb::ResetRequest {
            wipe_state: true,
            wipe_data: true,
            shutdown: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.message
            .starts_with("wiping STATE and DATA, then rebooting"),
        "{}",
        r.message
    );
    // The state directory holds nothing but the record of what was done after the wipe.
    let left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "machined.log")
        .collect();
    assert_eq!(left, ["host-actions.jsonl"], "{left:?}");
    let actions = std::fs::read_to_string(state.join("host-actions.jsonl")).unwrap();
    let kinds: Vec<&str> = actions
        .lines()
        .map(|l| {
            l.split(r#""action":""#)
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(kinds, ["wipe", "reboot"], "{actions}");
    // DATA is wiped first (recorded, then erased with the rest of STATE), STATE last.
    assert!(actions.contains(r#""partition":"STATE""#), "{actions}");
    // "Rebooted" (machined started again on the same state): maintenance mode.
    node.terminate(Duration::from_secs(10));
    let again = Machined::start(&state);
    assert!(again.fingerprint.is_some(), "{}", again.stderr());
}
