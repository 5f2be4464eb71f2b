//! Bad updates never brick a qemu-arm64 node (issue 6, tests c and f(ii), node level).
//!
//! The scenario of [`basalt_tests::bad_updates`] on the U-Boot board: c(i) a 2.0.0 whose
//! machined exits at start, with the node's default 3 tries (U-Boot's boot counting spends
//! all three before it boots A again); c(ii) a slot without its root filesystem
//! (`--tries 1`); f(ii) a staged good slot with a byte of its `rootfs.img` flipped on the
//! disk, stopped by dm-verity (`--tries 1`). After each the node is back on slot A by itself,
//! STATE intact, BootStatus `last-failed B`. The consoles of every attempt are kept in
//! `$CARGO_TARGET_TMPDIR/qemu-rollback/node/boot-N-<tag>.console.log`.
//!
//! QEMU runs with `-no-reboot`: each reset ends QEMU and the test starts it again on the
//! same disk (a power cycle; see `basalt_tests::rig`). Every boot is bounded; every QEMU is
//! killed when its guard drops, also when an assertion fails.

use basalt_tests::bad_updates::BadUpdates;
use std::path::Path;

#[test]
fn bad_updates_fall_back_to_the_old_slot() {
    BadUpdates {
        board: "qemu-arm64",
        dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-rollback"),
        machine_id: "rollback-node",
        exit_tries: None,
    }
    .run();
}
