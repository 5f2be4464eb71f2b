//! The remote operations of the CLI and how their replies are shown (text and JSON).

use anyhow::{Context as _, anyhow};
use basalt_proto::audit::v1 as audit;
use basalt_proto::machine::v1 as pb;
use basaltctl::connect::Clients;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::apply::Mode;
use crate::reply::{Rendered, slot, status_err, ts};
use crate::services_cmd::ServiceAction;

/// One remote operation, run on each node.
#[derive(Debug, Clone)]
pub enum Op {
    /// MachineService.Version.
    Version,
    /// MachineService.ApplyConfiguration.
    Apply {
        /// The configuration.
        data: Arc<Vec<u8>>,
        /// The mode.
        mode: Mode,
        /// Validate and diff only.
        dry_run: bool,
        /// TRY timeout in seconds.
        try_timeout: u64,
    },
    /// GetConfiguration, patched here, then ApplyConfiguration.
    Patch {
        /// The patches, in order.
        patches: Arc<Vec<basalt_config::Patch>>,
        /// The mode.
        mode: Mode,
        /// Validate and diff only.
        dry_run: bool,
        /// TRY timeout in seconds.
        try_timeout: u64,
    },
    /// AuditService.Query.
    Audit {
        /// RFC 3339 lower bound.
        since: Option<String>,
        /// RPC filter.
        rpc: Option<String>,
        /// Result filter.
        result: Option<String>,
        /// Entry limit.
        limit: u32,
    },
    /// MachineService.Reboot.
    Reboot {
        /// Force.
        force: bool,
    },
    /// MachineService.Rollback.
    Rollback {
        /// Reboot right away.
        reboot: bool,
    },
    /// MachineService.Shutdown.
    Shutdown {
        /// Force.
        force: bool,
    },
    /// MachineService.Stats.
    Stats,
    /// MachineService.Processes.
    Processes,
    /// MachineService.BootStatus.
    BootStatus,
    /// MachineService.Upgrade (bundle) or UpgradeFromUrl (url).
    Upgrade {
        /// The bundle file to push.
        bundle: Option<std::path::PathBuf>,
        /// The URL the node fetches.
        url: Option<String>,
        /// How to install.
        options: pb::UpgradeOptions,
        /// Push attempts.
        attempts: u32,
    },
    /// MachineService.ServiceList.
    Services,
    /// MachineService.ImageList.
    Images,
    /// MachineService.ImageRemove or ImagePrune.
    Image {
        /// What to do.
        action: crate::images_cmd::ImageAction,
    },
    /// `basaltctl health`.
    Health,
    /// MachineService.ServiceStart/Stop/Restart.
    Service {
        /// The service id.
        id: String,
        /// What to do.
        action: ServiceAction,
    },
    /// MachineService.Reset.
    Reset {
        /// Wipe STATE.
        wipe_state: bool,
        /// Wipe DATA.
        wipe_data: bool,
        /// Power off afterwards.
        shutdown: bool,
    },
}

fn upgrade_phase(p: i32) -> &'static str {
    match pb::UpgradePhase::try_from(p) {
        Ok(pb::UpgradePhase::Header) => "header",
        Ok(pb::UpgradePhase::Write) => "write",
        Ok(pb::UpgradePhase::Readback) => "read-back",
        Ok(pb::UpgradePhase::Activate) => "activate",
        Ok(pb::UpgradePhase::Done) => "done",
        _ => "-",
    }
}

fn upgrade_rendered(r: &pb::UpgradeResponse) -> Rendered {
    Rendered {
        text: format!(
            "upgraded: slot {} now holds {} {} ({} bytes written of {}), {} tries; {}",
            slot(r.slot),
            r.board,
            r.version,
            r.bytes_written,
            r.slot_size,
            r.tries,
            if r.rebooting {
                "rebooting into it"
            } else {
                "staged until the next reboot"
            }
        ),
        json: json!({"slot": slot(r.slot), "board": r.board, "version": r.version,
            "bytes_written": r.bytes_written, "slot_size": r.slot_size, "tries": r.tries,
            "rebooting": r.rebooting, "message": r.message}),
    }
}

impl Op {
    /// Runs the operation with `clients` and renders the reply.
    pub async fn run(self, mut c: Clients) -> anyhow::Result<Rendered> {
        match self {
            Op::Version => {
                let v = c
                    .machine
                    .version(pb::VersionRequest {})
                    .await
                    .map_err(|s| status_err("Version", s))?
                    .into_inner();
                let who = if v.maintenance {
                    "maintenance mode".to_string()
                } else {
                    format!("machine {}", v.machine_id)
                };
                Ok(Rendered {
                    text: format!("basalt {} ({}, {}) {who}", v.version, v.board, v.arch),
                    json: json!({"version": v.version, "git_commit": v.git_commit, "board": v.board,
                        "arch": v.arch, "maintenance": v.maintenance, "machine_id": v.machine_id}),
                })
            }
            Op::Apply {
                data,
                mode,
                dry_run,
                try_timeout,
            } => crate::apply::apply(&mut c, data.to_vec(), mode, dry_run, try_timeout).await,
            Op::Patch {
                patches,
                mode,
                dry_run,
                try_timeout,
            } => crate::apply::patch(&mut c, &patches, mode, dry_run, try_timeout).await,
            Op::Audit {
                since,
                rpc,
                result,
                limit,
            } => {
                let since = match since {
                    Some(s) => {
                        let t = time::OffsetDateTime::parse(
                            &s,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .with_context(|| format!("--since {s:?} is not an RFC 3339 time"))?;
                        Some(prost_types::Timestamp {
                            seconds: t.unix_timestamp(),
                            nanos: t.nanosecond() as i32,
                        })
                    }
                    None => None,
                };
                let r = c
                    .audit
                    .query(audit::QueryRequest {
                        since,
                        rpc: rpc.unwrap_or_default(),
                        result: result.unwrap_or_default(),
                        limit,
                    })
                    .await
                    .map_err(|s| status_err("Query", s))?
                    .into_inner();
                let mut text = String::new();
                let mut entries = Vec::new();
                for e in &r.entries {
                    let caller = e.caller.clone().unwrap_or_default();
                    let who = if caller.subject.is_empty() {
                        caller.address.clone()
                    } else {
                        caller.subject.clone()
                    };
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    write!(
                        text,
                        "{} {} {} {} {}ms {}",
                        ts(&e.time),
                        e.result,
                        e.rpc,
                        who,
                        e.duration_ms,
                        e.reason
                    )?;
                    if !e.summary.is_empty() {
                        write!(text, " [{}]", e.summary)?;
                    }
                    entries.push(json!({"time": ts(&e.time), "subject": caller.subject,
                        "fingerprint": caller.fingerprint, "address": caller.address,
                        "token_id": caller.token_id, "rpc": e.rpc, "allowed": e.allowed,
                        "reason": e.reason, "summary": e.summary, "result": e.result,
                        "code": e.code, "duration_ms": e.duration_ms}));
                }
                if text.is_empty() {
                    text = "no matching audit entries".into();
                }
                Ok(Rendered {
                    text,
                    json: json!({"entries": entries, "truncated": r.truncated}),
                })
            }
            Op::Reboot { force } => {
                let r = c
                    .machine
                    .reboot(pb::RebootRequest { force })
                    .await
                    .map_err(|s| status_err("Reboot", s))?
                    .into_inner();
                Ok(Rendered {
                    text: r.message.clone(),
                    json: json!({"message": r.message}),
                })
            }
            Op::Rollback { reboot } => {
                let r = c
                    .machine
                    .rollback(pb::RollbackRequest { reboot })
                    .await
                    .map_err(|s| status_err("Rollback", s))?
                    .into_inner();
                let next = slot(r.next_boot);
                let text = if r.rebooting {
                    format!("next boot: slot {next}; rebooting")
                } else {
                    format!("next boot: slot {next}")
                };
                Ok(Rendered {
                    text,
                    json: json!({"next_boot": next, "rebooting": r.rebooting}),
                })
            }
            Op::Shutdown { force } => {
                let r = c
                    .machine
                    .shutdown(pb::ShutdownRequest { force })
                    .await
                    .map_err(|s| status_err("Shutdown", s))?
                    .into_inner();
                Ok(Rendered {
                    text: r.message.clone(),
                    json: json!({"message": r.message}),
                })
            }
            Op::Stats => {
                let s = c
                    .machine
                    .stats(pb::StatsRequest {})
                    .await
                    .map_err(|s| status_err("Stats", s))?
                    .into_inner();
                Ok(render_stats(&s))
            }
            Op::Processes => {
                let r = c
                    .machine
                    .processes(pb::ProcessesRequest {})
                    .await
                    .map_err(|s| status_err("Processes", s))?
                    .into_inner();
                Ok(render_processes(&r.processes))
            }
            Op::BootStatus => {
                let b = c
                    .machine
                    .boot_status(pb::BootStatusRequest {})
                    .await
                    .map_err(|s| status_err("BootStatus", s))?
                    .into_inner();
                let order: Vec<_> = b.order.iter().map(|s| slot(*s)).collect();
                let mut text = format!(
                    "booted {} next {} order [{}] committed {} trial {} last-failed {} ({})",
                    slot(b.booted),
                    slot(b.next_boot),
                    order.join(" "),
                    b.committed,
                    slot(b.trial),
                    slot(b.last_failed),
                    b.backend
                );
                let mut slots = Vec::new();
                for s in &b.slots {
                    let tries = s.tries_left.map(|t| t.to_string()).unwrap_or("-".into());
                    write!(
                        text,
                        "\n  slot {}: bootable {} tries left {tries}",
                        slot(s.slot),
                        s.bootable
                    )?;
                    slots.push(json!({"slot": slot(s.slot), "bootable": s.bootable, "tries_left": s.tries_left}));
                }
                Ok(Rendered {
                    text,
                    json: json!({"booted": slot(b.booted), "next_boot": slot(b.next_boot),
                        "order": order, "committed": b.committed, "trial": slot(b.trial),
                        "last_failed": slot(b.last_failed), "backend": b.backend, "slots": slots}),
                })
            }
            Op::Upgrade {
                bundle,
                url,
                options,
                attempts,
            } => {
                use basaltctl::upgrade::{Retry, pull_bundle, push_bundle};
                let r = match (bundle, url) {
                    (Some(path), _) => {
                        let retry = Retry {
                            attempts,
                            ..Retry::default()
                        };
                        let mut report = |line: String| eprintln!("basaltctl: upgrade: {line}");
                        push_bundle(&mut c.machine, &path, options, &retry, &mut report).await?
                    }
                    (None, Some(url)) => {
                        let mut last = (String::new(), 0u64);
                        let mut report = |p: &pb::UpgradeProgress| {
                            let phase = upgrade_phase(p.phase);
                            // One line per phase change, per 16 MiB written, or per message.
                            let step = p.written_bytes >> 24;
                            if phase != last.0 || step != last.1 || !p.message.is_empty() {
                                eprintln!(
                                    "basaltctl: upgrade: {phase} {}/{} MiB {}",
                                    p.written_bytes >> 20,
                                    p.total_bytes >> 20,
                                    p.message
                                );
                                last = (phase.to_string(), step);
                            }
                        };
                        pull_bundle(&mut c.machine, &url, options, &mut report).await?
                    }
                    (None, None) => {
                        return Err(anyhow!("upgrade: pass --bundle FILE or --url URL"));
                    }
                };
                Ok(upgrade_rendered(&r))
            }
            Op::Services => crate::services_cmd::list(&mut c).await,
            Op::Images => crate::images_cmd::list(&mut c).await,
            Op::Image { action } => crate::images_cmd::act(&mut c, action).await,
            Op::Health => crate::health::health(&mut c).await,
            Op::Service { id, action } => crate::services_cmd::act(&mut c, id, action).await,
            Op::Reset {
                wipe_state,
                wipe_data,
                shutdown,
            } => {
                let r = c
                    .machine
                    .reset(pb::ResetRequest {
                        wipe_state,
                        wipe_data,
                        shutdown,
                    })
                    .await
                    .map_err(|s| status_err("Reset", s))?
                    .into_inner();
                Ok(Rendered {
                    text: r.message.clone(),
                    json: json!({"message": r.message}),
                })
            }
        }
    }
}

const MIB: u64 = 1024 * 1024;

fn render_processes(list: &[pb::ProcessInfo]) -> Rendered {
    let mut text = format!(
        "{:>7} {:>7} {:>10} {:>6} {:<8} COMMAND",
        "PID", "PPID", "RSS KiB", "CPU%", "STATE"
    );
    let mut rows = Vec::new();
    for p in list {
        let command = if p.command.is_empty() {
            format!("[{}]", p.name)
        } else {
            p.command.join(" ")
        };
        text.push_str(&format!(
            "\n{:>7} {:>7} {:>10} {:>6.1} {:<8} {command}",
            p.pid,
            p.parent_pid,
            p.resident_bytes / 1024,
            p.cpu_percent,
            p.state
        ));
        rows.push(
            json!({"pid": p.pid, "parent_pid": p.parent_pid, "name": p.name,
            "command": p.command, "state": p.state, "cpu_percent": p.cpu_percent,
            "resident_bytes": p.resident_bytes, "virtual_bytes": p.virtual_bytes}),
        );
    }
    Rendered {
        text,
        json: json!({"processes": rows}),
    }
}

fn render_stats(s: &pb::StatsResponse) -> Rendered {
    let cpu = s.cpu.clone().unwrap_or_default();
    let mem = s.memory.unwrap_or_default();
    let load = s.load.unwrap_or_default();
    let mut text = format!(
        "cpu: {} cores, {:.1}% used\nmemory: {} / {} MiB used, {} MiB available\nload: {:.2} {:.2} {:.2}\nuptime: {} s",
        cpu.count,
        cpu.usage_percent,
        mem.used_bytes / MIB,
        mem.total_bytes / MIB,
        mem.available_bytes / MIB,
        load.one,
        load.five,
        load.fifteen,
        s.uptime_seconds
    );
    for d in &s.disks {
        let _ = write!(
            text,
            "\ndisk {}: {} / {} MiB free ({})",
            d.mount_point,
            d.available_bytes / MIB,
            d.total_bytes / MIB,
            d.filesystem
        );
    }
    for n in &s.network {
        let _ = write!(
            text,
            "\nnet {}: rx {} B, tx {} B",
            n.name, n.rx_bytes, n.tx_bytes
        );
    }
    let disks: Vec<_> = s
        .disks
        .iter()
        .map(|d| json!({"mount_point": d.mount_point, "device": d.device, "filesystem": d.filesystem,
            "total_bytes": d.total_bytes, "available_bytes": d.available_bytes, "read_only": d.read_only}))
        .collect();
    let network: Vec<_> = s
        .network
        .iter()
        .map(|n| {
            json!({"name": n.name, "rx_bytes": n.rx_bytes, "tx_bytes": n.tx_bytes,
            "rx_packets": n.rx_packets, "tx_packets": n.tx_packets, "rx_errors": n.rx_errors,
            "tx_errors": n.tx_errors, "mac_address": n.mac_address})
        })
        .collect();
    Rendered {
        text,
        json: json!({
            "cpu": {"count": cpu.count, "usage_percent": cpu.usage_percent, "per_cpu_percent": cpu.per_cpu_percent},
            "memory": {"total_bytes": mem.total_bytes, "used_bytes": mem.used_bytes,
                "available_bytes": mem.available_bytes, "swap_total_bytes": mem.swap_total_bytes,
                "swap_used_bytes": mem.swap_used_bytes},
            "load": {"one": load.one, "five": load.five, "fifteen": load.fifteen},
            "uptime_seconds": s.uptime_seconds,
            "disks": disks,
            "network": network,
        }),
    }
}
