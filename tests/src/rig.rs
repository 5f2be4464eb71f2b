//! A configured qemu-arm64 node on one disk file, power-cycled by relaunching QEMU.
//!
//! QEMU runs with `-no-reboot`, so every reset of the node (an orderly reboot, a kernel
//! panic with `panic=10`, machined's FATAL reboot) ends the QEMU process; [`Node`] starts a
//! new one on the same disk file, as a power cycle would. That keeps each boot's console in
//! its own log (`boot-N-<tag>.console.log` in the node's folder) and lets a test count the
//! attempts U-Boot's boot counting makes. A power cut is the same with `SIGKILL` at a chosen
//! moment (dropping the [`Qemu`] kills it).

use crate::{Ending, Qemu, ctl, free_port, gen_node_config, maintenance_fingerprint, ok};
use basalt_image::bundle::{VerifyingKey, verifying_key_base64};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// One boot to the API line (U-Boot, kernel, early boot, daemon; typically 30–60 s under
/// TCG on a loaded 2-core machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// A UTF-8 path as a string argument.
pub fn arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// A node: its disk file, the folder of its logs and configuration, and the forwarded API.
pub struct Node {
    /// The disk image file (modified in place by the node).
    pub disk: PathBuf,
    /// Logs, secrets and configuration.
    pub dir: PathBuf,
    /// `127.0.0.1:<port>`, forwarded to the node's API port.
    pub endpoint: String,
    /// basaltctl's client configuration (admin certificate), once configured.
    pub client: Option<PathBuf>,
    port: u16,
    boots: u32,
}

impl Node {
    /// A node on `disk`, logging into `dir`.
    pub fn new(disk: &Path, dir: &Path) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        Node {
            disk: disk.to_path_buf(),
            dir: dir.to_path_buf(),
            endpoint: format!("127.0.0.1:{port}"),
            client: None,
            port,
            boots: 0,
        }
    }

    /// How many times QEMU was started on this node.
    pub fn boots(&self) -> u32 {
        self.boots
    }

    /// Starts QEMU on the disk (console in `boot-N-<tag>.console.log`), without waiting.
    pub fn launch(&mut self, tag: &str) -> Qemu {
        self.boots += 1;
        let log = self
            .dir
            .join(format!("boot-{}-{tag}.console.log", self.boots));
        Qemu::boot_arm64(&self.disk, &log, Some(self.port))
    }

    /// Boots and waits for the API and the network; panics (with the console) otherwise.
    pub fn boot(&mut self, tag: &str) -> Qemu {
        let mut qemu = self.launch(tag);
        qemu.expect("API listening on", BOOT_TIMEOUT);
        qemu.expect("network up:", Duration::from_secs(60));
        qemu
    }

    /// Power-cycles the node until a boot reaches the API (and the network), at most
    /// `max_boots` starts of QEMU within `budget`; returns the running QEMU and the consoles
    /// of the boots that reset before reaching the API, in order.
    pub fn boot_through_resets(
        &mut self,
        tag: &str,
        max_boots: u32,
        budget: Duration,
    ) -> (Qemu, Vec<String>) {
        let start = Instant::now();
        let mut failed = Vec::new();
        for _ in 0..max_boots {
            let left = budget.saturating_sub(start.elapsed());
            let mut qemu = self.launch(tag);
            match qemu.wait(left.min(BOOT_TIMEOUT), |c| c.contains("API listening on")) {
                Some(Ending::Condition(_)) => {
                    qemu.expect("network up:", Duration::from_secs(60));
                    return (qemu, failed);
                }
                Some(Ending::Exited(..)) => failed.push(qemu.console()),
                None => panic!(
                    "boot {} ({tag}) neither reached the API nor reset within {:?}:\n{}",
                    self.boots,
                    left.min(BOOT_TIMEOUT),
                    qemu.console()
                ),
            }
        }
        panic!(
            "no boot reached the API in {max_boots} starts; the last console:\n{}",
            failed.last().map(String::as_str).unwrap_or("")
        );
    }

    /// Boots the node in maintenance mode and applies a generated configuration for
    /// `machine_id` that trusts `signing` for updates; returns the running QEMU. From then
    /// on [`Node::ctl`] uses mutual TLS.
    pub fn configure(&mut self, machine_id: &str, signing: &VerifyingKey) -> Qemu {
        let qemu = self.boot("maintenance");
        let fingerprint = maintenance_fingerprint(&qemu.console());
        let cfg = gen_node_config(&self.dir, machine_id, &self.endpoint);
        let mut config = std::fs::read_to_string(&cfg.machine_yaml).unwrap();
        config.push_str(&format!(
            "---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: http://10.0.2.2/\ntrustedSigningKeys:\n  - {}\n",
            verifying_key_base64(signing)
        ));
        std::fs::write(&cfg.machine_yaml, config).unwrap();
        ok(ctl(
            None,
            &[
                "-n",
                &self.endpoint,
                "apply-config",
                "--insecure",
                "--fingerprint",
                &fingerprint,
                "-f",
                &arg(&cfg.machine_yaml),
            ],
        ));
        self.client = Some(cfg.client_yaml);
        qemu
    }

    /// basaltctl with the node's client configuration (mutual TLS).
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl(Some(self.client.as_deref().expect("node configured")), args)
    }

    /// `basaltctl boot-status` (text), which must succeed.
    pub fn boot_status(&self) -> String {
        ok(self.ctl(&["boot-status"]))
    }
}
