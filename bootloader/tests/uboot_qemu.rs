//! The rendered `boot.scr` under the real Debian U-Boot (`qemu_arm64`, QEMU `virt`, TCG):
//! proves that the boot script implements A/B boot counting exactly as
//! [`boot_counting::boot_decision`] models it.
//!
//! The disk image is built by this crate's own code: a GPT disk (sfdisk) whose BOOT
//! partition (FAT, [`format_fat`] + [`FatEsp`]) holds `boot.scr` ([`build_boot_scr`] with the
//! [`BootScriptParams::qemu_arm64_virt`] preset) and `uboot.env` ([`UbootEnv`] over
//! [`EspFileStore`]); SYSTEM-A and SYSTEM-B are FAT partitions with `basalt/slot.env`
//! ([`render_slot_env`]) and a garbage kernel and initramfs, so `booti` refuses the kernel and
//! the script resets the board.
//!
//! Each QEMU run is one power-on: U-Boot's distro boot finds `boot.scr` on partition 1, the
//! script picks a slot, saves the counters with `fatwrite` and ends in `reset`, which ends
//! QEMU (`-no-reboot`). After every run the test reads `uboot.env` back from the image
//! (with [`FatEsp`] and, as the reference, `mcopy` + `fw_printenv`) and asserts that the slot
//! the script announced and the variables it saved are what `boot_decision` predicts from the
//! variables before the run. Every run has a hard timeout and QEMU is killed in a drop guard.
//!
//! Needs `qemu-system-aarch64`, Debian's `u-boot-qemu`, `sfdisk`, mtools, `fw_printenv`
//! and `fsck.vfat`: without them the tests fail and say to run `scripts/setup-host`.
//! Never uses KVM.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use basalt_bootloader::Slot;
use basalt_bootloader::boot_counting::{BootDecision, EnvVars, boot_decision};
use basalt_bootloader::env::{EnvLayout, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::script::{
    BootScriptParams, DEFAULT_IMAGE_NAME, EnvStorage, build_boot_scr, render_slot_env,
};
use basalt_bootloader::systemd_boot::{EspFs, FatEsp, format_fat};

const TEMPLATE: &str = include_str!("../../overlays/common/u-boot/boot.cmd");
/// Debian's U-Boot for QEMU `virt` (package `u-boot-qemu`).
const UBOOT_BIN: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";
const QEMU: &str = "qemu-system-aarch64";
/// Hard limit of one QEMU run (U-Boot reaches the script's `reset` in a few seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SCRIPT_EPOCH: u32 = 1_700_000_000;

const MIB: u64 = 1 << 20;
/// Partitions: BOOT (1), SYSTEM-A (2), SYSTEM-B (3), as in the qemu_arm64_virt preset.
const BOOT_START: u64 = MIB;
const BOOT_SIZE: u64 = 16 * MIB;
const SLOT_SIZE: u64 = 8 * MIB;
const SLOT_A_START: u64 = BOOT_START + BOOT_SIZE;
const SLOT_B_START: u64 = SLOT_A_START + SLOT_SIZE;
/// One MiB after the last partition for the backup GPT.
const DISK_SIZE: u64 = SLOT_B_START + SLOT_SIZE + MIB;

const ROOTHASH_A: &str = "aa0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";
const ROOTHASH_B: &str = "bb0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcd";

fn setup_hint(what: &str) -> String {
    format!("{what} not found: run scripts/setup-host")
}

fn in_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .any(|dir| dir.join(name).is_file())
}

/// `name` as a command; a missing tool fails the test with the setup hint.
fn tool(name: &str) -> Command {
    assert!(in_path(name), "{}", setup_hint(name));
    Command::new(name)
}

/// Fails with the setup hint unless QEMU and Debian's U-Boot are installed.
fn require_qemu_and_uboot() {
    assert!(in_path(QEMU), "{}", setup_hint(QEMU));
    assert!(
        Path::new(UBOOT_BIN).is_file(),
        "{}",
        setup_hint(&format!("{UBOOT_BIN} (package u-boot-qemu)"))
    );
}

fn vars(pairs: &[(&str, &str)]) -> EnvVars {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The preset this test boots, checked against the partition layout built here.
fn params() -> BootScriptParams {
    let params = BootScriptParams::qemu_arm64_virt();
    assert_eq!(
        (
            params.boot_partition,
            params.slot_a_partition,
            params.slot_b_partition
        ),
        (1, 2, 3),
        "the disk built here has BOOT, SYSTEM-A, SYSTEM-B as partitions 1, 2, 3"
    );
    params
}

/// The env file name and layout of the preset (`uboot.env`, 16 KiB, one copy).
fn env_file(params: &BootScriptParams) -> (String, EnvLayout) {
    match &params.env_storage {
        EnvStorage::FatFile { file_name, size } => {
            (file_name.clone(), EnvLayout::single(*size as usize))
        }
        other => panic!("the qemu_arm64_virt preset must keep the env in a file, not {other:?}"),
    }
}

/// Deterministic garbage (not an arm64 `Image`: `booti` rejects its magic).
fn garbage(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        })
        .collect()
}

/// A disk image built with the crate's own code.
struct Disk {
    path: PathBuf,
    env_file: String,
    layout: EnvLayout,
}

impl Disk {
    /// GPT with BOOT (boot.scr + uboot.env holding `env`), SYSTEM-A and SYSTEM-B (FAT, each
    /// with `basalt/slot.env` and a garbage kernel and initramfs).
    fn build(dir: &Path, env: &EnvVars) -> Disk {
        let params = params();
        let path = dir.join("disk.img");
        File::create(&path).unwrap().set_len(DISK_SIZE).unwrap();
        let layout = format!(
            "label: gpt\n\
             start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=BOOT\n\
             start={}, size={}, name=SYSTEM-A\n\
             start={}, size={}, name=SYSTEM-B\n",
            BOOT_START / 512,
            BOOT_SIZE / 512,
            SLOT_A_START / 512,
            SLOT_SIZE / 512,
            SLOT_B_START / 512,
            SLOT_SIZE / 512,
        );
        let mut sfdisk = tool("sfdisk")
            .arg("--quiet")
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(layout.as_bytes())
            .unwrap();
        assert!(sfdisk.wait().unwrap().success(), "sfdisk failed");

        format_fat(&path, BOOT_START, BOOT_SIZE, None, "BOOT").unwrap();
        let mut boot = FatEsp::open(&path, BOOT_START, BOOT_SIZE)
            .unwrap()
            .with_label("BOOT");
        let script = build_boot_scr(TEMPLATE, &params, DEFAULT_IMAGE_NAME, SCRIPT_EPOCH)
            .expect("the overlay template renders with the qemu_arm64_virt preset");
        boot.write_file_atomic("boot.scr", &script).unwrap();

        let (env_file, env_layout) = env_file(&params);
        let mut uboot_env = UbootEnv::load_or_default(
            EspFileStore::new(boot, env_file.clone()),
            env_layout,
            env.clone(),
        )
        .unwrap();
        uboot_env.save().unwrap();

        for (slot, start, roothash, seed) in [
            (Slot::A, SLOT_A_START, ROOTHASH_A, 1),
            (Slot::B, SLOT_B_START, ROOTHASH_B, 2),
        ] {
            let label = slot.partition_label();
            format_fat(&path, start, SLOT_SIZE, None, label).unwrap();
            let mut fs = FatEsp::open(&path, start, SLOT_SIZE)
                .unwrap()
                .with_label(label);
            fs.write_file_atomic(
                &params.slot_env_file,
                render_slot_env(roothash).unwrap().as_bytes(),
            )
            .unwrap();
            fs.write_file_atomic(&params.kernel, &garbage(64 << 10, seed))
                .unwrap();
            fs.write_file_atomic(&params.initrd, &garbage(4 << 10, seed + 10))
                .unwrap();
        }
        Disk {
            path,
            env_file,
            layout: env_layout,
        }
    }

    /// Flips one byte of `uboot.env`'s data area, as a power cut during U-Boot's in-place
    /// `fatwrite` would: the CRC no longer matches.
    fn tear_env(&self) {
        let mut boot = FatEsp::open(&self.path, BOOT_START, BOOT_SIZE).unwrap();
        let mut data = boot.read_file(&self.env_file).unwrap();
        data[4] ^= 0x01;
        boot.write_file_atomic(&self.env_file, &data).unwrap();
        let store = EspFileStore::new(boot, self.env_file.clone());
        assert!(
            UbootEnv::load(store, self.layout).is_err(),
            "the torn uboot.env must fail its CRC check"
        );
    }

    /// `uboot.env` as this crate reads it.
    fn read_env(&self) -> EnvVars {
        let store = EspFileStore::new(
            FatEsp::open(&self.path, BOOT_START, BOOT_SIZE).unwrap(),
            self.env_file.clone(),
        );
        match UbootEnv::load(store, self.layout) {
            Ok(env) => env.vars().clone(),
            Err(e) => panic!("uboot.env unreadable after U-Boot wrote it: {e}"),
        }
    }

    /// `uboot.env` as the reference tools read it: copied out by mtools, printed by
    /// libubootenv's `fw_printenv`.
    fn read_env_fw_printenv(&self, dir: &Path) -> EnvVars {
        let out = dir.join("uboot.env.copy");
        let _ = std::fs::remove_file(&out);
        let status = tool("mcopy")
            .arg("-n")
            .arg("-i")
            .arg(format!("{}@@{BOOT_START}", self.path.display()))
            .arg(format!("::{}", self.env_file))
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "mcopy of {} failed", self.env_file);
        let config = dir.join("fw_env.config");
        std::fs::write(
            &config,
            format!("{} 0x0 {:#x}\n", out.display(), self.layout.size),
        )
        .unwrap();
        let output = tool("fw_printenv").arg("-c").arg(&config).output().unwrap();
        assert!(
            output.status.success(),
            "fw_printenv failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let (k, v) = line
                    .split_once('=')
                    .unwrap_or_else(|| panic!("fw_printenv line without '=': {line:?}"));
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    /// `fsck.vfat -n` of BOOT: U-Boot's `fatwrite` must leave a clean file system.
    fn check_boot_fs(&self, dir: &Path) {
        let data = std::fs::read(&self.path).unwrap();
        let part = dir.join("boot.part");
        std::fs::write(
            &part,
            &data[BOOT_START as usize..(BOOT_START + BOOT_SIZE) as usize],
        )
        .unwrap();
        let check = tool("fsck.vfat").arg("-n").arg(&part).output().unwrap();
        assert!(
            check.status.success(),
            "fsck.vfat of BOOT after the U-Boot runs: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

/// Kills QEMU when dropped, also when the test panics.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One power-on: the serial console, how QEMU ended, how long it took.
struct Run {
    console: String,
    status: ExitStatus,
    elapsed: Duration,
}

/// Boots `disk` once: U-Boot under TCG, serial console to a file, `-no-reboot` so the
/// script's `reset` ends QEMU. Panics with the console after [`RUN_TIMEOUT`], or as soon as
/// U-Boot falls back to its prompt (the script did not end in a reset).
fn power_on(disk: &Disk, dir: &Path, run: usize) -> Run {
    let log = dir.join(format!("console-{run}.log"));
    let started = Instant::now();
    let child = Command::new(QEMU)
        .args(["-M", "virt", "-cpu", "cortex-a57", "-m", "512", "-smp", "1"])
        .args(["-accel", "tcg", "-display", "none", "-monitor", "none"])
        .args(["-nic", "none", "-no-reboot", "-bios", UBOOT_BIN])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!(
            "if=none,file={},format=raw,id=disk",
            disk.path.display()
        ))
        .args(["-device", "virtio-blk-device,drive=disk"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", setup_hint(QEMU)));
    let mut qemu = QemuGuard(child);
    let console = || std::fs::read_to_string(&log).unwrap_or_default();
    loop {
        if let Some(status) = qemu.0.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut err) = qemu.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
            }
            assert!(
                status.success(),
                "run {run}: QEMU failed ({status}): {stderr}\nconsole:\n{}",
                console()
            );
            return Run {
                console: console(),
                status,
                elapsed: started.elapsed(),
            };
        }
        let text = console();
        assert!(
            !text.contains("\n=> "),
            "run {run}: U-Boot fell back to its prompt, the boot script did not reset:\n{text}"
        );
        assert!(
            started.elapsed() < RUN_TIMEOUT,
            "run {run}: no reset within {RUN_TIMEOUT:?}; console:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one power-on did, as the script announced it on the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// "Basalt: booting slot X ..."
    Boot(Slot),
    /// "Basalt: no slot has boot attempts left ..." (counters reset, then `reset`).
    ResetCounters,
}

fn decision_outcome(decision: &BootDecision) -> (Outcome, &EnvVars) {
    match decision {
        BootDecision::Boot { slot, vars } => (Outcome::Boot(*slot), vars),
        BootDecision::ResetCounters { vars } => (Outcome::ResetCounters, vars),
    }
}

/// Parses the script's console lines of one run.
fn observed_outcome(run: usize, console: &str) -> Outcome {
    let booting: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Basalt: booting slot "))
        .collect();
    let no_slot = console.contains("Basalt: no slot has boot attempts left");
    match (booting.as_slice(), no_slot) {
        ([line], false) => {
            let letter = line.split_whitespace().next().unwrap_or_default();
            Outcome::Boot(
                letter
                    .parse()
                    .unwrap_or_else(|_| panic!("run {run}: bad slot in {line:?}:\n{console}")),
            )
        }
        ([], true) => Outcome::ResetCounters,
        _ => panic!(
            "run {run}: expected exactly one 'Basalt: booting slot' line or the \
             'no slot has boot attempts left' message:\n{console}"
        ),
    }
}

/// What `uboot.env` holds before the first power-on.
enum StoredEnv {
    /// A valid env with these variables.
    Valid(EnvVars),
    /// These variables, then torn (bad CRC): the script must ignore the file.
    Torn(EnvVars),
}

/// Power-cycles a disk with `stored` through `expected.len()` runs under real U-Boot and
/// checks every run against `boot_decision` and against `expected`.
fn boot_sequence(name: &str, stored: StoredEnv, expected: &[Outcome]) {
    require_qemu_and_uboot();
    let (written, torn) = match stored {
        StoredEnv::Valid(vars) => (vars, false),
        StoredEnv::Torn(vars) => (vars, true),
    };
    // What the script starts from: a torn file is not imported, nothing is.
    let initial = if torn {
        EnvVars::new()
    } else {
        written.clone()
    };

    // The model first: a wrong expectation is a test bug, not a script bug.
    let mut model = initial.clone();
    let predicted: Vec<Outcome> = expected
        .iter()
        .map(|_| {
            let decision = boot_decision(&model);
            let (outcome, next) = decision_outcome(&decision);
            model = next.clone();
            outcome
        })
        .collect();
    assert_eq!(
        predicted, expected,
        "{name}: boot_decision does not produce the expected sequence"
    );

    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::build(dir.path(), &written);
    assert_eq!(disk.read_env(), written, "{name}: env as built");
    if torn {
        disk.tear_env();
    }

    let mut env = initial;
    let mut timings = Vec::new();
    for (index, want) in expected.iter().enumerate() {
        let run = index + 1;
        let decision = boot_decision(&env);
        let (predicted, predicted_vars) = decision_outcome(&decision);
        let result = power_on(&disk, dir.path(), run);
        timings.push(result.elapsed);
        eprintln!(
            "{name}: run {run}: {:?} in {:.1} s",
            observed_outcome(run, &result.console),
            result.elapsed.as_secs_f64()
        );
        let console = &result.console;

        assert!(
            console.contains("Found U-Boot script /boot.scr"),
            "{name} run {run}: distro boot did not find boot.scr on BOOT:\n{console}"
        );
        assert!(
            console.contains("resetting ..."),
            "{name} run {run}: QEMU ended ({}) without U-Boot's reset:\n{console}",
            result.status
        );
        let outcome = observed_outcome(run, console);
        assert_eq!(
            outcome, predicted,
            "{name} run {run}: the script chose {outcome:?}, boot_decision predicts \
             {predicted:?} from {env:?}\nconsole:\n{console}"
        );
        assert_eq!(outcome, *want, "{name} run {run}");

        match outcome {
            Outcome::Boot(slot) => {
                let counters = format!(
                    "attempts left A={} B={}",
                    predicted_vars["BOOT_A_LEFT"], predicted_vars["BOOT_B_LEFT"]
                );
                assert!(
                    console.contains(&counters),
                    "{name} run {run}: expected '{counters}' on the console:\n{console}"
                );
                // The slot's files were read (root hash found) and the garbage kernel refused.
                assert!(
                    console.contains(&format!("Basalt: booti failed for slot {slot}")),
                    "{name} run {run}: expected booti of slot {slot} to fail:\n{console}"
                );
                assert!(
                    !console.contains("has no basalt_roothash"),
                    "{name} run {run}: slot.env of {slot} was not imported:\n{console}"
                );
            }
            Outcome::ResetCounters => {}
        }

        let saved = disk.read_env();
        assert_eq!(
            &saved, predicted_vars,
            "{name} run {run}: uboot.env saved by U-Boot differs from boot_decision's \
             prediction (before: {env:?})\nconsole:\n{console}"
        );
        let reference = disk.read_env_fw_printenv(dir.path());
        assert_eq!(
            reference, saved,
            "{name} run {run}: fw_printenv reads uboot.env differently from basalt-bootloader"
        );
        env = saved;
    }
    disk.check_boot_fs(dir.path());
    let total: Duration = timings.iter().sum();
    eprintln!(
        "{name}: {} runs in {:.1} s ({})",
        timings.len(),
        total.as_secs_f64(),
        timings
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" s, ")
            + " s"
    );
}

/// An update to B on trial with 2 tries that never comes up: B, B, then the fallback to A
/// until A runs out too, then both counters are reset and the order is walked again.
#[test]
fn trial_slot_falls_back_and_counters_reset_under_real_u_boot() {
    use Outcome::{Boot, ResetCounters};
    boot_sequence(
        "trial B",
        StoredEnv::Valid(vars(&[
            ("BOOT_ORDER", "B A"),
            ("BOOT_A_LEFT", "3"),
            ("BOOT_B_LEFT", "2"),
            ("BASALT_TRIAL", "B"),
        ])),
        // After the reset both slots have 3 tries again and B is first in BOOT_ORDER.
        &[
            Boot(Slot::B),
            Boot(Slot::B),
            Boot(Slot::A),
            Boot(Slot::A),
            Boot(Slot::A),
            ResetCounters,
            Boot(Slot::B),
        ],
    );
}

/// A slot outside `BOOT_ORDER` is never booted, even with tries left and after the reset of
/// all counters (B's failed trial was recorded and B left the order).
#[test]
fn slot_outside_boot_order_is_never_booted_under_real_u_boot() {
    use Outcome::{Boot, ResetCounters};
    boot_sequence(
        "order A only",
        StoredEnv::Valid(vars(&[
            ("BOOT_ORDER", "A"),
            ("BOOT_A_LEFT", "1"),
            ("BOOT_B_LEFT", "3"),
            ("BASALT_LAST_FAILED", "B"),
        ])),
        &[Boot(Slot::A), ResetCounters, Boot(Slot::A)],
    );
}

/// A `uboot.env` with a bad CRC (power cut during `fatwrite`) is ignored: the defaults
/// (`"A B"`, 3 tries each) apply, and the file U-Boot writes back is valid again.
#[test]
fn torn_env_file_falls_back_to_defaults_under_real_u_boot() {
    use Outcome::Boot;
    boot_sequence(
        "torn env",
        StoredEnv::Torn(vars(&[
            ("BOOT_ORDER", "B"),
            ("BOOT_A_LEFT", "0"),
            ("BOOT_B_LEFT", "3"),
        ])),
        &[Boot(Slot::A), Boot(Slot::A)],
    );
}
