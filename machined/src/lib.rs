//! The Basalt machine daemon as a library: everything `machined` is made of, so that the
//! binary stays a thin argument parser and the parts can be tested on their own.
//!
//! Modules:
//!
//! - [`api`]: the gRPC API server (TLS, the authorization table, tokens, the audit guard,
//!   handlers);
//! - [`node`]: the operations the handlers call;
//! - [`audit`]: the append-only audit log;
//! - [`events`]: the machine event bus (history ring and live subscribers);
//! - [`state`]: atomic configuration storage with history;
//! - [`settings`]: the API settings read from a machine configuration;
//! - [`kmsg`]: the kernel log reader (`/dev/kmsg`);
//! - [`host`]: what machined does to the host, and the recording dev implementation;
//! - [`host_files`]: the configuration's `files`, written atomically (node and dev mode);
//! - [`observe`]: statistics, processes, mounts and disks;
//! - [`services`]: the service supervisor, log rings and the PID 1 orphan reaper;
//! - [`time_sync`]: SNTP client stepping the clock from the configured time servers;
//! - [`timefmt`]: RFC 3339 and protobuf timestamps;
//! - [`upgrade`]: the A/B upgrade engine (signed bundles into the inactive slot);
//! - [`wipe`]: emptying STATE and DATA for Reset.

pub mod api;
pub mod audit;
pub mod config_apply;
pub mod config_watch;
pub mod containers;
pub mod early_boot;
pub mod events;
pub mod host;
pub mod host_files;
pub mod kmsg;
pub mod linux_host;
pub mod network;
pub mod node;
pub mod node_boot;
pub mod node_image_import;
pub mod node_images;
pub mod node_services;
pub mod observe;
pub mod reconcile;
pub mod resources;
pub mod services;
pub mod settings;
pub mod start_config;
pub mod state;
pub mod time_floor;
pub mod time_sync;
pub mod timefmt;
pub mod upgrade;
pub mod wipe;

use std::io::Write;
use std::path::Path;

/// machined's own log (what [`console`] printed since start), served by the Logs RPC as
/// service "machined".
pub fn machined_log() -> &'static services::LogRing {
    static LOG: std::sync::OnceLock<services::LogRing> = std::sync::OnceLock::new();
    LOG.get_or_init(|| services::LogRing::new(2000, 512 * 1024))
}

/// Prints a console message (stderr), appends it to `<state>/machined.log` and to
/// [`machined_log`].
pub fn console(state_dir: &Path, message: &str) {
    eprintln!("machined: {message}");
    machined_log().push(services::OutputStream::Stderr, message);
    let line = format!(
        "{} {message}\n",
        timefmt::rfc3339(std::time::SystemTime::now())
    );
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join("machined.log"))
        .and_then(|mut f| f.write_all(line.as_bytes()));
}
