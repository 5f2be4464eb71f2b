//! UEFI boards end to end under QEMU (issue 6, test h, and test a on qemu-x86_64).
//!
//! `arm64-uefi`: the image basalt-image built boots on `qemu-system-aarch64 -M virt` with the
//! UEFI firmware of qemu-efi-aarch64 (pflash) through systemd-boot (`BOOTAA64.EFI` on the
//! ESP) to machined in maintenance mode; `apply-config --insecure --fingerprint` brings it
//! up configured (mTLS from then on). Then a bad update: a signed 2.0.0 whose `/init`
//! cannot run (the kernel panics, `panic=10` resets) is written to slot B and activated
//! with 2 tries; systemd-boot counts them down (`basalt-b+2` → `+1-1` → `+0-2`), falls back
//! to slot A by itself, and BootStatus on A reports B as the last failed slot.
//!
//! `qemu-x86_64`: the same image shape on `q35` with OVMF (`BOOTX64.EFI`), the x86_64
//! machined and Debian's amd64 kernel: maintenance → configured, then an upgrade A → B
//! that boots B and is committed by the health check.
//!
//! QEMU runs with `-no-reboot`, so each reboot ends the process and the test starts a new
//! one on the same disk and firmware vars (a power cycle). Every QEMU is killed when its
//! guard drops, also on a failed assertion.

use basalt_boards::Board;
use basalt_image::bundle::{generate_signing_key, verifying_key_base64};
use basalt_tests::{
    Ending, Fixture, Qemu, UefiFirmware, apply_config_insecure, build_image, ctl, free_port,
    gen_node_config, maintenance_fingerprint, node_machined_for, ok,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Firmware + systemd-boot + kernel + machined to the API line under TCG.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

struct Node {
    board: Board,
    firmware: UefiFirmware,
    disk: PathBuf,
    dir: PathBuf,
    port: u16,
    boots: u32,
}

impl Node {
    fn new(board: &str, fixture: &Fixture, dir: &Path) -> Node {
        let board = Board::load(board).unwrap();
        let firmware = UefiFirmware::prepare(&board, &dir.join("firmware"));
        Node {
            board,
            firmware,
            disk: fixture.output.disk_image.clone(),
            dir: dir.to_path_buf(),
            port: free_port(),
            boots: 0,
        }
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Powers the machine on.
    fn start(&mut self) -> Qemu {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.console.log", self.boots));
        Qemu::boot_uefi(
            &self.board,
            &self.firmware,
            &self.disk,
            &log,
            Some(self.port),
        )
    }

    /// Powers on and waits for the API and the network.
    fn boot(&mut self) -> Qemu {
        let mut qemu = self.start();
        qemu.expect("API listening on", BOOT_TIMEOUT);
        qemu.expect("network up:", Duration::from_secs(60));
        qemu
    }
}

/// A signing key and the UpdateConfig document trusting it.
fn signing_key(root: &Path) -> (PathBuf, String) {
    let key_file = root.join("signing.pem");
    let _ = std::fs::remove_file(&key_file);
    let key = generate_signing_key(&key_file).unwrap();
    let doc = format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: http://10.0.2.2/\ntrustedSigningKeys:\n  - {}\n",
        verifying_key_base64(&key.verifying_key())
    );
    (key_file, doc)
}

/// Maintenance mode → `apply-config --insecure --fingerprint` → configured over mTLS;
/// returns the client configuration.
fn configure(node: &Node, qemu: &Qemu, machine_id: &str, update_doc: &str) -> PathBuf {
    let console = qemu.console();
    assert!(console.contains("maintenance"), "{console}");
    let fingerprint = maintenance_fingerprint(&console);
    let endpoint = node.endpoint();
    let cfg = gen_node_config(&node.dir, machine_id, &endpoint);
    let mut config = std::fs::read_to_string(&cfg.machine_yaml).unwrap();
    config.push_str(update_doc);
    std::fs::write(&cfg.machine_yaml, config).unwrap();
    ok(apply_config_insecure(
        &endpoint,
        &fingerprint,
        &s(&cfg.machine_yaml),
    ));
    let version = ok(ctl(Some(&cfg.client_yaml), &["version"]));
    assert!(version.contains(machine_id), "{version}");
    // mTLS required from now on: a second insecure apply-config is refused
    let o = apply_config_insecure(&endpoint, &fingerprint, &s(&cfg.machine_yaml));
    assert!(
        !o.status.success(),
        "insecure apply-config accepted after configure"
    );
    cfg.client_yaml
}

fn boot_status(client: &Path) -> String {
    ok(ctl(Some(client), &["boot-status"]))
}

#[test]
fn arm64_uefi_boots_through_systemd_boot_and_falls_back_after_a_bad_update() {
    basalt_tests::require_qemu_arm64();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-uefi-arm64");
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, update_doc) = signing_key(&root);
    let machined = node_machined_for("aarch64");
    let board = || Board::load("arm64-uefi").unwrap();
    let v1 = build_image(
        &root.join("v1"),
        board(),
        "1.0.0",
        &machined,
        Some(key_file.clone()),
    );
    // 2.0.0 whose /init cannot run: the kernel panics and resets (panic=10)
    let bad_init = root.join("bad-init");
    std::fs::write(&bad_init, b"#!/nonexistent/interpreter\n").unwrap();
    let bad = build_image(
        &root.join("v2-bad"),
        board(),
        "2.0.0",
        &bad_init,
        Some(key_file),
    );

    let mut node = Node::new("arm64-uefi", &v1, &root);
    let mut qemu = node.boot();
    let console = qemu.console();
    assert!(console.contains("basalt.slot=A"), "{console}");
    let client = configure(&node, &qemu, "uefi-arm64", &update_doc);
    let status = boot_status(&client);
    assert!(
        status.starts_with("booted A next A") && status.contains("committed true"),
        "{status}"
    );
    assert!(status.contains("systemd-boot"), "{status}");

    // the bad update, 2 tries
    let bundle = bad.output.disk_image.with_file_name("slot.bundle");
    let out = ok(ctl(
        Some(&client),
        &["upgrade", "--bundle", &s(&bundle), "--tries", "2"],
    ));
    assert!(out.contains("2.0.0"), "{out}");
    qemu.expect_exit(Duration::from_secs(120));
    drop(qemu);

    // two failed attempts of B (systemd-boot counts them), then A by itself
    for attempt in 1..=2 {
        let mut qemu = node.start();
        match qemu.wait(BOOT_TIMEOUT, |c| c.contains("API listening on")) {
            Some(Ending::Exited(..)) => {}
            other => panic!(
                "attempt {attempt} of the bad slot B: expected a panic and reset, got {other:?}:\n{}",
                qemu.console()
            ),
        }
        let console = qemu.console();
        assert!(
            console.contains("basalt.slot=B") && console.contains("Kernel panic"),
            "attempt {attempt}:\n{console}"
        );
    }
    let qemu = node.boot();
    let console = qemu.console();
    assert!(console.contains("basalt.slot=A"), "{console}");
    assert!(console.contains("version 1.0.0"), "{console}");
    let status = boot_status(&client);
    assert!(status.starts_with("booted A next A"), "{status}");
    assert!(status.contains("last-failed B"), "{status}");
    assert!(status.contains("committed true"), "{status}");
    assert!(
        status.contains("slot B: bootable false tries left 0"),
        "{status}"
    );
}

#[test]
fn qemu_x86_64_boots_with_ovmf_configures_and_upgrades_a_to_b() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-uefi-x86_64");
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, update_doc) = signing_key(&root);
    let machined = node_machined_for("x86_64");
    let board = || Board::load("qemu-x86_64").unwrap();
    let v1 = build_image(
        &root.join("v1"),
        board(),
        "1.0.0",
        &machined,
        Some(key_file.clone()),
    );
    let v2 = build_image(
        &root.join("v2"),
        board(),
        "2.0.0",
        &machined,
        Some(key_file),
    );

    let mut node = Node::new("qemu-x86_64", &v1, &root);
    let mut qemu = node.boot();
    assert!(
        qemu.console().contains("basalt.slot=A"),
        "{}",
        qemu.console()
    );
    let client = configure(&node, &qemu, "uefi-x86", &update_doc);
    let status = boot_status(&client);
    assert!(status.starts_with("booted A next A"), "{status}");

    let bundle = v2.output.disk_image.with_file_name("slot.bundle");
    let out = ok(ctl(Some(&client), &["upgrade", "--bundle", &s(&bundle)]));
    assert!(out.contains("2.0.0") && out.contains('B'), "{out}");
    qemu.expect_exit(Duration::from_secs(120));
    drop(qemu);

    let mut qemu = node.boot();
    let console = qemu.console();
    assert!(console.contains("basalt.slot=B"), "{console}");
    assert!(console.contains("version 2.0.0"), "{console}");
    qemu.expect("slot B committed", Duration::from_secs(60));
    let status = boot_status(&client);
    assert!(status.starts_with("booted B next B"), "{status}");
    assert!(status.contains("committed true"), "{status}");
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(version.contains("2.0.0 (qemu-x86_64, x86_64)"), "{version}");
}
