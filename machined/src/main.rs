//! `machined`: the Basalt machine daemon.
//!
//! On a node, machined is PID 1: it does the early boot (mounts, modules, dm-verity root,
//! STATE and DATA), reconciles the machine configuration through controllers, supervises
//! services, serves the authenticated gRPC API and runs A/B upgrades. There is no shell on
//! a node; everything an operator does goes through machined's API.
//!
//! On a node (PID 1, see [`machined::early_boot`]) the daemon then brings up the network
//! ([`machined::network`]: DHCP or the stored NetworkConfig), opens the board's boot backend
//! on BOOT ([`machined::node_boot`]), serves the API on port 50000 and commits a trial boot
//! once healthy. Host actions are real ([`machined::linux_host`]).
//!
//! Dev mode, `machined --dev --state-dir DIR --listen 127.0.0.1:PORT`, serves the same API
//! with the same security logic, unprivileged; host actions are recorded
//! ([`host::DevHost`]) and the boot slots live in memory.
//!
//! Without a stored configuration the API starts in maintenance mode and prints the SHA-256
//! fingerprint of its self-signed certificate (`machined: maintenance mode: … fingerprint
//! …`); `--listen` may use port 0, the bound address is printed as `machined: API listening
//! on ADDR`.

use anyhow::{Context, bail};
use basalt_bootloader::Bootloader;
use basalt_bootloader::Slot;
use basalt_bootloader::uboot_backend::UbootBootloader;
use clap::Parser;
use machined::early_boot::EarlyBoot;
use machined::events::EventKind;
use machined::start_config::{self, StartConfig};
use machined::{
    api, audit, config_apply, console, host, linux_host, network, node, node_boot, reconcile,
    state, upgrade,
};
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
    /// Seconds between two drift-correction rounds (hostname, sysctls, modules); 0 turns
    /// drift correction off.
    #[arg(long, default_value_t = reconcile::DEFAULT_INTERVAL.as_secs())]
    reconcile_interval: u64,
    /// Seconds between two polls of the configured time servers once synchronised (0: no
    /// time sync).
    #[arg(long, default_value_t = machined::time_sync::DEFAULT_INTERVAL.as_secs())]
    time_sync_interval: u64,
    /// Seconds between two looks of the image collector at DATA's fill level (0: unused
    /// images are removed only on request).
    #[arg(long, default_value_t = 60)]
    image_gc_interval: u64,
    /// Seconds a newly stored image is left alone by the image collector.
    #[arg(long, default_value_t = machined::node_images::COLLECTOR_GRACE.as_secs())]
    image_gc_grace: u64,
    /// Dev mode: the version of the "booted" slot (A) upgrades are compared with.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    dev_version: String,
    /// Services: delay before the first restart of a service that exited, in
    /// milliseconds; doubled for each consecutive failure (up to 60 s).
    #[arg(long, default_value_t = 1000)]
    service_backoff_ms: u64,
    /// Services: consecutive restarts after which a service that keeps exiting is marked
    /// failed.
    #[arg(long, default_value_t = 5)]
    service_restart_limit: u32,
    /// Services: time between SIGTERM and SIGKILL when stopping, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    service_stop_timeout_ms: u64,
    /// Dev mode: run container services with the containerd (and
    /// containerd-shim-runc-v2) in this directory, as a system service with its root,
    /// state and socket under the state directory (runc from PATH).
    #[arg(long)]
    containerd_bin: Option<PathBuf>,
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
                    .block_on(run(args, Some(boot)))
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
    match runtime.block_on(run(args, None)) {
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

/// Where containerd lives: on a node, from the system image when it has the container
/// extension; in dev mode, only with `--containerd-bin`.
fn container_paths(
    args: &Args,
    boot: Option<&EarlyBoot>,
) -> Option<machined::containers::RuntimePaths> {
    match (boot, &args.containerd_bin) {
        (Some(early), _) => machined::containers::RuntimePaths::on_node(&early.data_dir),
        (None, Some(bin)) => Some(machined::containers::RuntimePaths::dev(
            &args.state_dir,
            bin,
        )),
        (None, None) => None,
    }
}

async fn run(args: Args, boot: Option<EarlyBoot>) -> anyhow::Result<()> {
    if !args.dev && boot.is_none() {
        bail!("machined runs as PID 1 on a node; elsewhere run it with --dev --state-dir DIR");
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
    if let Some((version, _)) = config.revert_trial()? {
        console(
            &state_dir,
            &format!(
                "a configuration trial was not confirmed before this start: previous configuration restored as version {version}"
            ),
        );
    }
    let mut network_config = None;
    let mut hostname = None;
    let mut machine_config = None;
    let mut applied_version = 0;
    let start = start_config::choose(&config)?;
    let config_applied = start.current_applied();
    let lock_status = start.lock_status();
    let mut serve_api = true;
    let api = match start {
        StartConfig::Unconfigured => None,
        StartConfig::Usable {
            version,
            config,
            settings,
            skipped,
        } => {
            for problem in &skipped {
                console(
                    &state_dir,
                    &format!("stored configuration {problem}: passed over"),
                );
            }
            if !skipped.is_empty() {
                console(
                    &state_dir,
                    &format!("started with configuration version {version}, the newest usable one"),
                );
            }
            applied_version = version;
            network_config = config.network.clone();
            hostname = settings.hostname.clone();
            machine_config = Some(*config);
            Some(api::ApiControl::secure(&settings)?)
        }
        StartConfig::Locked { settings, problems } => {
            for problem in &problems {
                console(&state_dir, &format!("stored configuration {problem}"));
            }
            match settings {
                Some(settings) => {
                    console(
                        &state_dir,
                        "no stored configuration is usable: locked (mutual TLS with the stored \
                         CA and certificate, nothing else applied; apply a valid configuration)",
                    );
                    Some(api::ApiControl::secure(&settings)?)
                }
                None => {
                    console(
                        &state_dir,
                        "no stored configuration is usable, not even its API section: the API \
                         is not served (no maintenance mode); flash a configuration with \
                         basalt-flash --config",
                    );
                    serve_api = false;
                    None
                }
            }
        }
    };
    let api = match api {
        Some(api) => api,
        None => {
            let names = vec![args.listen.ip().to_string(), "localhost".to_string()];
            let cert = api::tls::MaintenanceCert::generate(names)?;
            if serve_api {
                console(
                    &state_dir,
                    &format!(
                        "maintenance mode: no configuration; server certificate SHA-256 fingerprint: {}",
                        cert.fingerprint
                    ),
                );
            }
            // When the API is not served this control is never listened with.
            api::ApiControl::maintenance(&cert)?
        }
    };
    let (host, boot_backend): (Arc<dyn host::HostActions>, _) = match &boot {
        Some(early) => {
            let host = linux_host::LinuxHost::new(
                &early.system_dir,
                vec![
                    early.state_dir.clone(),
                    early.data_dir.clone(),
                    early.boot_mount.clone(),
                ],
            )
            .with_wipe_targets(&early.state_dir, &early.data_dir);
            (Arc::new(host), node_boot_backend(&state_dir, early))
        }
        None => (
            Arc::new(host::DevHost::new(&state_dir)) as Arc<dyn host::HostActions>,
            (
                Box::new(UbootBootloader::in_memory(Some(Slot::A))) as Box<dyn Bootloader + Send>,
                "memory (dev mode)".to_string(),
            ),
        ),
    };
    let node = Arc::new(node::Node::new(node::NodeParts {
        dev: boot.is_none(),
        state_dir: state_dir.clone(),
        config,
        host,
        boot: boot_backend,
        audit,
        api: Arc::new(api),
        containers: container_paths(&args, boot.as_ref()),
    }));
    if boot.is_some() && node.containers.is_some() {
        for module in machined::containers::system::KERNEL_MODULES {
            if let Err(e) = node.host.load_module(module, &[]) {
                console(&state_dir, &format!("containers: module {module}: {e}"));
            }
        }
    }
    let mut services = Vec::new();
    if let Some(config) = &machine_config {
        match node.service_specs(config) {
            Ok(s) => services = s,
            Err(e) => console(&state_dir, &format!("services not started: {e}")),
        }
    }
    if let Some(config) = machine_config {
        for warning in config_apply::apply_machine(node.host.as_ref(), &config) {
            console(&state_dir, &warning);
        }
        node.applied.publish(applied_version, config);
    }
    if let Some(status) = lock_status {
        node.resources.set_type(
            "config",
            start_config::CONFIG_LOCK_KIND,
            "machined",
            [("status".to_string(), status)].into(),
        );
    }
    let status = Arc::new(machined::resources::StatusController {
        store: node.resources.clone(),
        host: node.host.clone(),
        services: node.services.clone(),
        config: node.applied.watch(),
    });
    tokio::spawn(status.run(std::time::Duration::from_secs(1)));
    if args.reconcile_interval > 0 {
        let reconciler = Arc::new(reconcile::Reconciler::new(
            node.host.clone(),
            node.applied.watch(),
            &state_dir,
            Some(node.events.clone() as Arc<dyn reconcile::DriftSink>),
        ));
        tokio::spawn(reconciler.run(std::time::Duration::from_secs(args.reconcile_interval)));
    }
    let network_interval = std::time::Duration::from_secs(args.reconcile_interval.max(1));
    start_network(
        &state_dir,
        boot.is_some()
            .then(|| (network_config.clone(), hostname.clone())),
        &node,
        (args.reconcile_interval > 0).then_some(network_interval),
    );
    if args.time_sync_interval > 0 {
        let time_sync = Arc::new(machined::time_sync::TimeSync {
            host: node.host.clone(),
            config: node.applied.watch(),
            resources: node.resources.clone(),
            events: node.events.clone(),
            state_dir: state_dir.clone(),
            floor: node.time_floor.clone(),
        });
        tokio::spawn(time_sync.run(std::time::Duration::from_secs(args.time_sync_interval)));
    }
    if args.image_gc_interval > 0 {
        let every = std::time::Duration::from_secs(args.image_gc_interval);
        let grace = std::time::Duration::from_secs(args.image_gc_grace);
        tokio::spawn(node.clone().collect_unused_images(every, grace));
    }
    node.services.set_tuning(machined::services::Tuning {
        backoff_base: std::time::Duration::from_millis(args.service_backoff_ms),
        restart_limit: args.service_restart_limit,
        stop_timeout: std::time::Duration::from_millis(args.service_stop_timeout_ms),
        ..machined::services::Tuning::default()
    });
    if boot.is_some() {
        tokio::spawn(machined::services::reaper::reap_orphans());
    }
    if !services.is_empty() {
        let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
        match node.services.load(services) {
            Ok(()) => console(
                &state_dir,
                &format!(
                    "services: starting {}",
                    node.services.start_order().join(", ")
                ),
            ),
            Err(e) => console(
                &state_dir,
                &format!("services {} not started: {e}", names.join(", ")),
            ),
        }
    }
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
    if let Some(early) = &boot {
        match node_upgrade_target(early) {
            Ok(target) => {
                console(
                    &state_dir,
                    &format!(
                        "upgrades enabled: board {}, version {} in slot {}, slots on {} and {}",
                        target.board,
                        target.booted_version,
                        early.slot,
                        target.slot_devices[0].display(),
                        target.slot_devices[1].display()
                    ),
                );
                let _ = node
                    .upgrade
                    .set(Arc::new(upgrade::UpgradeEngine::new(target, &state_dir)));
            }
            Err(e) => console(&state_dir, &format!("upgrades disabled: {e}")),
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the API to {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mode = if !serve_api {
        "not served: locked"
    } else if node.api.is_maintenance() {
        "maintenance mode, no client certificate"
    } else if !config_applied {
        "mutual TLS, configuration locked"
    } else {
        "mutual TLS"
    };
    if serve_api {
        console(&state_dir, &format!("API listening on {addr} ({mode})"));
    } else {
        console(&state_dir, &format!("API not served ({mode})"));
    }
    let started = match &boot {
        Some(early) => format!("machined started on slot {}", early.slot),
        None => "machined started in dev mode".to_string(),
    };
    node.events.publish(EventKind::Boot, "machined", started);
    node.events.publish(
        EventKind::Api,
        "api",
        format!("listening on {addr} ({mode})"),
    );
    if let Some(early) = &boot {
        tokio::spawn(commit_when_healthy(
            node.clone(),
            early.slot,
            node_boot::HealthCheck {
                api: addr,
                // early boot read every block of the root through dm-verity
                root_verified: true,
                config_applied,
            },
        ));
    }
    let services = node.services.clone();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = serve_or_wait(serve_api, listener, node) => r.context("API server")?,
        _ = tokio::signal::ctrl_c() => console(&state_dir, "interrupted, stopping"),
        _ = terminate.recv() => console(&state_dir, "terminated, stopping"),
    }
    let stuck = services.shutdown().await;
    if !stuck.is_empty() {
        console(
            &state_dir,
            &format!("services did not stop: {}", stuck.join(", ")),
        );
    }
    Ok(())
}

/// Brings the network up in the background (DHCP can take seconds; the API listens on
/// every address meanwhile).
/// Networking: on a node (`node_setup` given) the configuration is applied, then the
/// network controller keeps it every `interval`; in dev mode the controller only observes
/// and publishes the workstation's network. `interval` None: no controller rounds.
fn start_network(
    state_dir: &std::path::Path,
    node_setup: Option<(Option<basalt_config::schema::NetworkConfig>, Option<String>)>,
    node: &node::Node,
    interval: Option<std::time::Duration>,
) {
    let dir = state_dir.to_path_buf();
    let resources = node.resources.clone();
    let events = node.events.clone();
    let config = node.applied.watch();
    tokio::spawn(async move {
        let log_dir = dir.clone();
        let log = move |m: &str| console(&log_dir, m);
        let net = match network::Network::connect() {
            Ok(net) => net,
            Err(e) => return console(&dir, &format!("network: {e}")),
        };
        let resolv = std::path::PathBuf::from("/etc/resolv.conf");
        let correct = node_setup.is_some();
        if let Some((config, hostname)) = node_setup {
            match net.apply(config.as_ref(), hostname, &resolv, log).await {
                Ok(links) => {
                    let up: Vec<String> = links
                        .iter()
                        .flat_map(|c| {
                            c.addresses
                                .iter()
                                .map(move |(a, p)| format!("{} {a}/{p}", c.link))
                        })
                        .collect();
                    console(&dir, &format!("network up: {}", up.join(", ")));
                }
                Err(e) => console(&dir, &format!("network: {e}")),
            }
        }
        let Some(interval) = interval else { return };
        let controller = Arc::new(network::controller::NetworkController {
            network: net,
            config,
            resources,
            events,
            state_dir: dir,
            resolv_path: resolv,
            correct,
            owned: Default::default(),
            reported: Default::default(),
        });
        controller.run(interval).await;
    });
}

/// Serves the API, or (`serve` false: a locked node with no usable API settings) waits
/// until machined is stopped.
async fn serve_or_wait(
    serve: bool,
    listener: tokio::net::TcpListener,
    node: Arc<node::Node>,
) -> anyhow::Result<()> {
    if serve {
        return Ok(api::serve(listener, node).await?);
    }
    drop(listener);
    std::future::pending().await
}

/// The board's boot backend on BOOT; if it cannot be opened the node still serves its API
/// (for diagnosis) with an in-memory backend, and says so.
fn node_boot_backend(
    state_dir: &std::path::Path,
    early: &EarlyBoot,
) -> (Box<dyn Bootloader + Send>, String) {
    let opened = node_boot::slot_board(&early.slot_mount)
        .and_then(|board| node_boot::open_bootloader(&board, &early.boot_mount, early.slot));
    match opened {
        Ok((backend, name)) => {
            console(state_dir, &format!("boot backend: {name}"));
            (backend, name)
        }
        Err(e) => {
            console(state_dir, &format!("{e}; A/B state is not available"));
            (
                Box::new(UbootBootloader::in_memory(Some(early.slot))),
                format!("unavailable ({e})"),
            )
        }
    }
}

/// Commits the booted slot once the health checks pass; reboots when a trial boot does not
/// become healthy within [`node_boot::TRIAL_DEADLINE`] (see [`machined::node_boot`]).
///
/// `mark_good` runs after every healthy boot, not only after a trial: the boot script
/// decrements the booted slot's counter on every boot, so a committed slot must get it back
/// (otherwise a few ordinary reboots use it up and the bootloader silently falls back to
/// the other, older slot), and a boot that the script fell back to after a failed trial
/// (the trial is the *other* slot) records that failure (`last_failed`) and takes the
/// failed slot out of the order. If an upgrade activated a new trial meanwhile, the commit
/// is skipped: that trial must not be mistaken for a failed one.
async fn commit_when_healthy(node: Arc<node::Node>, booted: Slot, check: node_boot::HealthCheck) {
    let dir = node.state_dir.clone();
    let status = node.boot.lock().map(|b| b.status()).map_err(|_| ());
    let initial = match status {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            console(&dir, &format!("boot status: {e}; not committing"));
            return;
        }
        Err(_) => {
            console(
                &dir,
                "boot status: the boot backend is unavailable (a task panicked holding it); not committing",
            );
            return;
        }
    };
    let on_trial = !initial.committed;
    match initial.trial {
        Some(trial) if trial == booted => console(
            &dir,
            &format!("slot {booted} is on trial: running health checks"),
        ),
        Some(failed) => console(
            &dir,
            &format!(
                "slot {booted} booted while slot {failed} was on trial: the trial failed; running health checks"
            ),
        ),
        None => console(
            &dir,
            &format!("slot {booted} is committed: running health checks"),
        ),
    }
    let started = std::time::Instant::now();
    let mut last = Vec::new();
    loop {
        let facts = node_boot::HealthFacts {
            failing_checks: check.failing().await,
            critical: node.critical_services(),
            on_trial,
            elapsed: started.elapsed(),
        };
        match node_boot::decide(&facts) {
            node_boot::Verdict::Commit => {
                commit(&node, booted, &initial, on_trial);
                return;
            }
            node_boot::Verdict::Wait(failing) => {
                if failing != last {
                    console(&dir, &format!("health: waiting for {}", failing.join("; ")));
                    last = failing;
                }
            }
            node_boot::Verdict::Reboot(failing) => {
                console(
                    &dir,
                    &format!(
                        "slot {booted} not healthy after {} s ({}): rebooting so the bootloader counts the attempt",
                        node_boot::TRIAL_DEADLINE.as_secs(),
                        failing.join("; ")
                    ),
                );
                if let Err(e) = node.host.reboot() {
                    console(&dir, &format!("reboot after the failed trial: {e}"));
                }
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Marks the booted slot good (the health checks passed), unless an upgrade activated a new
/// trial meanwhile; says what it did on the console and as an event.
fn commit(
    node: &node::Node,
    booted: Slot,
    initial: &basalt_bootloader::BootStatus,
    on_trial: bool,
) {
    let dir = &node.state_dir;
    let result = node
        .boot
        .lock()
        .map(
            |mut b| -> Result<bool, basalt_bootloader::BootloaderError> {
                if b.status()?.trial != initial.trial {
                    return Ok(false);
                }
                b.mark_good(booted)?;
                Ok(true)
            },
        )
        .map_err(|_| ());
    match result {
        Ok(Ok(committed)) => {
            let message = match (committed, on_trial, initial.trial) {
                (true, true, _) => format!("health checks passed: slot {booted} committed"),
                (true, false, Some(failed)) => format!(
                    "health checks passed: slot {booted} committed; slot {failed} recorded as the last failed trial"
                ),
                (true, false, None) => {
                    format!("health checks passed: slot {booted} committed, boot counter restored")
                }
                (false, _, _) => format!(
                    "health checks passed; slot {booted} not marked good: an upgrade activated a new trial meanwhile"
                ),
            };
            console(dir, &message);
            node.events
                .publish(EventKind::Boot, &format!("slot {booted}"), message);
        }
        Ok(Err(e)) => console(dir, &format!("committing slot {booted}: {e}")),
        // A poisoned lock: a thread panicked holding the boot backend; nothing to commit.
        Err(_) => console(
            dir,
            &format!("committing slot {booted}: the boot backend is unavailable"),
        ),
    }
}

/// What the upgrade engine needs on a node: the board and version of the booted slot and
/// the raw SYSTEM-A/SYSTEM-B partitions.
fn node_upgrade_target(early: &EarlyBoot) -> anyhow::Result<upgrade::UpgradeTarget> {
    let board = node_boot::slot_board(&early.slot_mount)?;
    let other =
        early.partitions.other_slot.as_ref().with_context(|| {
            format!("the disk has no partition for slot {}", early.slot.other())
        })?;
    let booted = early.partitions.slot.node();
    let other = other.node();
    let slot_devices = match early.slot {
        Slot::A => [booted, other],
        Slot::B => [other, booted],
    };
    Ok(upgrade::UpgradeTarget {
        board: board.name,
        booted_version: early.version.clone(),
        booted_slot: early.slot,
        slot_devices,
    })
}
