//! The Events RPC over mutual TLS against a dev-mode machined: replay with tail and
//! after_id, live follow, and the roles that may read it.

mod common;

use basalt_proto::machine::v1 as pb;
use common::Fixture;
use std::time::Duration;
use tonic::Code;

async fn replay(c: &mut basaltctl::connect::Clients, tail: u32, after_id: u64) -> Vec<pb::Event> {
    let mut s = c
        .machine
        .events(pb::EventsRequest {
            tail,
            after_id,
            follow: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("a replay ends by itself")
        .unwrap()
    {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn events_replay_then_follow() {
    let fx = Fixture::new();
    let node = fx.start_configured("events");
    let mut reader = fx.connect(&node, "reader", None).await.unwrap();
    let history = replay(&mut reader, 0, 0).await;
    assert!(
        history
            .iter()
            .any(|e| e.kind == pb::EventKind::Boot as i32 && e.message.contains("dev mode")),
        "{history:?}"
    );
    let last = history.last().unwrap().id;
    // A follower sees a power action published after it subscribed.
    let mut follower = reader
        .machine
        .events(pb::EventsRequest {
            tail: 1,
            after_id: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    let first = follower.message().await.unwrap().unwrap();
    assert_eq!(first.id, last, "tail 1 replays the newest event");
    let mut operator = fx.connect(&node, "operator", None).await.unwrap();
    operator
        .machine
        .reboot(pb::RebootRequest::default())
        .await
        .unwrap();
    let live = tokio::time::timeout(Duration::from_secs(10), follower.message())
        .await
        .expect("the reboot event arrives")
        .unwrap()
        .unwrap();
    assert_eq!(live.id, last + 1);
    assert_eq!(live.kind, pb::EventKind::Power as i32);
    assert!(live.message.contains("rebooting"), "{live:?}");
    // after_id resumes after a given event.
    let resumed = replay(&mut reader, 0, last).await;
    assert_eq!(resumed.iter().map(|e| e.id).collect::<Vec<_>>(), [last + 1]);
    // Readers may read events; a certificate without a basalt role may not.
    let mut nobody = fx.connect(&node, "nobody", None).await.unwrap();
    let denied = nobody
        .machine
        .events(pb::EventsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}
