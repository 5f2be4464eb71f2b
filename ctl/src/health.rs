//! `basaltctl health`: one verdict per node from what the node reports, so a fleet check is
//! `basaltctl -n a,b,c health` and its exit code.
//!
//! Checks, each `ok`, `warn` or `FAIL` with a detail:
//! - `api`: the node answered Version over mutual TLS (anything else fails the connection);
//! - `boot`: the booted slot is committed (not on trial) — a failed trial is a warning;
//! - `services`: every supervised service is running and healthy;
//! - `config`: a configuration is applied (maintenance mode fails);
//! - `drift`: sysctls, modules and files of the configuration are in place (published by
//!   the node's status controller);
//! - `time`: the clock is synchronised to a time server (a warning when none is set).
//!
//! A node with any FAIL is an error for the fan-out (the exit code says some nodes failed);
//! warnings do not fail it.

use anyhow::anyhow;
use basalt_proto::machine::v1 as pb;
use basalt_proto::resource::v1 as rs;
use basaltctl::connect::Clients;
use serde_json::{Value, json};

use crate::reply::{Rendered, status_err};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Check {
    name: &'static str,
    level: Level,
    detail: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

async fn list(
    c: &mut Clients,
    namespace: &str,
    kind: &str,
) -> anyhow::Result<Vec<(String, Value)>> {
    let r = c
        .resource
        .list(rs::ListRequest {
            namespace: namespace.into(),
            r#type: kind.into(),
        })
        .await
        .map_err(|s| status_err("List", s))?
        .into_inner();
    Ok(r.resources
        .into_iter()
        .map(|r| {
            let id = r.metadata.map(|m| m.id).unwrap_or_default();
            (
                id,
                serde_json::from_slice(&r.spec_json).unwrap_or(Value::Null),
            )
        })
        .collect())
}

/// What is out of place among the published sysctls, modules and files.
fn drift(
    sysctls: &[(String, Value)],
    modules: &[(String, Value)],
    files: &[(String, Value)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (id, s) in sysctls {
        let same = match (s["value"].as_str(), s["want"].as_str()) {
            (Some(v), Some(w)) => v.split_whitespace().eq(w.split_whitespace()),
            _ => false,
        };
        if !same {
            out.push(format!(
                "sysctl {id} is {} (want {})",
                s["value"], s["want"]
            ));
        }
    }
    for (id, m) in modules {
        if m["loaded"] != true {
            out.push(format!("module {id} not loaded"));
        }
    }
    for (id, f) in files {
        if f["inSync"] != true {
            out.push(format!("file {id} differs"));
        }
    }
    out
}

/// The `config` check: the version in force, and whether the node started from an older
/// stored version or is locked because none is usable (the `ConfigLock` resource).
fn config_check(applied: Option<&Value>, lock: Option<&Value>) -> Check {
    let problems = |l: &Value, key: &str| {
        l[key]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    };
    match (applied, lock) {
        (_, Some(l)) if l["locked"] == true => check(
            "config",
            Level::Fail,
            format!(
                "locked: no stored configuration is usable ({}); apply a valid one",
                problems(l, "problems")
            ),
        ),
        (Some(a), Some(l)) => check(
            "config",
            Level::Warn,
            format!(
                "version {} applied, newer stored versions passed over: {}",
                a["version"],
                problems(l, "passedOver")
            ),
        ),
        (Some(a), None) => check(
            "config",
            Level::Ok,
            format!("version {} applied", a["version"]),
        ),
        (None, _) => check("config", Level::Fail, "no configuration: maintenance mode"),
    }
}

/// Runs the checks on one node.
pub async fn health(c: &mut Clients) -> anyhow::Result<Rendered> {
    let mut checks = Vec::new();
    let v = c
        .machine
        .version(pb::VersionRequest {})
        .await
        .map_err(|s| status_err("Version", s))?
        .into_inner();
    checks.push(check("api", Level::Ok, format!("machined {}", v.version)));

    let b = c
        .machine
        .boot_status(pb::BootStatusRequest {})
        .await
        .map_err(|s| status_err("BootStatus", s))?
        .into_inner();
    let slot = |s: i32| crate::reply::slot(s).to_string();
    checks.push(if b.committed {
        check(
            "boot",
            Level::Ok,
            format!("slot {} committed", slot(b.booted)),
        )
    } else {
        check(
            "boot",
            Level::Fail,
            format!("slot {} on trial, not committed", slot(b.booted)),
        )
    });
    if b.last_failed != pb::Slot::Unspecified as i32 {
        checks.push(check(
            "boot",
            Level::Warn,
            format!("last trial of slot {} failed", slot(b.last_failed)),
        ));
    }

    let services = c
        .machine
        .service_list(pb::ServiceListRequest {})
        .await
        .map_err(|s| status_err("ServiceList", s))?
        .into_inner()
        .services;
    let running = pb::ServiceState::Running as i32;
    let bad: Vec<String> = services
        .iter()
        .filter(|s| s.state != running || !s.healthy)
        .map(|s| s.id.clone())
        .collect();
    checks.push(if bad.is_empty() {
        check(
            "services",
            Level::Ok,
            format!("{} running and healthy", services.len()),
        )
    } else {
        check(
            "services",
            Level::Fail,
            format!("not running or unhealthy: {}", bad.join(", ")),
        )
    });

    let mut config = list(c, "config", "MachineConfig").await?;
    if config.is_empty() {
        // The node publishes its status every second: a configuration applied a moment
        // ago shows up in the next round.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        config = list(c, "config", "MachineConfig").await?;
    }
    let lock = list(c, "config", "ConfigLock").await?;
    checks.push(config_check(
        config.first().map(|(_, s)| s),
        lock.first().map(|(_, s)| s),
    ));
    let drifted = drift(
        &list(c, "machine", "Sysctl").await?,
        &list(c, "machine", "KernelModule").await?,
        &list(c, "machine", "File").await?,
    );
    checks.push(if drifted.is_empty() {
        check("drift", Level::Ok, "sysctls, modules and files in place")
    } else {
        check("drift", Level::Fail, drifted.join("; "))
    });

    let time = list(c, "time", "TimeStatus").await?;
    checks.push(match time.first().map(|(_, s)| s) {
        Some(s) if s["synced"] == true => check(
            "time",
            Level::Ok,
            format!(
                "synced to {} (offset {} ms)",
                s["server"].as_str().unwrap_or("?"),
                s["offsetMs"]
            ),
        ),
        Some(s) if s["servers"].as_array().is_some_and(|a| a.is_empty()) => {
            check("time", Level::Warn, "no time servers configured")
        }
        Some(s) => check(
            "time",
            Level::Fail,
            format!("not synchronised: {}", s["errors"]),
        ),
        None => check("time", Level::Warn, "no time status published yet"),
    });

    render(&checks)
}

fn render(checks: &[Check]) -> anyhow::Result<Rendered> {
    let word = |l: Level| match l {
        Level::Ok => "ok",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    let text: Vec<String> = checks
        .iter()
        .map(|c| format!("{:<4} {:<8} {}", word(c.level), c.name, c.detail))
        .collect();
    let text = text.join("\n");
    if checks.iter().any(|c| c.level == Level::Fail) {
        return Err(anyhow!("unhealthy\n{text}"));
    }
    let json = json!({"healthy": true, "checks": checks.iter().map(|c| json!({
        "check": c.name, "level": word(c.level), "detail": c.detail})).collect::<Vec<_>>()});
    Ok(Rendered { text, json })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_names_what_is_out_of_place() {
        let s = vec![
            (
                "vm.swappiness".to_string(),
                json!({"value": "60", "want": "10"}),
            ),
            (
                "net.ipv4.tcp_rmem".to_string(),
                json!({"value": "1\t2\t3", "want": "1 2 3"}),
            ),
        ];
        let m = vec![("dummy".to_string(), json!({"loaded": false}))];
        let f = vec![("/etc/a".to_string(), json!({"inSync": true}))];
        assert_eq!(
            drift(&s, &m, &f),
            [
                "sysctl vm.swappiness is \"60\" (want \"10\")",
                "module dummy not loaded"
            ]
        );
    }

    #[test]
    fn a_locked_or_passed_over_configuration_is_named() {
        let applied = json!({"version": 3});
        let ok = config_check(Some(&applied), None);
        assert!(ok.level == Level::Ok && ok.detail == "version 3 applied");
        let fallback = json!({"locked": false, "version": 3,
            "passedOver": ["version 4: unknown field `futureField`"]});
        let warn = config_check(Some(&applied), Some(&fallback));
        assert!(warn.level == Level::Warn, "{}", warn.detail);
        assert!(
            warn.detail.contains("version 4: unknown field"),
            "{}",
            warn.detail
        );
        let locked = json!({"locked": true, "problems": ["version 1: not YAML"]});
        let fail = config_check(None, Some(&locked));
        assert!(fail.level == Level::Fail, "{}", fail.detail);
        assert!(
            fail.detail
                .starts_with("locked: no stored configuration is usable (version 1: not YAML)"),
            "{}",
            fail.detail
        );
        let maintenance = config_check(None, None);
        assert!(maintenance.detail.contains("maintenance mode"));
    }

    #[test]
    fn a_failed_check_fails_the_node_and_warnings_do_not() {
        let ok = [
            check("api", Level::Ok, "x"),
            check("time", Level::Warn, "none"),
        ];
        let r = render(&ok).unwrap();
        assert!(r.text.contains("warn time"), "{}", r.text);
        let bad = [
            check("api", Level::Ok, "x"),
            check("boot", Level::Fail, "trial"),
        ];
        let e = render(&bad).unwrap_err().to_string();
        assert!(e.starts_with("unhealthy") && e.contains("FAIL boot"), "{e}");
    }
}
