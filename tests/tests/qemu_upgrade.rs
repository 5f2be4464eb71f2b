//! A/B upgrade over the API under QEMU (issue 6, tests b and e): the qemu-arm64 node runs
//! release 1.0.0 from slot A; `basaltctl upgrade` streams the signed 2.0.0 bundle through
//! QEMU's port forward; the node verifies and writes slot B, activates it on trial and
//! reboots; U-Boot's boot script boots B; machined's health check commits it. Then the
//! 1.0.0 bundle goes back into slot A (`--allow-downgrade`), and the `Rollback` RPC returns
//! to B. Last, with the node off, `basalt-flash write-slot` writes 2.0.0 into slot A of the
//! disk (through a loop device) and activates it; the next power-on boots A and commits it.
//!
//! Each push sends only what the node's booted slot lacks (UpgradePlan): the test checks
//! that the node copied the rest from its booted slot.
//!
//! QEMU runs with `-no-reboot`, so a reboot of the node ends the QEMU process; the test
//! starts a new one on the same disk, as a power cycle would. Every QEMU is killed when its
//! guard drops, also when an assertion fails.

use basalt_boards::Board;
use basalt_image::bundle::{verifying_key_base64, verifying_key_pem};
use basalt_tests::image_cache::run_signing_key;
use basalt_tests::loop_device::LoopDevice;
use basalt_tests::{
    Fixture, Qemu, apply_config_insecure, build_image, ctl, free_port, gen_node_config,
    maintenance_fingerprint, node_machined, ok, output_text, repo, workspace_binary,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Boot to the API line (QEMU TCG; typically ~40 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

struct Node {
    disk: PathBuf,
    dir: PathBuf,
    port: u16,
    boots: u32,
}

impl Node {
    /// Boots the disk and waits for the API and the network; returns the console so far.
    fn boot(&mut self) -> Qemu {
        self.boots += 1;
        let log = self.dir.join(format!("boot-{}.console.log", self.boots));
        let mut qemu = Qemu::boot_arm64(&self.disk, &log, Some(self.port));
        qemu.expect("API listening on", BOOT_TIMEOUT);
        qemu.expect("network up:", Duration::from_secs(60));
        qemu
    }
}

fn boot_status(client: &Path) -> String {
    ok(ctl(Some(client), &["boot-status"]))
}

#[test]
fn upgrade_a_to_b_commit_then_back_to_a_and_rollback() {
    basalt_tests::require_qemu_arm64();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-upgrade");
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, key) = run_signing_key(&repo());
    let machined = node_machined();
    let board = || Board::load("qemu-arm64").unwrap();
    let v1: Fixture = build_image(
        &root.join("v1"),
        board(),
        "1.0.0",
        &machined,
        Some(key_file.clone()),
    );
    let v2: Fixture = build_image(
        &root.join("v2"),
        board(),
        "2.0.0",
        &machined,
        Some(key_file.clone()),
    );
    let bundle = |fx: &Fixture| fx.output.disk_image.with_file_name("slot.bundle");
    assert!(bundle(&v2).exists(), "no bundle in {}", v2.dir.display());

    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let mut node = Node {
        disk: v1.output.disk_image.clone(),
        dir: root.clone(),
        port,
        boots: 0,
    };

    // configure the 1.0.0 node, trusting the signing key
    let mut qemu = node.boot();
    let console = qemu.console();
    let fingerprint = maintenance_fingerprint(&console);
    let node_config = gen_node_config(&root, "upgrade-node", &endpoint);
    let machine_yaml = node_config.machine_yaml;
    let mut config = std::fs::read_to_string(&machine_yaml).unwrap();
    config.push_str(&format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: http://10.0.2.2/\ntrustedSigningKeys:\n  - {}\n",
        verifying_key_base64(&key.verifying_key())
    ));
    std::fs::write(&machine_yaml, config).unwrap();
    ok(apply_config_insecure(
        &endpoint,
        &fingerprint,
        &s(&machine_yaml),
    ));
    let client = node_config.client_yaml;
    let status = boot_status(&client);
    assert!(status.starts_with("booted A next A"), "{status}");

    // b. 1.0.0 (A) -> 2.0.0 (B)
    let out = ok(ctl(
        Some(&client),
        &["upgrade", "--bundle", &s(&bundle(&v2))],
    ));
    assert!(out.contains("2.0.0") && out.contains('B'), "{out}");
    qemu.expect_exit(Duration::from_secs(120));
    let console = qemu.console();
    // most chunks (the same kernel and initramfs, the zero tail) came from slot A
    assert!(
        console.contains("chunks are copied from the booted slot A"),
        "{console}"
    );
    drop(qemu);

    let mut qemu = node.boot();
    let console = qemu.console();
    assert!(
        console.contains("basalt.slot=B"),
        "U-Boot did not boot B:\n{console}"
    );
    assert!(console.contains("version 2.0.0"), "{console}");
    qemu.expect("slot B committed", Duration::from_secs(60));
    let status = boot_status(&client);
    assert!(status.starts_with("booted B next B"), "{status}");
    assert!(status.contains("committed true"), "{status}");
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(
        version.contains("basalt 2.0.0 (qemu-arm64, aarch64) machine upgrade-node"),
        "{version}"
    );

    // 2.0.0 (B) -> 1.0.0 back into A, which needs --allow-downgrade
    let o = ctl(Some(&client), &["upgrade", "--bundle", &s(&bundle(&v1))]);
    assert!(
        !o.status.success() && output_text(&o).contains("downgrade"),
        "{}",
        output_text(&o)
    );
    ok(ctl(
        Some(&client),
        &["upgrade", "--bundle", &s(&bundle(&v1)), "--allow-downgrade"],
    ));
    qemu.expect_exit(Duration::from_secs(120));
    drop(qemu);
    let mut qemu = node.boot();
    assert!(
        qemu.console().contains("basalt.slot=A"),
        "{}",
        qemu.console()
    );
    qemu.expect("slot A committed", Duration::from_secs(60));
    let status = boot_status(&client);
    assert!(status.starts_with("booted A next A"), "{status}");

    // e. Rollback returns to the previous slot (B, still bootable)
    let o = ok(ctl(Some(&client), &["rollback", "--reboot"]));
    assert!(o.contains('B'), "{o}");
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);
    let mut qemu = node.boot();
    assert!(
        qemu.console().contains("basalt.slot=B"),
        "{}",
        qemu.console()
    );
    qemu.expect("slot B committed", Duration::from_secs(60));

    // basalt-flash write-slot on the powered-off disk (a loop device): 2.0.0 into slot A,
    // activated on trial; the next power-on boots A and commits it.
    ok(ctl(Some(&client), &["shutdown"]));
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);
    let public = root.join("signing.pub.pem");
    std::fs::write(&public, verifying_key_pem(&key.verifying_key()).unwrap()).unwrap();
    let card = LoopDevice::whole_disk(&node.disk);
    let flash = Command::new(workspace_binary("basalt-flash"))
        .args(["write-slot", "--quiet", "--slot", "A", "--bundle"])
        .arg(bundle(&v2))
        .arg("--trusted-key")
        .arg(&public)
        .args(["--board", "qemu-arm64", &card.0])
        .output()
        .expect("basalt-flash runs");
    assert!(flash.status.success(), "{}", output_text(&flash));
    drop(card);
    let mut qemu = node.boot();
    let console = qemu.console();
    assert!(console.contains("basalt.slot=A"), "{console}");
    assert!(console.contains("version 2.0.0"), "{console}");
    qemu.expect("slot A committed", Duration::from_secs(60));
    let status = boot_status(&client);
    assert!(status.starts_with("booted A next A"), "{status}");
    assert!(status.contains("committed true"), "{status}");
}
