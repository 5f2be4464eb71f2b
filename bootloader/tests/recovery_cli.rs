//! The `basalt-boot` recovery tool on a GPT disk image whose BOOT partition (FAT, built
//! here) holds `uboot.env`: changes are made without mounting, then read back by the real
//! `mcopy` (mtools) + `fw_printenv` (libubootenv) to check they are what U-Boot will see.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use basalt_bootloader::boot_counting::initial_vars;
use basalt_bootloader::env::{EnvLayout, EnvUpdate, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::systemd_boot::{FatEsp, format_fat};

const BOOT_START: u64 = 2048 * 512;
const BOOT_SIZE: u64 = 32 << 20;

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{name} not found in PATH: run scripts/setup-host");
    Command::new(name)
}

fn make_disk(dir: &Path) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = tool("sfdisk")
        .arg("--quiet")
        .arg(&img)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=BOOT\nsize=16384, name=SYSTEM-A\nsize=16384, name=SYSTEM-B\n")
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    format_fat(&img, BOOT_START, BOOT_SIZE, None, "BOOT").unwrap();
    let store = EspFileStore::new(
        FatEsp::open(&img, BOOT_START, BOOT_SIZE).unwrap(),
        "uboot.env",
    );
    let mut env =
        UbootEnv::load_or_default(store, EnvLayout::single(0x4000), initial_vars()).unwrap();
    env.save().unwrap();
    // A node that was upgraded before: both slots bootable, A first.
    env.apply(
        &EnvUpdate::new()
            .set("BOOT_ORDER", "A B")
            .set("BOOT_B_LEFT", "3"),
    )
    .unwrap();
    img
}

fn basalt_boot(img: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_basalt-boot"))
        .arg("--disk")
        .arg(img)
        .args(args)
        .output()
        .unwrap()
}

/// The env as U-Boot will read it: copied out by mtools, printed by fw_printenv.
fn fw_printenv(dir: &Path, img: &Path) -> String {
    let out = dir.join("uboot.env");
    let _ = std::fs::remove_file(&out);
    let status = tool("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{BOOT_START}", img.display()))
        .arg("::uboot.env")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "mcopy failed");
    let config = dir.join("fw_env.config");
    std::fs::write(&config, format!("{} 0x0 0x4000\n", out.display())).unwrap();
    let output = tool("fw_printenv").arg("-c").arg(&config).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn status_set_active_mark_bad_on_an_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = make_disk(dir.path());

    let out = basalt_boot(&img, &["--json", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["order"], serde_json::json!(["A", "B"]));
    assert_eq!(status["next_boot"], "A");

    let out = basalt_boot(&img, &["set-active", "b", "--tries", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = fw_printenv(dir.path(), &img);
    assert!(env.contains("BOOT_ORDER=B A\n"), "{env}");
    assert!(env.contains("BOOT_B_LEFT=2\n"), "{env}");
    assert!(env.contains("BASALT_TRIAL=B\n"), "{env}");

    let out = basalt_boot(&img, &["mark-bad", "B"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = fw_printenv(dir.path(), &img);
    assert!(env.contains("BOOT_ORDER=A\n"), "{env}");

    // The last bootable slot cannot be marked bad: clear error, nothing written.
    let out = basalt_boot(&img, &["mark-bad", "A"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no bootable slot"), "{stderr}");
    assert_eq!(fw_printenv(dir.path(), &img), env);

    // The BOOT filesystem is still clean for the reference checker.
    let data = std::fs::read(&img).unwrap();
    let part = dir.path().join("boot.part");
    std::fs::write(
        &part,
        &data[BOOT_START as usize..(BOOT_START + BOOT_SIZE) as usize],
    )
    .unwrap();
    let check = tool("fsck.vfat").arg("-n").arg(&part).output().unwrap();
    assert!(
        check.status.success(),
        "fsck.vfat: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn disk_without_basalt_boot_partition_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("blank.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = basalt_boot(&img, &["status"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("blank.img"), "{stderr}");
}
