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
use machined::{api, audit, console, host, node, settings, state, upgrade};
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
    /// Dev mode: file standing in for slot A's partition (SYSTEM-A); created with
    /// --dev-slot-size bytes when missing. Upgrades are served when both slots are given.
    #[arg(long, requires = "dev_slot_b")]
    dev_slot_a: Option<PathBuf>,
    /// Dev mode: file standing in for slot B's partition (SYSTEM-B).
    #[arg(long, requires = "dev_slot_a")]
    dev_slot_b: Option<PathBuf>,
    /// Dev mode: size of slot files created by --dev-slot-a/--dev-slot-b, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    dev_slot_size: u64,
    /// Dev mode: the board name upgrades are checked against.
    #[arg(long, default_value = "dev")]
    dev_board: String,
    /// Dev mode: the version of the "booted" slot (A) upgrades are compared with.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    dev_version: String,
}

fn main() -> ExitCode {
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
    if let (Some(a), Some(b)) = (&args.dev_slot_a, &args.dev_slot_b) {
        for path in [a, b] {
            upgrade::device::ensure_slot_file(path, args.dev_slot_size)
                .with_context(|| format!("creating dev slot file {}", path.display()))?;
        }
        let target = upgrade::UpgradeTarget {
            board: args.dev_board.clone(),
            booted_version: args.dev_version.clone(),
            booted_slot: Slot::A,
            slot_devices: [a.clone(), b.clone()],
        };
        console(
            &state_dir,
            &format!(
                "upgrades enabled: board {}, booted version {} in slot A, slots {} and {}",
                target.board,
                target.booted_version,
                a.display(),
                b.display()
            ),
        );
        let _ = node
            .upgrade
            .set(Arc::new(upgrade::UpgradeEngine::new(target, &state_dir)));
    }
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
