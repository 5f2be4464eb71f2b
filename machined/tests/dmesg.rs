//! The Dmesg RPC over mutual TLS against a dev-mode machined reading this host's
//! /dev/kmsg: tail, follow (a line written to /dev/kmsg arrives), and a clear error where
//! the kernel log may not be read.

mod common;

use basalt_proto::machine::v1 as pb;
use common::Fixture;
use std::time::Duration;
use tonic::Code;

#[tokio::test]
async fn dmesg_tail_and_follow() {
    let fx = Fixture::new();
    let node = fx.start_configured("dmesg");
    let mut reader = fx.connect(&node, "reader", None).await.unwrap();
    let readable = std::fs::File::open("/dev/kmsg").is_ok();
    let reply = reader
        .machine
        .dmesg(pb::DmesgRequest {
            follow: false,
            tail: 3,
        })
        .await;
    if !readable {
        let e = reply.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("/dev/kmsg"), "{e:?}");
        return;
    }
    let mut s = reply.unwrap().into_inner();
    let mut tail = Vec::new();
    while let Some(k) = s.message().await.unwrap() {
        tail.push(k);
    }
    assert_eq!(tail.len(), 3, "{tail:?}");
    assert!(tail.windows(2).all(|w| w[0].sequence < w[1].sequence));
    // Follow: a message written to the kernel log after the replay arrives.
    let mut follow = reader
        .machine
        .dmesg(pb::DmesgRequest {
            follow: true,
            tail: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let first = follow.message().await.unwrap().unwrap();
    let marker = format!("basalt-dmesg-test-{}", std::process::id());
    if std::fs::write("/dev/kmsg", format!("<5>{marker}\n")).is_err() {
        return; // may read but not write the kernel log: the replay was checked
    }
    loop {
        let k = tokio::time::timeout(Duration::from_secs(10), follow.message())
            .await
            .expect("the written message arrives")
            .unwrap()
            .unwrap();
        assert!(k.sequence > first.sequence);
        if k.message == marker {
            assert_eq!(k.priority, 5);
            assert_eq!(k.facility, 1, "written from user space");
            break;
        }
    }
}
