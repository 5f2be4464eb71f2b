//! Service supervision over mutual TLS against a dev-mode machined running real
//! `/bin/sh` services from the configuration's ServiceConfig: dependency order, restart
//! with backoff then failed, stop (SIGTERM, then SIGKILL), restart, logs (tail and follow),
//! events of state changes, and the roles that may do each.

mod common;

use basalt_proto::machine::v1 as pb;
use basaltctl::connect::Clients;
use common::{Fixture, Machined};
use std::time::{Duration, Instant};
use tonic::Code;

const SERVICES: &str = r#"
---
apiVersion: basalt.dev/v1alpha1
kind: ServiceConfig
services:
  - name: web
    command: /bin/sh
    args: ["-c", "echo web up; exec sleep 120"]
    dependsOn: [db]
  - name: db
    command: /bin/sh
    args: ["-c", "echo db up; echo $DB_MODE; exec sleep 120"]
    env:
      DB_MODE: primary
  - name: crash
    command: /bin/sh
    args: ["-c", "echo boom >&2; exit 3"]
  - name: stubborn
    command: /bin/sh
    args: ["-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"]
  - name: ticker
    command: /bin/sh
    args: ["-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
"#;

fn start(fx: &Fixture, name: &str) -> Machined {
    let state = fx.state_dir(name);
    let config = format!("{}{SERVICES}", fx.config_yaml);
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    Machined::start_with(
        &state,
        &[
            "--service-backoff-ms",
            "100",
            "--service-restart-limit",
            "2",
            "--service-stop-timeout-ms",
            "700",
        ],
    )
}

async fn list(c: &mut Clients) -> Vec<pb::ServiceInfo> {
    c.machine
        .service_list(pb::ServiceListRequest {})
        .await
        .unwrap()
        .into_inner()
        .services
}

async fn wait_state(c: &mut Clients, id: &str, state: pb::ServiceState) -> pb::ServiceInfo {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let services = list(c).await;
        let s = services.iter().find(|s| s.id == id).unwrap().clone();
        if s.state == state as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never {state:?}: {services:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn events(c: &mut Clients) -> Vec<pb::Event> {
    let mut s = c
        .machine
        .events(pb::EventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.unwrap() {
        out.push(e);
    }
    out
}

async fn log_lines(c: &mut Clients, service: &str, tail: u32) -> Vec<pb::LogEntry> {
    let mut s = c
        .machine
        .logs(pb::LogsRequest {
            service: service.into(),
            follow: false,
            tail_lines: tail,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(l) = s.message().await.unwrap() {
        out.push(l);
    }
    out
}

#[tokio::test]
async fn dependency_order_backoff_then_failed_and_logs() {
    let fx = Fixture::new();
    let node = start(&fx, "deps");
    let mut reader = fx.connect(&node, "reader", None).await.unwrap();
    let db = wait_state(&mut reader, "db", pb::ServiceState::Running).await;
    let web = wait_state(&mut reader, "web", pb::ServiceState::Running).await;
    assert!(db.pid > 0 && web.pid > 0 && db.pid != web.pid);
    // web was started only once db was healthy.
    let all = events(&mut reader).await;
    let first = |subject: &str, text: &str| {
        all.iter()
            .find(|e| e.subject == subject && e.message.starts_with(text))
            .unwrap_or_else(|| panic!("no {subject} {text} event in {all:?}"))
            .id
    };
    assert!(first("web", "waiting: waiting for db") < first("db", "healthy"));
    assert!(first("db", "healthy") < first("web", "starting"));
    // The crashing service was restarted with backoff, then given up on.
    let crash = wait_state(&mut reader, "crash", pb::ServiceState::Failed).await;
    let crash = if crash.message.contains("gave up") {
        crash
    } else {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = list(&mut reader)
                .await
                .into_iter()
                .find(|s| s.id == "crash")
                .unwrap();
            if s.message.contains("gave up") {
                break s;
            }
            assert!(Instant::now() < deadline, "crash never gave up: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(crash.restarts, 2, "{crash:?}");
    assert!(
        crash
            .message
            .contains("exited with code 3; gave up after 2 restarts"),
        "{crash:?}"
    );
    let later = events(&mut reader).await;
    let backoffs: Vec<&str> = later
        .iter()
        .filter(|e| e.subject == "crash" && e.message.starts_with("backoff"))
        .map(|e| e.message.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        backoffs.iter().any(|m| m.contains("restart 1/2 in 100 ms"))
            && backoffs.iter().any(|m| m.contains("restart 2/2 in 200 ms")),
        "{backoffs:?}"
    );
    let crash_log = log_lines(&mut reader, "crash", 0).await;
    let booms = crash_log
        .iter()
        .filter(|l| l.message == "boom" && l.stream == pb::LogStream::Stderr as i32)
        .count();
    assert_eq!(booms, 3, "{crash_log:?}");
    // Logs: environment, tail, follow, machined's own log, unknown service.
    let db_log = log_lines(&mut reader, "db", 0).await;
    assert!(db_log.iter().any(|l| l.message == "primary"), "{db_log:?}");
    let last = log_lines(&mut reader, "ticker", 2).await;
    assert_eq!(last.len(), 2, "{last:?}");
    let mut follow = reader
        .machine
        .logs(pb::LogsRequest {
            service: "ticker".into(),
            follow: true,
            tail_lines: 1,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let l = tokio::time::timeout(Duration::from_secs(10), follow.message())
            .await
            .expect("ticker lines keep coming")
            .unwrap()
            .unwrap();
        seen.push(l.message);
    }
    let numbers: Vec<u64> = seen
        .iter()
        .filter_map(|m| m.strip_prefix("tick ")?.parse().ok())
        .collect();
    assert!(
        numbers.len() >= 3 && numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "{seen:?}"
    );
    let own = log_lines(&mut reader, "machined", 0).await;
    assert!(
        own.iter().any(|l| l.message.contains("API listening")),
        "{own:?}"
    );
    let missing = reader
        .machine
        .logs(pb::LogsRequest {
            service: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    stops_its_services(&mut reader, node).await;
}

#[tokio::test]
async fn stop_restart_events_and_roles() {
    let fx = Fixture::new();
    let node = start(&fx, "ops");
    let mut reader = fx.connect(&node, "reader", None).await.unwrap();
    let mut operator = fx.connect(&node, "operator", None).await.unwrap();
    wait_state(&mut reader, "web", pb::ServiceState::Running).await;
    let stubborn = wait_state(&mut reader, "stubborn", pb::ServiceState::Running).await;
    // Readers may list but not act.
    let denied = reader
        .machine
        .service_stop(pb::ServiceStopRequest { id: "web".into() })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A follower sees the state changes of a stop.
    let mut follow = reader
        .machine
        .events(pb::EventsRequest {
            tail: 1,
            after_id: 0,
            follow: true,
        })
        .await
        .unwrap()
        .into_inner();
    follow.message().await.unwrap().unwrap();
    let r = operator
        .machine
        .service_stop(pb::ServiceStopRequest { id: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.message.starts_with("web: stopped"), "{}", r.message);
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m.starts_with("stopped")) {
        let e = tokio::time::timeout(Duration::from_secs(10), follow.message())
            .await
            .expect("service events arrive")
            .unwrap()
            .unwrap();
        if e.subject == "web" {
            assert_eq!(e.kind, pb::EventKind::Service as i32);
            got.push(e.message);
        }
    }
    assert!(got[0].starts_with("stopping: SIGTERM"), "{got:?}");
    // A process that ignores SIGTERM is killed after the stop timeout (700 ms).
    let t = Instant::now();
    operator
        .machine
        .service_stop(pb::ServiceStopRequest {
            id: "stubborn".into(),
        })
        .await
        .unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
    let log = log_lines(&mut reader, "stubborn", 0).await;
    assert!(log.iter().any(|l| l.message.contains("SIGKILL")), "{log:?}");
    let s = wait_state(&mut reader, "stubborn", pb::ServiceState::Stopped).await;
    assert_eq!(s.pid, 0);
    assert!(std::fs::metadata(format!("/proc/{}", stubborn.pid)).is_err());
    // Start again, then restart: a new process each time.
    operator
        .machine
        .service_start(pb::ServiceStartRequest { id: "web".into() })
        .await
        .unwrap();
    let web = wait_state(&mut reader, "web", pb::ServiceState::Running).await;
    let r = operator
        .machine
        .service_restart(pb::ServiceRestartRequest { id: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.message.starts_with("web: running"), "{}", r.message);
    let again = wait_state(&mut reader, "web", pb::ServiceState::Running).await;
    assert_ne!(again.pid, web.pid);
    assert_eq!(again.restarts, web.restarts + 1);
    let unknown = operator
        .machine
        .service_start(pb::ServiceStartRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    stops_its_services(&mut reader, node).await;
}

/// SIGTERM to machined stops its services (in reverse dependency order) before it exits:
/// no service process is left behind.
async fn stops_its_services(reader: &mut Clients, mut node: Machined) {
    let pids: Vec<u32> = list(reader)
        .await
        .iter()
        .map(|s| s.pid)
        .filter(|p| *p > 0)
        .collect();
    assert!(!pids.is_empty());
    let status = node.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status:?}\n{}", node.stderr());
    for pid in pids {
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_err(),
            "service pid {pid} outlived machined"
        );
    }
    let log = node.stderr();
    let web = log.find("terminated, stopping").unwrap();
    assert!(web > 0, "{log}");
}
