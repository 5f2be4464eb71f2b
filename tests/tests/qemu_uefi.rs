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
//! `qemu-x86_64` (tests a, b and e there): the same image shape on `q35` with OVMF
//! (`BOOTX64.EFI`), the x86_64 machined and Debian's amd64 kernel: maintenance →
//! configured; an upgrade 1.0.0 (A) → 2.0.0 (B) that boots B and is committed by the health
//! check; 1.0.0 back into A (refused as a downgrade without `--allow-downgrade`, as on
//! arm64: a re-signed "3.0.0" of an existing slot would boot a machined that calls itself
//! 1.0.0, and a third image costs another build), booted and committed; then
//! `basaltctl rollback --reboot` returns to B, which boots and is committed again.
//!
//! Both run on the shared rig (`basalt_tests::rig`): QEMU runs with `-no-reboot`, so each
//! reboot ends the process and the test starts a new one on the same disk and firmware
//! vars (a power cycle). Every QEMU is killed when its guard drops, also on a failed
//! assertion. Consoles: `$CARGO_TARGET_TMPDIR/qemu-uefi-<arch>/node/boot-N-<tag>.console.log`.

use basalt_boards::Board;
use basalt_image::bundle::SigningKey;
use basalt_tests::image_cache::run_signing_key;
use basalt_tests::rig::{Node, arg};
use basalt_tests::{
    Fixture, Qemu, apply_config_insecure, build_image, maintenance_fingerprint, node_machined_for,
    ok, output_text, repo,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The test run's signing key (and its file); `root` is the test's folder.
fn signing_key(_root: &Path) -> (PathBuf, SigningKey) {
    run_signing_key(&repo())
}

/// Maintenance mode → `apply-config --insecure --fingerprint` (the rig's) → configured:
/// `version` over mTLS names the machine, and a second insecure apply-config is refused.
fn configure(node: &mut Node, machine_id: &str, key: &SigningKey) -> Qemu {
    let qemu = node.configure(machine_id, &key.verifying_key());
    let version = ok(node.ctl(&["version"]));
    assert!(version.contains(machine_id), "{version}");
    let fingerprint = maintenance_fingerprint(&qemu.console());
    let machine_yaml = node.dir.join("cfg/machine.yaml");
    let o = apply_config_insecure(&node.endpoint, &fingerprint, &arg(&machine_yaml));
    assert!(
        !o.status.success(),
        "insecure apply-config accepted after configure"
    );
    qemu
}

fn bundle(fx: &Fixture) -> PathBuf {
    fx.output.disk_image.with_file_name("slot.bundle")
}

#[test]
fn arm64_uefi_boots_through_systemd_boot_and_falls_back_after_a_bad_update() {
    basalt_tests::require_qemu_arm64();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-uefi-arm64");
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, key) = signing_key(&root);
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

    let mut node = Node::new(&board(), &v1.output.disk_image, &root.join("node"));
    let qemu = configure(&mut node, "uefi-arm64", &key);
    let console = qemu.console();
    assert!(console.contains("basalt.slot=A"), "{console}");
    let status = node.boot_status();
    assert!(
        status.starts_with("booted A next A") && status.contains("committed true"),
        "{status}"
    );
    assert!(status.contains("systemd-boot"), "{status}");

    // the bad update, 2 tries: two failed attempts of B (systemd-boot counts them), then A
    // by itself
    node.upgrade(qemu, &bundle(&bad), &["--tries", "2"], "2.0.0");
    let qemu = node.falls_back_to_a("bad-init", 2, &["Kernel panic"], "1.0.0");
    assert!(
        qemu.console().contains("version 1.0.0"),
        "{}",
        qemu.console()
    );
    let status = node.boot_status();
    assert!(
        status.contains("slot B: bootable false tries left 0"),
        "{status}"
    );
}

/// Boots `node` after a reboot and waits for `slot`'s commit by the health check.
fn boots_and_commits(node: &mut Node, tag: &str, slot: char, version: &str) -> Qemu {
    let mut qemu = node.boot(tag);
    let console = qemu.console();
    assert!(
        console.contains(&format!("basalt.slot={slot}")),
        "{tag}: systemd-boot did not boot {slot}:\n{console}"
    );
    assert!(console.contains(&format!("version {version}")), "{console}");
    qemu.expect(&format!("slot {slot} committed"), Duration::from_secs(60));
    let status = node.boot_status();
    assert!(
        status.starts_with(&format!("booted {slot} next {slot}"))
            && status.contains("committed true"),
        "{tag}: {status}"
    );
    let out = ok(node.ctl(&["version"]));
    assert!(out.contains(&node.version_line(version)), "{tag}: {out}");
    qemu
}

#[test]
fn qemu_x86_64_boots_with_ovmf_configures_upgrades_and_rolls_back() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-uefi-x86_64");
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, key) = signing_key(&root);
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

    // a. maintenance → configured
    let mut node = Node::new(&board(), &v1.output.disk_image, &root.join("node"));
    let qemu = configure(&mut node, "uefi-x86", &key);
    assert!(
        qemu.console().contains("basalt.slot=A"),
        "{}",
        qemu.console()
    );
    let status = node.boot_status();
    assert!(status.starts_with("booted A next A"), "{status}");

    // b. 1.0.0 (A) -> 2.0.0 (B), committed
    node.upgrade(qemu, &bundle(&v2), &[], "2.0.0");
    let qemu = boots_and_commits(&mut node, "v2-on-b", 'B', "2.0.0");

    // then 2.0.0 (B) -> 1.0.0 back into A: refused as a downgrade, then allowed
    let o = node.ctl(&["upgrade", "--bundle", &arg(&bundle(&v1))]);
    assert!(
        !o.status.success() && output_text(&o).contains("downgrade"),
        "{}",
        output_text(&o)
    );
    let out = ok(node.ctl(&[
        "upgrade",
        "--bundle",
        &arg(&bundle(&v1)),
        "--allow-downgrade",
    ]));
    assert!(out.contains("1.0.0") && out.contains('A'), "{out}");
    let mut qemu = qemu;
    qemu.expect_exit(Duration::from_secs(120));
    drop(qemu);
    let qemu = boots_and_commits(&mut node, "v1-on-a", 'A', "1.0.0");

    // e. Rollback returns to the previous slot (B, still bootable)
    let out = ok(node.ctl(&["rollback", "--reboot"]));
    assert!(out.contains('B'), "{out}");
    let mut qemu = qemu;
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);
    boots_and_commits(&mut node, "rollback-to-b", 'B', "2.0.0");
}
