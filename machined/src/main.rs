//! `machined`: the Basalt machine daemon.
//!
//! On a node, machined is PID 1: it does the early boot (mounts, modules, dm-verity root,
//! STATE and DATA), reconciles the machine configuration through controllers, supervises
//! services, serves the authenticated gRPC API and runs A/B upgrades. There is no shell on
//! a node; everything an operator does goes through machined's API.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") => {
            println!("machined {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("machined: the machine daemon is not implemented yet");
            ExitCode::FAILURE
        }
    }
}
