//! Bad updates never brick a qemu-x86_64 node (issue 6, tests c and f(ii) on OVMF +
//! systemd-boot).
//!
//! The scenario of [`basalt_tests::bad_updates`] on `q35` with OVMF under TCG: c(i) a 2.0.0
//! whose machined (a static x86_64 `tests/testdata/exit-at-start.c`) exits at start, pushed
//! with `--tries 1` rather than the default 3 to save two ~45 s TCG boots (the counting
//! down over several tries is covered by the arm64-uefi test in `qemu_uefi.rs` and by
//! `qemu_rollback.rs`); c(ii) a slot without its root filesystem (`--tries 1`): the kernel
//! and initramfs still start from the ESP copies the activation made, and machined fails
//! at the root; f(ii) a staged good slot with a byte of its `rootfs.img` flipped on the disk,
//! stopped by dm-verity (`--tries 1`). Each time systemd-boot's counter in the loader entry's
//! file name (`basalt-b+1` → `+0-1`) runs out and it boots A by itself; the node is back
//! with STATE intact (mutual TLS, `version` names the configured machine) and BootStatus
//! `last-failed B`. Consoles: `$CARGO_TARGET_TMPDIR/qemu-x86-64-bad-updates/node/`.
//!
//! QEMU runs with `-no-reboot`: each reset ends QEMU and the test starts it again on the
//! same disk and UEFI vars (a power cycle; see `basalt_tests::rig`). Every boot is
//! bounded; every QEMU is killed when its guard drops, also when an assertion fails.

use basalt_tests::bad_updates::BadUpdates;
use std::path::Path;

#[test]
fn x86_64_bad_updates_fall_back_to_the_old_slot() {
    BadUpdates {
        board: "qemu-x86_64",
        dir: Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-x86-64-bad-updates"),
        machine_id: "x86-rollback-node",
        exit_tries: Some(1),
    }
    .run();
}
