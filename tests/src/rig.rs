//! A configured node of a QEMU board on one disk file, power-cycled by relaunching QEMU.
//!
//! Two kinds of board run here: `qemu-arm64` (Debian's U-Boot as `-bios`, boot counting in
//! the boot script; [`Qemu::boot_arm64`]) and the UEFI boards `qemu-x86_64` / `arm64-uefi`
//! (the board's firmware as pflash with the node's own vars store, systemd-boot on the ESP,
//! boot counting in the loader entries' file names; [`UefiFirmware`], [`Qemu::boot_uefi`]).
//! The Raspberry Pi boards have no network in QEMU and are not run through this rig.
//!
//! QEMU runs with `-no-reboot`, so every reset of the node (an orderly reboot, a kernel
//! panic with `panic=10`, machined's FATAL reboot) ends the QEMU process; [`Node`] starts a
//! new one on the same disk file (and UEFI vars store), as a power cycle would. That keeps
//! each boot's console in its own log (`boot-N-<tag>.console.log` in the node's folder) and
//! lets a test count the attempts the bootloader's boot counting makes. A power cut is the
//! same with `SIGKILL` at a chosen moment (dropping the [`Qemu`] kills it).
//!
//! [`Node::falls_back_to_a`] is the shared check of the bad-update tests (issue 6, c and f):
//! the failed attempts of B, then A by itself with STATE intact.

use crate::{
    Ending, Qemu, UefiFirmware, ctl, free_port, gen_node_config, maintenance_fingerprint, ok,
};
use basalt_boards::{Board, BootloaderFamily};
use basalt_image::bundle::{VerifyingKey, verifying_key_base64};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

/// One boot to the API line (firmware, bootloader, kernel, early boot, daemon; typically
/// 30–60 s under TCG on a loaded 2-core machine, OVMF alone ~20 s of it).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// Upgrade stream, read-back and activation of a 512 MiB slot, then the reboot.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);

/// From an upgrade's reboot to the API on the fallback slot: the failed attempts
/// (firmware, kernel, the failure, a 5–10 s reset delay each) and one good boot.
pub const FALLBACK_BUDGET: Duration = Duration::from_secs(480);

/// A UTF-8 path as a string argument.
pub fn arg(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// A node: its board, disk file, the folder of its logs and configuration, and the
/// forwarded API.
pub struct Node {
    /// The board the disk was built for (how QEMU starts it).
    pub board: Board,
    /// The disk image file (modified in place by the node).
    pub disk: PathBuf,
    /// Logs, secrets and configuration.
    pub dir: PathBuf,
    /// `127.0.0.1:<port>`, forwarded to the node's API port.
    pub endpoint: String,
    /// basaltctl's client configuration (admin certificate), once configured.
    pub client: Option<PathBuf>,
    /// The machine id given by [`Node::configure`].
    pub machine_id: Option<String>,
    /// UEFI boards: the node's pflash images (its own vars store, kept across boots).
    firmware: Option<UefiFirmware>,
    port: u16,
    boots: u32,
}

impl Node {
    /// A node of `board` on `disk`, logging into `dir` (UEFI boards: with fresh firmware
    /// copies in `dir/firmware`). Panics for a board this rig cannot start (see the module
    /// doc).
    pub fn new(board: &Board, disk: &Path, dir: &Path) -> Node {
        std::fs::create_dir_all(dir).unwrap();
        let firmware = match board.boot.family {
            BootloaderFamily::UefiSystemdBoot => {
                Some(UefiFirmware::prepare(board, &dir.join("firmware")))
            }
            _ => {
                assert_eq!(
                    board.name, "qemu-arm64",
                    "the rig starts U-Boot only on qemu-arm64"
                );
                crate::require_qemu_arm64();
                None
            }
        };
        let port = free_port();
        Node {
            board: board.clone(),
            disk: disk.to_path_buf(),
            dir: dir.to_path_buf(),
            endpoint: format!("127.0.0.1:{port}"),
            client: None,
            machine_id: None,
            firmware,
            port,
            boots: 0,
        }
    }

    /// Whether the board boots through UEFI and systemd-boot.
    pub fn is_uefi(&self) -> bool {
        self.firmware.is_some()
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
        match &self.firmware {
            Some(fw) => Qemu::boot_uefi(&self.board, fw, &self.disk, &log, Some(self.port)),
            None => Qemu::boot_arm64(&self.disk, &log, Some(self.port)),
        }
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
        let console = qemu.console();
        assert!(console.contains("maintenance"), "{console}");
        let fingerprint = maintenance_fingerprint(&console);
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
        self.machine_id = Some(machine_id.to_string());
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

    /// What `basaltctl version` prints for `version` of this board on this machine.
    pub fn version_line(&self, version: &str) -> String {
        format!(
            "basalt {version} ({}, {}) machine {}",
            self.board.name,
            self.board.arch.as_str(),
            self.machine_id.as_deref().expect("node configured")
        )
    }

    /// `basaltctl upgrade --bundle BUNDLE EXTRA…`, which must name `version` and slot B;
    /// then waits for the node's reboot (the end of `qemu`).
    pub fn upgrade(&self, mut qemu: Qemu, bundle: &Path, extra: &[&str], version: &str) {
        let b = arg(bundle);
        let mut args = vec!["upgrade", "--bundle", &b];
        args.extend_from_slice(extra);
        let out = ok(self.ctl(&args));
        assert!(out.contains(version) && out.contains('B'), "{out}");
        qemu.expect_exit(UPGRADE_TIMEOUT);
    }

    /// Boots through B's failed attempts back to A and checks the attempts and the result:
    /// `attempts` consoles, each booting B (U-Boot: with its boot script's line) and
    /// showing every string of `failure`, none serving the API; then A, committed by the
    /// health check, with STATE intact (mutual TLS with the configured CA; `version` names
    /// the configured machine on `version`), and BootStatus `booted A next A order [A]
    /// committed true trial - last-failed B` (UEFI: B may stay in the order, as a slot with
    /// no tries left). Returns the running QEMU on A.
    pub fn falls_back_to_a(
        &mut self,
        tag: &str,
        attempts: usize,
        failure: &[&str],
        version: &str,
    ) -> Qemu {
        let start = Instant::now();
        let (mut qemu, failed) =
            self.boot_through_resets(tag, attempts as u32 + 2, FALLBACK_BUDGET);
        assert_eq!(
            failed.len(),
            attempts,
            "{tag}: expected {attempts} failed attempt(s) of B; the consoles:\n{}",
            failed.join("\n=====\n")
        );
        for (i, console) in failed.iter().enumerate() {
            assert!(
                console.contains("basalt.slot=B"),
                "{tag}: attempt {i} did not boot B:\n{console}"
            );
            assert!(
                self.is_uefi() || console.contains("attempts left A="),
                "{tag}: no boot script line:\n{console}"
            );
            for needle in failure {
                assert!(
                    console.contains(needle),
                    "{tag}: attempt {i} lacks {needle:?}:\n{console}"
                );
            }
            assert!(
                !console.contains("API listening on"),
                "{tag}: the bad slot served the API:\n{console}"
            );
        }
        let console = qemu.console();
        assert!(
            console.contains("basalt.slot=A"),
            "{tag}: the bootloader did not fall back to A:\n{console}"
        );
        // U-Boot: A is booted while B is still the trial in the env, so machined records
        // the failure; systemd-boot: B's entry is already `+0-N` (bad) and the status
        // derives `last-failed` from it, so machined only restores A's counter.
        let committed = if self.is_uefi() {
            "health checks passed: slot A committed, boot counter restored"
        } else {
            "health checks passed: slot A committed; slot B recorded as the last failed trial"
        };
        qemu.expect(committed, Duration::from_secs(60));
        eprintln!(
            "{tag}: {attempts} failed attempt(s) of B, back on A in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        let line = self.version_line(version);
        let out = ok(self.ctl(&["version"]));
        assert!(out.contains(&line), "{tag}: expected {line:?}: {out}");
        let status = self.boot_status();
        if self.is_uefi() {
            // systemd-boot keeps B's entry (sorted last, counter 0) in the order
            assert!(
                status.starts_with("booted A next A order [A")
                    && status.contains("committed true trial - last-failed B")
                    && status.contains("slot B: bootable false tries left 0"),
                "{tag}: {status}"
            );
        } else {
            assert!(
                status
                    .starts_with("booted A next A order [A] committed true trial - last-failed B"),
                "{tag}: {status}"
            );
        }
        qemu
    }
}
