//! The streaming commands of the CLI: `events`, `logs` and `dmesg`, each with `-f` to keep
//! following.
//!
//! Unlike the other commands, whose replies are collected per node and printed at the end,
//! a stream is printed line by line as it arrives: bare for one node, prefixed with the node
//! for several (`-n a,b`), or as JSON lines (`-o json`, one object per entry with its node).
//! A node that fails prints its error and makes the exit code non-zero; the others go on.

use anyhow::anyhow;
use basalt_proto::machine::v1 as pb;
use basaltctl::connect::Clients;
use serde_json::{Value, json};
use std::time::Duration;

/// One streaming operation, run on each node.
#[derive(Debug, Clone)]
pub enum StreamOp {
    /// MachineService.Events.
    Events {
        /// Replay at most this many recent events (0: all kept).
        tail: u32,
        /// Keep following.
        follow: bool,
    },
    /// MachineService.Logs.
    Logs {
        /// The service id.
        service: String,
        /// Start with at most this many lines (0: all kept).
        tail: u32,
        /// Keep following.
        follow: bool,
    },
    /// ResourceService.Get/List, or Watch.
    Get {
        /// Namespace and type.
        kind: (String, String),
        /// One resource only.
        id: Option<String>,
        /// Keep watching.
        watch: bool,
    },
    /// MachineService.Dmesg.
    Dmesg {
        /// Start with at most this many messages (0: the whole ring buffer).
        tail: u32,
        /// Keep following.
        follow: bool,
    },
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn event_kind(k: i32) -> &'static str {
    match pb::EventKind::try_from(k) {
        Ok(pb::EventKind::Config) => "config",
        Ok(pb::EventKind::Service) => "service",
        Ok(pb::EventKind::Boot) => "boot",
        Ok(pb::EventKind::Power) => "power",
        Ok(pb::EventKind::Api) => "api",
        _ => "unknown",
    }
}

fn log_stream(s: i32) -> &'static str {
    match pb::LogStream::try_from(s) {
        Ok(pb::LogStream::Stdout) => "stdout",
        Ok(pb::LogStream::Stderr) => "stderr",
        _ => "-",
    }
}

/// One rendered entry: a text line and its JSON form.
pub struct Line {
    /// Human-readable.
    pub text: String,
    /// For `-o json`.
    pub json: Value,
}

fn event_line(e: &pb::Event) -> Line {
    Line {
        text: format!(
            "{} {:>5} {:<8} {:<12} {}",
            ts(&e.time),
            e.id,
            event_kind(e.kind),
            e.subject,
            e.message
        ),
        json: json!({"id": e.id, "time": ts(&e.time), "kind": event_kind(e.kind),
            "subject": e.subject, "message": e.message}),
    }
}

fn log_line(l: &pb::LogEntry) -> Line {
    Line {
        text: format!("{} {} {}", ts(&l.time), log_stream(l.stream), l.message),
        json: json!({"time": ts(&l.time), "service": l.service, "stream": log_stream(l.stream),
            "message": l.message}),
    }
}

fn kmsg_line(k: &pb::KernelLogEntry) -> Line {
    let since = k
        .since_boot
        .as_ref()
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
        .unwrap_or_default();
    Line {
        text: format!(
            "[{:>5}.{:06}] <{}> {}",
            since.as_secs(),
            since.subsec_micros(),
            k.priority,
            k.message
        ),
        json: json!({"sequence": k.sequence, "since_boot_us": since.as_micros() as u64,
            "priority": k.priority, "facility": k.facility, "message": k.message}),
    }
}

fn rpc_err(rpc: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{rpc}: {:?}: {}", s.code(), s.message())
}

/// Drains a server stream into `emit`.
async fn drain<M>(
    rpc: &str,
    mut stream: tonic::Streaming<M>,
    render: fn(&M) -> Line,
    emit: &mut (dyn FnMut(Line) + Send),
) -> anyhow::Result<()> {
    while let Some(item) = stream.message().await.map_err(|s| rpc_err(rpc, s))? {
        emit(render(&item));
    }
    Ok(())
}

impl StreamOp {
    /// Whether the stream stays open until interrupted.
    pub fn follows(&self) -> bool {
        match self {
            StreamOp::Events { follow, .. }
            | StreamOp::Logs { follow, .. }
            | StreamOp::Dmesg { follow, .. } => *follow,
            StreamOp::Get { watch, .. } => *watch,
        }
    }

    /// Opens the stream on one node and passes every entry to `emit`.
    pub async fn run(
        self,
        mut c: Clients,
        emit: &mut (dyn FnMut(Line) + Send),
    ) -> anyhow::Result<()> {
        match self {
            StreamOp::Events { tail, follow } => {
                let s = c
                    .machine
                    .events(pb::EventsRequest {
                        tail,
                        after_id: 0,
                        follow,
                    })
                    .await
                    .map_err(|s| rpc_err("Events", s))?
                    .into_inner();
                drain("Events", s, event_line, emit).await
            }
            StreamOp::Logs {
                service,
                tail,
                follow,
            } => {
                let s = c
                    .machine
                    .logs(pb::LogsRequest {
                        service,
                        follow,
                        tail_lines: tail,
                    })
                    .await
                    .map_err(|s| rpc_err("Logs", s))?
                    .into_inner();
                drain("Logs", s, log_line, emit).await
            }
            StreamOp::Get { kind, id, watch } => {
                crate::resources_cmd::get(&mut c, kind, id, watch, emit).await
            }
            StreamOp::Dmesg { tail, follow } => {
                let s = c
                    .machine
                    .dmesg(pb::DmesgRequest { follow, tail })
                    .await
                    .map_err(|s| rpc_err("Dmesg", s))?
                    .into_inner();
                drain("Dmesg", s, kmsg_line, emit).await
            }
        }
    }
}

/// How stream entries are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text lines (prefixed with the node when several nodes are shown).
    Text,
    /// One JSON object per line.
    Json,
    /// One YAML document per entry.
    Yaml,
}

/// Prints one entry of `node`.
pub fn print(node: &str, several: bool, format: Format, line: Line) {
    let doc = || json!({"node": node, "entry": line.json});
    match format {
        Format::Json => println!("{}", doc()),
        Format::Yaml => match yaml_serde::to_string(&doc()) {
            Ok(text) => print!("---\n{text}"),
            Err(e) => eprintln!("basaltctl: {node}: entry not printable as YAML: {e}"),
        },
        Format::Text if several => println!("{node}\t{}", line.text),
        Format::Text => println!("{}", line.text),
    }
}
