//! `basaltctl services` and `basaltctl service NAME start|stop|restart`.

use crate::reply::{Rendered, status_err, ts};
use basalt_proto::machine::v1 as pb;
use basaltctl::connect::Clients;
use serde_json::json;
use std::fmt::Write as _;

/// What `basaltctl service NAME ACTION` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceAction {
    /// Start a stopped service.
    Start,
    /// Stop a running service.
    Stop,
    /// Stop then start.
    Restart,
}

fn state(s: i32) -> &'static str {
    match pb::ServiceState::try_from(s) {
        Ok(pb::ServiceState::Waiting) => "waiting",
        Ok(pb::ServiceState::Starting) => "starting",
        Ok(pb::ServiceState::Running) => "running",
        Ok(pb::ServiceState::Stopping) => "stopping",
        Ok(pb::ServiceState::Stopped) => "stopped",
        Ok(pb::ServiceState::Failed) => "failed",
        _ => "unknown",
    }
}

/// ServiceList as a table.
pub async fn list(c: &mut Clients) -> anyhow::Result<Rendered> {
    let r = c
        .machine
        .service_list(pb::ServiceListRequest {})
        .await
        .map_err(|s| status_err("ServiceList", s))?
        .into_inner();
    let mut text = format!(
        "{:<20} {:<9} {:<7} {:>7} {:>8} {:<25} MESSAGE",
        "SERVICE", "STATE", "HEALTHY", "PID", "RESTARTS", "SINCE"
    );
    let mut rows = Vec::new();
    for s in &r.services {
        let pid = if s.pid == 0 {
            "-".to_string()
        } else {
            s.pid.to_string()
        };
        write!(
            text,
            "\n{:<20} {:<9} {:<7} {:>7} {:>8} {:<25} {}",
            s.id,
            state(s.state),
            s.healthy,
            pid,
            s.restarts,
            ts(&s.since),
            s.message
        )?;
        rows.push(
            json!({"id": s.id, "state": state(s.state), "healthy": s.healthy,
            "pid": s.pid, "restarts": s.restarts, "since": ts(&s.since), "message": s.message}),
        );
    }
    Ok(Rendered {
        text,
        json: json!({"services": rows}),
    })
}

/// ServiceStart, ServiceStop or ServiceRestart.
pub async fn act(c: &mut Clients, id: String, action: ServiceAction) -> anyhow::Result<Rendered> {
    let m = &mut c.machine;
    let message = match action {
        ServiceAction::Start => {
            m.service_start(pb::ServiceStartRequest { id })
                .await
                .map_err(|s| status_err("ServiceStart", s))?
                .into_inner()
                .message
        }
        ServiceAction::Stop => {
            m.service_stop(pb::ServiceStopRequest { id })
                .await
                .map_err(|s| status_err("ServiceStop", s))?
                .into_inner()
                .message
        }
        ServiceAction::Restart => {
            m.service_restart(pb::ServiceRestartRequest { id })
                .await
                .map_err(|s| status_err("ServiceRestart", s))?
                .into_inner()
                .message
        }
    };
    Ok(Rendered {
        text: message.clone(),
        json: json!({"message": message}),
    })
}
