//! `basalt-flash`: writes Basalt images to SD, eMMC and USB devices.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") => {
            println!("basalt-flash {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("basalt-flash: flashing is not implemented yet");
            ExitCode::FAILURE
        }
    }
}
