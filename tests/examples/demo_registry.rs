//! The demo's registry (`scripts/demo`): starts Debian's docker-registry over TLS with a new
//! test CA on 127.0.0.1 (the node reaches it at 10.0.2.2 from QEMU's user network), pushes a
//! busybox httpd image for the node's architecture, and writes the `ServiceConfig` document
//! that runs it as the service `web`. Leaves the registry running and prints its process id
//! (the demo stops it).
//!
//! ```text
//! demo_registry DIR ARCH PORT      # e.g. out/registry arm64 8080
//! ```

use basalt_tests::containers::{Registry, busybox_httpd_image, push};
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, arch, port] = &args[..] else {
        eprintln!("usage: demo_registry DIR ARCH PORT");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let port: u16 = port.parse().expect("PORT is a number");
    let _ = std::fs::remove_dir_all(&dir);
    let registry = Registry::start(&dir.join("registry"), true);
    push(
        &busybox_httpd_image(&dir.join("image"), arch, port),
        &registry.reference("httpd:1"),
        &registry,
    );
    let registry_port = registry
        .addr()
        .rsplit(':')
        .next()
        .expect("a port")
        .to_string();
    let ca: String = registry
        .ca_pem()
        .expect("a TLS registry")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let services = format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\nregistries:\n  \
         - host: 10.0.2.2:{registry_port}\n    ca: |\n{ca}services:\n  \
         - name: web\n    image: 10.0.2.2:{registry_port}/httpd:1\n    memory: 64Mi\n"
    );
    std::fs::write(dir.join("services.yaml"), services).expect("write services.yaml");
    println!("{}", registry.detach());
}
