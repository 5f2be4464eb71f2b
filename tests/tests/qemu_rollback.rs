//! Bad updates never brick a qemu-arm64 node (issue 6, tests c and f, node level).
//!
//! One node runs release 1.0.0 from slot A, configured over the API (mutual TLS from then
//! on). Three bad updates are pushed to it with the real `basaltctl upgrade`, each signed
//! with the trusted key so the node accepts, writes, reads back and activates it:
//!
//! 1. **c(i) machined exits at start**: a 2.0.0 image built by basalt-image around a tiny
//!    static "machined" (`tests/testdata/exit-at-start.c`) that exits with status 3. As
//!    PID 1 its exit panics the kernel, `panic=10` resets, and U-Boot's boot counting spends
//!    all of B's tries (3, the configured default) before it boots A again.
//! 2. **c(ii) the root cannot be found**: 1.0.0's slot image with `rootfs.img` deleted,
//!    signed as 2.1.0 (a test-only path with basalt-image's bundle writer); the kernel and
//!    initramfs start, machined's early boot finds no root in the slot and reboots (FATAL).
//!    Pushed with `--tries 1`.
//! 3. **f(ii) a byte flipped in a booted slot**: a good slot (1.0.0's bundle, with
//!    `--allow-downgrade`) staged into B with `--stage --tries 1`, the node shut down over
//!    the API, one byte of B's `rootfs.img` squashfs flipped on the disk file; at the next
//!    boot the full dm-verity read hits the bad block, the kernel panics
//!    (`panic_on_corruption`) and resets.
//!
//! After each, with no human action, the node comes back on slot A: the API answers with
//! mutual TLS (so STATE and its configuration are intact), `version` names the configured
//! machine, and BootStatus shows A booted and committed, B out of the boot order, and
//! `last-failed B`. The consoles of every attempt are kept in
//! `$CARGO_TARGET_TMPDIR/qemu-rollback/node/boot-N-<tag>.console.log`.
//!
//! QEMU runs with `-no-reboot`: each reset ends QEMU and the test starts it again on the
//! same disk (a power cycle; see `basalt_tests::rig`). Every boot is bounded; every QEMU is
//! killed when its guard drops, also when an assertion fails.

use basalt_boards::Board;
use basalt_image::bundle::generate_signing_key;
use basalt_tests::rig::{Node, arg};
use basalt_tests::slot_tools::{
    build_static_aarch64, flip_rootfs_byte, sign_slot, slot_without_rootfs,
};
use basalt_tests::{Fixture, Qemu, build_image, node_machined, ok, repo, require_qemu_arm64};
use std::path::Path;
use std::time::{Duration, Instant};

/// Upgrade stream, read-back and activation of a 512 MiB slot, then the reboot.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(300);
/// From the upgrade's reboot to the API on the fallback slot: the failed attempts (U-Boot,
/// kernel, the failure, a 5–10 s reset delay each) and one good boot.
const FALLBACK_BUDGET: Duration = Duration::from_secs(480);

fn bundle(fx: &Fixture) -> std::path::PathBuf {
    fx.output.disk_image.with_file_name("slot.bundle")
}

/// Pushes `bundle` with `extra` options and waits for the node's reboot.
fn upgrade(node: &Node, mut qemu: Qemu, bundle: &Path, extra: &[&str], version: &str) {
    let b = arg(bundle);
    let mut args = vec!["upgrade", "--bundle", &b];
    args.extend_from_slice(extra);
    let out = ok(node.ctl(&args));
    assert!(out.contains(version) && out.contains('B'), "{out}");
    qemu.expect_exit(UPGRADE_TIMEOUT);
}

/// Boots through B's failed attempts back to A and checks the attempts and the result:
/// `attempts` consoles, each booting B and showing `failure`; then A, committed, with B
/// recorded as the last failed trial.
fn falls_back_to_a(node: &mut Node, tag: &str, attempts: usize, failure: &[&str]) -> Qemu {
    let start = Instant::now();
    let (mut qemu, failed) = node.boot_through_resets(tag, attempts as u32 + 2, FALLBACK_BUDGET);
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
            console.contains("attempts left A="),
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
        "{tag}: U-Boot did not fall back to A:\n{console}"
    );
    qemu.expect(
        "health checks passed: slot A committed; slot B recorded as the last failed trial",
        Duration::from_secs(60),
    );
    eprintln!(
        "{tag}: {attempts} failed attempt(s) of B, back on A in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    // STATE intact: mutual TLS with the configured CA, the configured machine id.
    let version = ok(node.ctl(&["version"]));
    assert!(
        version.contains("basalt 1.0.0 (qemu-arm64, aarch64) machine rollback-node"),
        "{tag}: {version}"
    );
    let status = node.boot_status();
    assert!(
        status.starts_with("booted A next A order [A] committed true trial - last-failed B"),
        "{tag}: {status}"
    );
    qemu
}

#[test]
fn bad_updates_fall_back_to_the_old_slot() {
    require_qemu_arm64();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-rollback");
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let key_file = root.join("signing.pem");
    let key = generate_signing_key(&key_file).unwrap();
    let board = || Board::load("qemu-arm64").unwrap();

    // the releases: a good 1.0.0, a 2.0.0 whose machined exits, a 2.1.0 slot with no root
    let bad_machined = root.join("exit-at-start");
    build_static_aarch64(
        &repo().join("tests/testdata/exit-at-start.c"),
        &bad_machined,
    );
    let v1 = build_image(
        &root.join("v1"),
        board(),
        "1.0.0",
        &node_machined(),
        Some(key_file.clone()),
    );
    let exits = build_image(
        &root.join("v2-exits"),
        board(),
        "2.0.0",
        &bad_machined,
        Some(key_file.clone()),
    );
    let noroot_slot = root.join("noroot-slot.img");
    slot_without_rootfs(&v1.output.slot_image, &noroot_slot);
    let noroot = root.join("noroot.bundle");
    sign_slot(
        &noroot_slot,
        "qemu-arm64",
        "2.1.0",
        &v1.output.root_hash,
        &key,
        &noroot,
    );
    let _ = std::fs::remove_file(&noroot_slot);

    let mut node = Node::new(&v1.output.disk_image, &root.join("node"));
    let qemu = node.configure("rollback-node", &key.verifying_key());
    let status = node.boot_status();
    assert!(status.starts_with("booted A next A"), "{status}");

    // c(i): machined exits at start; default tries (3)
    upgrade(&node, qemu, &bundle(&exits), &[], "2.0.0");
    let qemu = falls_back_to_a(
        &mut node,
        "exits",
        3,
        &["[bad-machined] exiting at start", "Attempted to kill init"],
    );

    // c(ii): the slot has no root filesystem
    upgrade(&node, qemu, &noroot, &["--tries", "1"], "2.1.0");
    let qemu = falls_back_to_a(&mut node, "noroot", 1, &["[basalt] FATAL", "rootfs.img"]);

    // f(ii): a byte flipped in the staged slot B on the disk while the node is off
    let out = ok(node.ctl(&[
        "upgrade",
        "--bundle",
        &arg(&bundle(&v1)),
        "--allow-downgrade",
        "--stage",
        "--tries",
        "1",
    ]));
    assert!(out.contains("1.0.0") && out.contains('B'), "{out}");
    let status = node.boot_status();
    assert!(status.contains("next B"), "staged: {status}");
    let mut qemu = qemu;
    ok(node.ctl(&["shutdown"]));
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);
    let at = flip_rootfs_byte(&node.disk, "SYSTEM-B");
    eprintln!("flipped byte {at} of SYSTEM-B's rootfs.img");
    let _qemu = falls_back_to_a(
        &mut node,
        "flipped",
        1,
        &["is corrupted", "dm-verity device corrupted"],
    );
}
