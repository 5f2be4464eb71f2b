//! Builds the Raspberry Pi 3, Raspberry Pi 4 and Jetson Nano images from the pinned inputs
//! and checks them with tools nobody here wrote: `sfdisk -J` (rpi3 MBR, the others GPT),
//! `fsck.vfat -n` on BOOT, `mkimage -l` on boot.scr (the Pi's `uboot.env` is U-Boot's to
//! create, see [`check_pi_env_absent`]);
//! the firmware, U-Boot and device trees on BOOT; `config.txt` from `overlays/<board>/`; and
//! a user overlay (`--overlay`) adding a file and appending a config.txt line, reproducibly.
//! Broken overlays fail before anything is built, naming the file, with no output.
//!
//! Needs the board inputs in cache/debs (scripts/setup-host). No machined binary: a
//! stand-in `/init` (the structure is checked here, booting in tests/).

mod common;

use std::path::{Path, PathBuf};

use basalt_image::compose::overlay::UserOverlays;
use basalt_image::compose::{BuildOutput, build_overlaid};
use common::{build_board, extract, mcopy, mls, mread, repo, request, run};

/// `sfdisk -J` of the disk: (table label, partition count).
fn table_of(disk: &Path) -> (String, usize) {
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["-J", disk.to_str().unwrap()])).unwrap();
    let t = &json["partitiontable"];
    (
        t["label"].as_str().unwrap().to_string(),
        t["partitions"].as_array().unwrap().len(),
    )
}

/// BOOT of `out` as its own file, checked by `fsck.vfat -n`.
fn boot_fat(dir: &Path, out: &BuildOutput, name: &str) -> PathBuf {
    // by the plan: an MBR has no partition names to look BOOT up by
    let boot = out.plan.by_label("BOOT").unwrap();
    let fat = dir.join(format!("{name}-boot.fat"));
    extract(&out.disk_image, boot.start, boot.request.size, &fat);
    run("fsck.vfat", &["-n", fat.to_str().unwrap()]);
    fat
}

/// boot.scr on BOOT is a U-Boot script image (`mkimage -l`).
fn check_boot_scr(dir: &Path, fat: &Path) {
    let scr = dir.join("boot.scr");
    mcopy(fat, "boot.scr", &scr);
    let listing = run("mkimage", &["-l", scr.to_str().unwrap()]);
    assert!(listing.contains("Script"), "{listing}");
    std::fs::remove_file(scr).unwrap();
}

/// The Pi's U-Boot manages uboot.env itself (board file: `managed_by = "u-boot"`): a fresh
/// card has none, because an env file replaces U-Boot's whole default env (bootcmd
/// included); the boot script sets the A/B defaults and its first `saveenv` creates it.
fn check_pi_env_absent(fat: &Path) {
    let files = mls(fat, "");
    assert!(!files.iter().any(|f| f == "uboot.env"), "{files:?}");
}

fn assert_has(files: &[String], wanted: &[&str]) {
    for w in wanted {
        assert!(
            files.iter().any(|f| f == w),
            "{w} missing on BOOT: {files:?}"
        );
    }
}

fn board_config(board: &str) -> String {
    std::fs::read_to_string(repo().join(format!("overlays/{board}/config.txt"))).unwrap()
}

#[test]
fn rpi3_image_is_mbr_with_pi_firmware_uboot_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_board(dir.path(), "rpi3", "rpi3", &UserOverlays::default());
    // Built without the container runtime: the manifest lists no extension.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.disk_image.with_file_name("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["extensions"], serde_json::json!([]));
    assert!(out.extensions.is_empty());
    // MBR: 5 partitions = 3 primary + extended + logical ones, as sfdisk lists them.
    let (label, count) = table_of(&out.disk_image);
    assert_eq!(label, "dos", "rpi3 board file says mbr");
    assert!(count >= 5, "{count} partitions");
    let fat = boot_fat(dir.path(), &out, "rpi3");
    check_boot_scr(dir.path(), &fat);
    check_pi_env_absent(&fat);
    let files = mls(&fat, "");
    assert_has(
        &files,
        &[
            "bootcode.bin",
            "start.elf",
            "fixup.dat",
            "u-boot.bin",
            "bcm2837-rpi-3-b.dtb",
            "bcm2837-rpi-3-b-plus.dtb",
            "config.txt",
            "boot.scr",
        ],
    );
    let uboot = mread(dir.path(), &fat, "u-boot.bin");
    assert!(uboot.windows(7).any(|w| w == b"U-Boot "), "u-boot.bin");
    let dtb = mread(dir.path(), &fat, "bcm2837-rpi-3-b.dtb");
    assert_eq!(&dtb[..4], &[0xd0, 0x0d, 0xfe, 0xed], "DTB magic");
    let config = String::from_utf8(mread(dir.path(), &fat, "config.txt")).unwrap();
    assert_eq!(config, board_config("rpi3"));
}

#[test]
fn rpi4_image_with_user_overlay_is_checked_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let user = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(d.join("extra")).unwrap();
        std::fs::write(d.join("config.txt"), "dtparam=audio=on\n").unwrap();
        std::fs::write(d.join("extra/hello.txt"), "from an overlay\n").unwrap();
        UserOverlays {
            dirs: vec![d],
            allow_replace: Vec::new(),
        }
    };
    let first = build_board(dir.path(), "rpi4", "rpi4-a", &user("overlay-a"));
    let (label, count) = table_of(&first.disk_image);
    assert_eq!((label.as_str(), count), ("gpt", 5));
    let fat = boot_fat(dir.path(), &first, "rpi4");
    check_boot_scr(dir.path(), &fat);
    check_pi_env_absent(&fat);
    let files = mls(&fat, "");
    assert_has(
        &files,
        &[
            "start4.elf",
            "fixup4.dat",
            "u-boot.bin",
            "bcm2711-rpi-4-b.dtb",
            "bcm2711-rpi-400.dtb",
            "bcm2711-rpi-cm4-io.dtb",
            "config.txt",
        ],
    );
    let config = String::from_utf8(mread(dir.path(), &fat, "config.txt")).unwrap();
    assert_eq!(config, board_config("rpi4") + "dtparam=audio=on\n");
    assert_eq!(
        mread(dir.path(), &fat, "extra/hello.txt"),
        b"from an overlay\n"
    );

    // The same overlay content in another folder, written later (other mtimes): the
    // artefacts are byte-identical.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build_board(dir.path(), "rpi4", "rpi4-b", &user("overlay-b"));
    for name in ["disk.img", "disk.img.bmap", "slot.bundle", "manifest.json"] {
        let a = std::fs::read(first.disk_image.parent().unwrap().join(name)).unwrap();
        let b = std::fs::read(second.disk_image.parent().unwrap().join(name)).unwrap();
        assert!(
            a == b,
            "{name} differs between two rpi4 builds with overlays"
        );
    }
}

#[test]
fn jetson_nano_image_has_boot_script_and_no_uboot_on_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_board(
        dir.path(),
        "jetson-nano",
        "jetson",
        &UserOverlays::default(),
    );
    let (label, count) = table_of(&out.disk_image);
    assert_eq!((label.as_str(), count), ("gpt", 5));
    let fat = boot_fat(dir.path(), &out, "jetson");
    check_boot_scr(dir.path(), &fat);
    // U-Boot and its env live in the module's QSPI flash, not on the card.
    let files = mls(&fat, "");
    assert_eq!(files, ["boot.scr"], "{files:?}");
}

#[test]
fn broken_overlays_fail_before_the_build_naming_the_file_with_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let case = |name: &str, setup: &dyn Fn(&Path)| -> String {
        let overlay = dir.path().join(format!("{name}-overlay"));
        std::fs::create_dir_all(&overlay).unwrap();
        setup(&overlay);
        let req = request(dir.path(), "rpi4", name);
        let user = UserOverlays {
            dirs: vec![overlay],
            allow_replace: Vec::new(),
        };
        let err = build_overlaid(&req, &user).unwrap_err().to_string();
        assert!(!req.out.exists(), "{name}: partial output left");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".basalt-build-")
            })
            .collect();
        assert!(leftovers.is_empty(), "{name}: build folder left");
        err
    };
    let missing = {
        let req = request(dir.path(), "rpi4", "missing");
        let user = UserOverlays {
            dirs: vec![dir.path().join("no-such-overlay")],
            allow_replace: Vec::new(),
        };
        build_overlaid(&req, &user).unwrap_err().to_string()
    };
    assert!(
        missing.contains("no-such-overlay is not a folder"),
        "{missing}"
    );

    let e = case("scr", &|d| std::fs::write(d.join("boot.scr"), "x").unwrap());
    assert!(
        e.contains("boot.scr") && e.contains("--allow-replace boot.scr"),
        "{e}"
    );
    let e = case("env", &|d| {
        std::fs::write(d.join("UBOOT.ENV"), "x").unwrap()
    });
    assert!(e.contains("UBOOT.ENV"), "{e}");
    let e = case("link", &|d| {
        std::os::unix::fs::symlink("/etc/passwd", d.join("passwd")).unwrap()
    });
    assert!(
        e.contains("passwd") && e.contains("outside the overlay folder"),
        "{e}"
    );
    let e = case("big", &|d| {
        let f = std::fs::File::create(d.join("huge.bin")).unwrap();
        f.set_len(64 * 1024 * 1024 + 1).unwrap();
    });
    assert!(
        e.contains("huge.bin") && e.contains("does not fit BOOT"),
        "{e}"
    );
    let e = case("utf8", &|d| {
        std::fs::write(d.join("config.txt"), b"gpu_mem=16\n\xc3\x28\n").unwrap()
    });
    assert!(e.contains("config.txt is not UTF-8"), "{e}");
    let e = case("pi", &|d| {
        std::fs::write(d.join("config.txt"), "gpu_mem=16\nkernel=Image\n").unwrap()
    });
    assert!(
        e.contains("config.txt line 2: `kernel=Image`") && e.contains("kernel=u-boot.bin"),
        "{e}"
    );
}
