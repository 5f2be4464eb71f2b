//! `basalt-image`: builds Basalt disk images and update bundles.

use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--version") => {
            println!("basalt-image {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("basalt-image: image building is not implemented yet");
            ExitCode::FAILURE
        }
    }
}
