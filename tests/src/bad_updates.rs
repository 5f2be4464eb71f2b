//! The bad-update scenario of issue 6 (tests c and f(ii)), for any board the [`rig`] runs:
//! one node, three bad updates, each followed by the fallback to slot A without any human
//! action. `tests/tests/qemu_rollback.rs` runs it on qemu-arm64 (U-Boot),
//! `tests/tests/qemu_x86_64_bad_updates.rs` on qemu-x86_64 (OVMF + systemd-boot).
//!
//! The node runs release 1.0.0 from slot A, configured over the API (mutual TLS from then
//! on). The bad updates are pushed with the real `basaltctl upgrade`, each signed with the
//! trusted key so the node accepts, writes, reads back and activates it:
//!
//! 1. **c(i) machined exits at start**: a 2.0.0 image built by basalt-image around a tiny
//!    static "machined" (`tests/testdata/exit-at-start.c`, compiled for the board's
//!    architecture) that exits with status 3. As PID 1 its exit panics the kernel,
//!    `panic=10` resets, and the bootloader's boot counting spends all of B's tries
//!    ([`BadUpdates::exit_tries`]) before it boots A again.
//! 2. **c(ii) the root cannot be found**: 1.0.0's slot image with `rootfs.img` deleted,
//!    signed as 2.1.0 (a test-only path with basalt-image's bundle writer); the kernel and
//!    initramfs start (on UEFI from the copies the activation put on the ESP), machined's
//!    early boot finds no root in the slot and reboots (FATAL). Pushed with `--tries 1`.
//! 3. **f(ii) a byte flipped in a booted slot**: a good slot (1.0.0's bundle, with
//!    `--allow-downgrade`) staged into B with `--stage --tries 1`, the node shut down over
//!    the API, one byte of B's `rootfs.img` squashfs flipped on the disk file; at the next
//!    boot the full dm-verity read hits the bad block, the kernel panics
//!    (`panic_on_corruption`) and resets.
//!
//! After each, [`Node::falls_back_to_a`] checks the failed attempts and that the node is
//! back on A with STATE intact and BootStatus `last-failed B`. The consoles of every
//! attempt are kept in `<dir>/node/boot-N-<tag>.console.log`.

use crate::image_cache::run_signing_key;
use crate::rig::{Node, arg};
use crate::slot_tools::{build_static, flip_rootfs_byte, sign_slot, slot_without_rootfs};
use crate::{Fixture, build_image, node_machined_for, ok, repo};
use basalt_boards::Board;
use std::path::PathBuf;
use std::time::Duration;

/// One run of the scenario.
pub struct BadUpdates<'a> {
    /// The board (`qemu-arm64`, `qemu-x86_64`).
    pub board: &'a str,
    /// The run's folder (replaced).
    pub dir: PathBuf,
    /// The configured machine id.
    pub machine_id: &'a str,
    /// Tries of the exiting machined's slot (c(i)): `None` for the node's default (3).
    pub exit_tries: Option<u32>,
}

fn bundle(fx: &Fixture) -> PathBuf {
    fx.output.disk_image.with_file_name("slot.bundle")
}

impl BadUpdates<'_> {
    /// Builds the releases, configures the node and runs c(i), c(ii) and f(ii) in turn;
    /// panics (with the consoles) at the first check that fails.
    pub fn run(&self) {
        let root = &self.dir;
        if root.exists() {
            std::fs::remove_dir_all(root).unwrap();
        }
        std::fs::create_dir_all(root).unwrap();
        let (key_file, key) = run_signing_key(&repo());
        let board = || Board::load(self.board).unwrap();
        let arch = board().arch.as_str();

        // the releases: a good 1.0.0, a 2.0.0 whose machined exits, a 2.1.0 slot with no root
        let bad_machined = root.join("exit-at-start");
        build_static(
            arch,
            &repo().join("tests/testdata/exit-at-start.c"),
            &bad_machined,
        );
        let v1 = build_image(
            &root.join("v1"),
            board(),
            "1.0.0",
            &node_machined_for(arch),
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
            &board(),
            "2.1.0",
            &v1.output.root_hash,
            &key,
            &noroot,
        );
        let _ = std::fs::remove_file(&noroot_slot);
        // the image folder's own disk and slot copies are not needed past this point
        let _ = std::fs::remove_file(&exits.output.disk_image);

        let mut node = Node::new(&board(), &v1.output.disk_image, &root.join("node"));
        let qemu = node.configure(self.machine_id, &key.verifying_key());
        let status = node.boot_status();
        assert!(status.starts_with("booted A next A"), "{status}");

        // c(i): machined exits at start
        let tries = self.exit_tries.map(|t| t.to_string());
        let extra: Vec<&str> = match &tries {
            Some(t) => vec!["--tries", t],
            None => vec![],
        };
        node.upgrade(qemu, &bundle(&exits), &extra, "2.0.0");
        let qemu = node.falls_back_to_a(
            "exits",
            self.exit_tries.unwrap_or(3) as usize,
            &["[bad-machined] exiting at start", "Attempted to kill init"],
            "1.0.0",
        );

        // c(ii): the slot has no root filesystem
        node.upgrade(qemu, &noroot, &["--tries", "1"], "2.1.0");
        let qemu = node.falls_back_to_a("noroot", 1, &["[basalt] FATAL", "rootfs.img"], "1.0.0");

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
        let _qemu = node.falls_back_to_a(
            "flipped",
            1,
            &["is corrupted", "dm-verity device corrupted"],
            "1.0.0",
        );
    }
}
