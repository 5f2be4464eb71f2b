//! `basaltctl`: the Basalt operator CLI.
//!
//! basaltctl talks to machined's gRPC API over mutual TLS: it generates secrets and
//! configs, applies configuration, reads resources, logs and audit trails, and drives
//! upgrades and rollbacks, fanning out to many nodes client-side. It must not depend on
//! daemon-only crates.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") => {
            println!("basaltctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("basaltctl: no commands are implemented yet");
            ExitCode::FAILURE
        }
    }
}
