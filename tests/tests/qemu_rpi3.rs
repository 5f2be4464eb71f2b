//! The `rpi3` image under `qemu-system-aarch64 -M raspi3b` (issue 6, test g): Debian's real
//! Pi U-Boot (`rpi_arm64`, from the image's BOOT partition) reads `uboot.env` from the SD
//! card's FAT partition and runs the generated `boot.scr`.
//!
//! One image is built (basalt-image, with the node machined) and copied as an SD card padded
//! to 2 GiB (QEMU's SD model wants a power of two). Three power-ons, each one QEMU run with
//! `-no-reboot` and a timeout, killed when its guard drops:
//!
//! 1. **Slot selection and boot counting** on the fresh card: U-Boot finds no `uboot.env`,
//!    runs boot.scr with its default env; the script picks slot A (`attempts left A=2 B=3`),
//!    `saveenv` writes `uboot.env`, and U-Boot loads A's slot env, device tree and kernel
//!    (the console shows the kernel's exact size read). QEMU is stopped there. The env read
//!    back with the reference `fw_printenv` (the file copied off BOOT by `mcopy`) shows
//!    `BOOT_A_LEFT=2`, `BOOT_B_LEFT=3`.
//! 2. **A bad trial**: slot A's image is written into SYSTEM-B and its kernel (`Image`)
//!    deleted; B is activated on trial with 1 try by basalt-bootloader's U-Boot backend on
//!    the card's BOOT (what `basalt-boot --disk sd.img set-active b --tries 1` does). U-Boot
//!    boots B (`attempts left A=2 B=0`), fails to load its kernel and resets: QEMU exits;
//!    `fw_printenv` shows `BOOT_B_LEFT=0`.
//! 3. **Fallback, and the whole boot**: at the next power-on U-Boot by itself boots A
//!    (`attempts left A=1 B=0`); Debian's kernel starts with `console=ttyS1` (the
//!    mini-UART), machined as PID 1 finds the partitions by number (MBR), maps A's root
//!    through dm-verity and reads it whole, mounts STATE, DATA and BOOT, serves the API in
//!    maintenance mode, and its health check commits A and records B as the last failed
//!    trial; `fw_printenv` then shows `BOOT_ORDER=A`, `BOOT_A_LEFT=3`,
//!    `BASALT_LAST_FAILED=B` and no trial.
//!
//! Measured in QEMU 10.0 TCG on a 2-core host: the emulated SD card moves 0.5–0.8 MiB/s to
//! U-Boot, so the 33 MiB kernel and 6 MiB initramfs take 50–80 s to load, and machined's
//! full verity read of the 82 MiB root takes ~70 s; a whole boot is ~3 minutes. The API is
//! not reached from the host: raspi3b has no NIC QEMU can forward (its USB network is not
//! modelled as one here). Consoles are kept in
//! `$CARGO_TARGET_TMPDIR/qemu-rpi3/run/boot-N-<tag>.console.log` (`.serial0`: the PL011,
//! which gets only U-Boot's first banner lines).

use basalt_boards::Board;
use basalt_bootloader::env::{EnvLayout, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::systemd_boot::FatEsp;
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_bootloader::{Bootloader, Slot};
use basalt_tests::slot_tools::{
    PartitionRef, open_fat, partition_extent, sd_card_copy, write_slot,
};
use basalt_tests::{Ending, Qemu, build_image, node_machined, require_qemu_arm64};
use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Power-on to the boot script's choice: U-Boot's start, USB scan, 2 s autoboot delay.
const UBOOT_TIMEOUT: Duration = Duration::from_secs(90);
/// Loading kernel (~33 MiB) and initramfs from the emulated SD card (~80 s measured).
const LOAD_TIMEOUT: Duration = Duration::from_secs(240);
/// From the kernel's start to `/init` (~7 s guest time measured).
const KERNEL_TIMEOUT: Duration = Duration::from_secs(120);
/// Each of machined's stages; the longest is the full read of the verity-protected root
/// (82 MiB through the emulated SD card: ~70 s measured).
const MACHINED_TIMEOUT: Duration = Duration::from_secs(240);
/// A failed slot: U-Boot's reset ends QEMU (`-no-reboot`).
const RESET_TIMEOUT: Duration = Duration::from_secs(60);

/// BOOT, SYSTEM-A and SYSTEM-B on the Pi's MBR card (no labels: by number).
const BOOT: u32 = 1;
const SYSTEM_A: u32 = 2;
const SYSTEM_B: u32 = 3;
/// The env U-Boot keeps on BOOT (rpi3.toml `[uboot] env`).
const ENV_FILE: &str = "uboot.env";
const ENV_SIZE: usize = 0x4000;

/// `uboot.env` as the reference tools read it: copied off BOOT by `mcopy`, printed by
/// libubootenv's `fw_printenv` with a `fw_env.config` naming the copy.
fn fw_printenv(sd: &Path, dir: &Path) -> BTreeMap<String, String> {
    let (start, _) = partition_extent(sd, PartitionRef::Number(BOOT));
    let copy = dir.join("uboot.env.copy");
    let _ = std::fs::remove_file(&copy);
    let out = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{start}", sd.display()))
        .arg(format!("::{ENV_FILE}"))
        .arg(&copy)
        .output()
        .expect("mcopy runs (mtools: scripts/setup-host)");
    assert!(
        out.status.success(),
        "mcopy of {ENV_FILE} from BOOT of {}: {}",
        sd.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("fw_env.config");
    std::fs::write(&config, format!("{} 0x0 {ENV_SIZE:#x}\n", copy.display())).unwrap();
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(&config)
        .output()
        .expect("fw_printenv runs (libubootenv-tool: scripts/setup-host)");
    assert!(
        out.status.success(),
        "fw_printenv: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("fw_printenv prints UTF-8")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Asserts `vars` hold each of `expected`.
fn assert_env(vars: &BTreeMap<String, String>, expected: &[(&str, &str)], when: &str) {
    for (k, v) in expected {
        assert_eq!(
            vars.get(*k).map(String::as_str),
            Some(*v),
            "{when}: {k} in uboot.env (fw_printenv: {vars:?})"
        );
    }
}

/// Activates `slot` on trial with `tries` attempts on the card's BOOT, as `basalt-boot
/// --disk` does (the same library backend machined uses on a node).
fn activate(sd: &Path, slot: Slot, tries: u32) {
    let (start, size) = partition_extent(sd, PartitionRef::Number(BOOT));
    let esp = FatEsp::open(sd, start, size).expect("BOOT is FAT");
    let env = UbootEnv::load(
        EspFileStore::new(esp, ENV_FILE),
        EnvLayout::single(ENV_SIZE),
    )
    .expect("uboot.env written by U-Boot's saveenv loads");
    UbootBootloader::new(env, None)
        .activate(slot, tries)
        .expect("activate");
}

/// Waits until `count` reads (`N bytes read in`) follow the last `after` on the console.
fn reads_after(qemu: &mut Qemu, after: &str, count: usize, timeout: Duration) {
    let done = |c: &str| {
        c.rsplit_once(after)
            .is_some_and(|(_, rest)| rest.matches(" bytes read in ").count() >= count)
    };
    match qemu.wait(timeout, done) {
        Some(Ending::Condition(_)) => {}
        other => panic!(
            "not {count} reads after {after:?} ({other:?} after {timeout:?}):\n{}",
            qemu.console()
        ),
    }
}

/// Starts QEMU for power-on `n`.
fn power_on(board: &Board, sd: &Path, dir: &Path, n: u32, tag: &str) -> Qemu {
    let log = dir.join(format!("boot-{n}-{tag}.console.log"));
    Qemu::boot_raspi(board, sd, dir, &log)
}

#[test]
fn rpi3_uboot_selects_counts_and_falls_back() {
    require_qemu_arm64();
    let start = Instant::now();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-rpi3");
    let board = Board::load("rpi3").unwrap();
    let fx = build_image(
        &root.join("v1"),
        board.clone(),
        "1.0.0",
        &node_machined(),
        None,
    );
    let dir: PathBuf = root.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    let sd = dir.join("sd.img");
    sd_card_copy(&fx.output.disk_image, &sd);
    let kernel = &board.kernel.slot_file;

    // 1. fresh card: slot A chosen and counted, its kernel loaded from SYSTEM-A
    let kernel_len = {
        let a = open_fat(&sd, PartitionRef::Number(SYSTEM_A));
        let len = a
            .root_dir()
            .open_file(kernel)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .unwrap_or_else(|e| panic!("{kernel} in SYSTEM-A: {e}"));
        a.unmount().unwrap();
        len
    };
    let t = Instant::now();
    let mut qemu = power_on(&board, &sd, &dir, 1, "fresh");
    qemu.expect("Found U-Boot script /boot.scr", UBOOT_TIMEOUT);
    qemu.expect(
        "Basalt: booting slot A (mmc 0:2); attempts left A=2 B=3",
        Duration::from_secs(30),
    );
    // slot.env (the root hash), the device tree, then the kernel
    reads_after(&mut qemu, "Basalt: booting slot A", 3, LOAD_TIMEOUT);
    let console = qemu.console();
    assert!(
        console.contains(&format!("{kernel_len} bytes read in ")),
        "boot 1 did not load A's {kernel_len}-byte kernel:\n{console}"
    );
    assert!(
        console.contains("Saving Environment to FAT... OK"),
        "saveenv did not write uboot.env:\n{console}"
    );
    eprintln!(
        "boot 1: U-Boot chose A and loaded its kernel in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    drop(qemu);
    let env = fw_printenv(&sd, &dir);
    assert_env(
        &env,
        &[
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "2"),
            ("BOOT_B_LEFT", "3"),
        ],
        "after boot 1",
    );

    // 2. slot B on trial with 1 try, its kernel missing: U-Boot tries B and resets
    write_slot(&sd, PartitionRef::Number(SYSTEM_B), &fx.output.slot_image);
    let b = open_fat(&sd, PartitionRef::Number(SYSTEM_B));
    b.root_dir()
        .remove(kernel)
        .unwrap_or_else(|e| panic!("removing {kernel} from SYSTEM-B: {e}"));
    b.unmount().unwrap();
    activate(&sd, Slot::B, 1);
    let env = fw_printenv(&sd, &dir);
    assert_env(
        &env,
        &[
            ("BOOT_ORDER", "B A"),
            ("BOOT_B_LEFT", "1"),
            ("BASALT_TRIAL", "B"),
        ],
        "after activating B",
    );
    let mut qemu = power_on(&board, &sd, &dir, 2, "bad-b");
    qemu.expect(
        "Basalt: booting slot B (mmc 0:3); attempts left A=2 B=0",
        UBOOT_TIMEOUT,
    );
    qemu.expect_exit(RESET_TIMEOUT);
    let console = qemu.console();
    assert!(
        !console.contains("Starting kernel"),
        "slot B without a kernel started one:\n{console}"
    );
    drop(qemu);
    let env = fw_printenv(&sd, &dir);
    assert_env(
        &env,
        &[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "2"),
            ("BOOT_B_LEFT", "0"),
        ],
        "after B's failed attempt",
    );

    // 3. U-Boot falls back to A by itself; the kernel boots, machined (PID 1) runs its
    // stages, commits A and records B as the failed trial
    let t = Instant::now();
    let mut qemu = power_on(&board, &sd, &dir, 3, "fallback");
    qemu.expect(
        "Basalt: booting slot A (mmc 0:2); attempts left A=1 B=0",
        UBOOT_TIMEOUT,
    );
    qemu.expect("Starting kernel", LOAD_TIMEOUT);
    let kernel_at = t.elapsed();
    qemu.expect("Run /init as init process", KERNEL_TIMEOUT);
    let stages = [
        "[basalt] stage: partitions",
        "BOOT=mmcblk0p1 SYSTEM-A=mmcblk0p2",
        &format!(
            "[basalt] slot A with verity root hash {}",
            fx.output.root_hash
        ),
        "[basalt] stage: verity",
        "every block matches the root hash",
        "[basalt] stage: state",
        "[basalt] booted slot A",
        "machined: boot backend: u-boot env /boot/uboot.env",
        "machined: API listening on",
    ];
    for stage in stages {
        qemu.expect(stage, MACHINED_TIMEOUT);
    }
    qemu.expect(
        "health checks passed: slot A committed; slot B recorded as the last failed trial",
        Duration::from_secs(60),
    );
    let console = qemu.console();
    assert!(
        !console.contains("booting slot B"),
        "boot 3 tried B again:\n{console}"
    );
    assert!(
        console.contains(&format!("console={} basalt.slot=A", board.boot.console)),
        "the kernel command line lacks the board's console and slot A:\n{console}"
    );
    eprintln!(
        "boot 3: kernel started {:.0} s after power-on, A committed after {:.0} s",
        kernel_at.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    drop(qemu);
    let env = fw_printenv(&sd, &dir);
    assert_env(
        &env,
        &[
            ("BOOT_ORDER", "A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "0"),
            ("BASALT_LAST_FAILED", "B"),
        ],
        "after the fallback",
    );
    assert!(
        env.get("BASALT_TRIAL").is_none_or(String::is_empty),
        "B is still on trial: {env:?}"
    );
    eprintln!(
        "qemu_rpi3: build and three power-ons in {:.0} s",
        start.elapsed().as_secs_f64()
    );
}
