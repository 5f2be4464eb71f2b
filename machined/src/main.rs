//! `machined`: the Basalt machine daemon.
//!
//! On a node, machined is PID 1: it does the early boot (mounts, modules, dm-verity root,
//! STATE and DATA), reconciles the machine configuration through controllers, supervises
//! services, serves the authenticated gRPC API and runs A/B upgrades. There is no shell on
//! a node; everything an operator does goes through machined's API.
//!
//! Today only dev mode runs: `machined --dev --state-dir DIR --listen 127.0.0.1:PORT`
//! serves the same API with the same security logic, unprivileged; host actions are
//! recorded ([`host::DevHost`]) and the boot slots live in memory. Without a stored
//! configuration it starts in maintenance mode and prints the SHA-256 fingerprint of its
//! self-signed certificate on stderr (`machined: maintenance mode: … fingerprint …`);
//! `--listen` may use port 0, the bound address is printed as
//! `machined: API listening on ADDR`.

use anyhow::{Context, bail};
use basalt_bootloader::Slot;
use basalt_bootloader::uboot_backend::UbootBootloader;
use clap::Parser;
use machined::{api, audit, console, host, node, settings, state};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Default API port.
const DEFAULT_PORT: u16 = 50000;

/// The Basalt machine daemon.
#[derive(Debug, Parser)]
#[command(name = "machined", version)]
struct Args {
    /// Run unprivileged for development: host actions are recorded, not performed, and the
    /// boot slots live in memory.
    #[arg(long)]
    dev: bool,
    /// State directory (on a node: the STATE partition).
    #[arg(long, default_value = "/system/state")]
    state_dir: PathBuf,
    /// Address the API listens on (port 0 picks a free port).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)))]
    listen: SocketAddr,
    /// Rotate the audit log at this size, in bytes.
    #[arg(long, default_value_t = audit::DEFAULT_MAX_BYTES)]
    audit_max_bytes: u64,
    /// Rotated audit log files to keep.
    #[arg(long, default_value_t = audit::DEFAULT_KEEP)]
    audit_keep: usize,
}

fn main() -> ExitCode {
    if machined::early_boot::is_node_init() {
        // PID 1 on a node: early boot (a failure reboots), then the daemon with the node's
        // arguments. PID 1 never exits: daemon_stopped reports and keeps reaping children.
        let boot = machined::early_boot::boot_or_reboot();
        let outcome = Args::try_parse_from(boot.daemon_args())
            .map_err(anyhow::Error::from)
            .and_then(|args| {
                tokio::runtime::Builder::new_multi_thread()
                    .enable_all()
                    .build()?
                    .block_on(run(args))
            })
            .map_err(|e| error_chain(&e));
        machined::early_boot::daemon_stopped(outcome);
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("machined: error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("machined: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, joined with ": ", leaving out a cause whose text an earlier
/// message already contains.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    if !args.dev {
        bail!("node mode (PID 1) is not implemented yet; run with --dev --state-dir DIR");
    }
    let state_dir = args.state_dir.clone();
    state::create_private_dir(&state_dir)?;
    let audit = Arc::new(
        audit::AuditLog::open(
            &state_dir.join("audit"),
            args.audit_max_bytes,
            args.audit_keep,
        )
        .context("opening the audit log")?,
    );
    let config = state::ConfigStore::open(&state_dir)?;
    if let Some(version) = config.promote_staged()? {
        console(
            &state_dir,
            &format!("staged configuration promoted to version {version}"),
        );
    }
    let api = match config.current()? {
        Some(stored) => {
            let text = String::from_utf8_lossy(&stored.data);
            match settings::ApiSettings::from_yaml(&text) {
                Ok((settings, _)) => Some(api::ApiControl::secure(&settings)?),
                Err(e) => {
                    console(
                        &state_dir,
                        &format!(
                            "stored configuration version {} is unusable ({e}); starting in maintenance mode",
                            stored.version
                        ),
                    );
                    None
                }
            }
        }
        None => None,
    };
    let api = match api {
        Some(api) => api,
        None => {
            let names = vec![args.listen.ip().to_string(), "localhost".to_string()];
            let cert = api::tls::MaintenanceCert::generate(names)?;
            console(
                &state_dir,
                &format!(
                    "maintenance mode: no configuration; server certificate SHA-256 fingerprint: {}",
                    cert.fingerprint
                ),
            );
            api::ApiControl::maintenance(&cert)?
        }
    };
    let node = Arc::new(node::Node::new(node::NodeParts {
        dev: true,
        state_dir: state_dir.clone(),
        config,
        host: Arc::new(host::DevHost::new(&state_dir)),
        boot: (
            Box::new(UbootBootloader::in_memory(Some(Slot::A))),
            "memory (dev mode)".to_string(),
        ),
        audit,
        api: Arc::new(api),
    }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the API to {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mode = if node.api.is_maintenance() {
        "maintenance mode, no client certificate"
    } else {
        "mutual TLS"
    };
    console(&state_dir, &format!("API listening on {addr} ({mode})"));
    tokio::select! {
        r = api::serve(listener, node) => r.context("API server")?,
        _ = tokio::signal::ctrl_c() => console(&state_dir, "interrupted, stopping"),
    }
    Ok(())
}
