//! Builds the UEFI boards' disk images (arm64-uefi twice, qemu-x86_64 and x86_64-uefi
//! once) from the pinned inputs and checks them with tools nobody here wrote: `sgdisk -v` and `sfdisk -J` on the
//! layout (BOOT typed EFI System), `fsck.vfat -n` on the ESP and the slot, `mtools` to read
//! files back; the ESP holds systemd-boot at the removable-media path, `loader.conf`, slot
//! A's kernel and initramfs identical to the slot's, and entries that parse with
//! systemd-boot's naming rules (A blessed, B bad) and carry slot, root hash and console.
//! The arm64 build is reproducible (same SOURCE_DATE_EPOCH → byte-identical artefacts).
//!
//! Needs the board inputs in cache/debs (scripts/setup-host).

mod common;

use std::path::Path;

use basalt_boards::Board;
use basalt_bootloader::partition_table::PartitionTable;
use basalt_bootloader::systemd_boot::{EntryFileName, FatEsp, SystemdBoot};
use basalt_bootloader::{Bootloader, Slot};
use basalt_image::compose::BuildOutput;
use basalt_image::compose::overlay::UserOverlays;
use common::{extract, mls, mread, run};

fn build_board(dir: &Path, board: &str, name: &str) -> BuildOutput {
    common::build_board(dir, board, name, &UserOverlays::default())
}

const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// Checks one UEFI image; returns nothing, panics naming the failed check.
fn check_uefi_image(dir: &Path, out: &BuildOutput, board: &str, loader: &str, kernel: &str) {
    let disk = &out.disk_image;
    let d = disk.to_str().unwrap();
    let verify = run("sgdisk", &["-v", d]);
    assert!(verify.contains("No problems found"), "{verify}");
    let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &["-J", d])).unwrap();
    let parts = json["partitiontable"]["partitions"].as_array().unwrap();
    let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["BOOT", "SYSTEM-A", "SYSTEM-B", "STATE", "DATA"]);
    assert_eq!(
        parts[0]["type"], ESP_TYPE,
        "BOOT must be an EFI system partition"
    );

    let table = PartitionTable::read(&mut std::fs::File::open(disk).unwrap(), d).unwrap();
    let boot = table.by_label("BOOT").unwrap();
    let esp = dir.join(format!("{board}-esp.fat"));
    extract(disk, boot.start, boot.size, &esp);
    run("fsck.vfat", &["-n", esp.to_str().unwrap()]);
    let slot = table.by_label("SYSTEM-A").unwrap();
    let slot_img = dir.join(format!("{board}-slot.fat"));
    extract(disk, slot.start, slot.size, &slot_img);
    run("fsck.vfat", &["-n", slot_img.to_str().unwrap()]);

    // systemd-boot at the removable-media path, byte for byte the package's binary
    let efi = mread(dir, &esp, loader);
    assert_eq!(&efi[..2], b"MZ", "{loader} is not a PE image");
    assert!(
        efi.windows(12).any(|w| w == b"systemd-boot"),
        "{loader} is not systemd-boot"
    );
    let conf = String::from_utf8(mread(dir, &esp, "loader/loader.conf")).unwrap();
    assert!(conf.contains("\ndefault basalt-*\n"), "{conf}");

    // slot A's kernel and initramfs on the ESP are the slot's
    assert_eq!(
        mread(dir, &esp, "basalt/a/vmlinuz"),
        mread(dir, &slot_img, kernel),
        "ESP kernel differs from the slot's"
    );
    assert_eq!(
        mread(dir, &esp, "basalt/a/initrd.img"),
        mread(dir, &slot_img, "initrd.img"),
        "ESP initramfs differs from the slot's"
    );
    let cmdline = String::from_utf8(mread(dir, &slot_img, "basalt/cmdline")).unwrap();
    let console = Board::load(board).unwrap().boot.console;
    assert!(
        cmdline.starts_with(&format!("console={console} ")),
        "{cmdline}"
    );

    // entries: A blessed, B bad (+0), options with slot, root hash and console
    let mut entries = mls(&esp, "loader/entries");
    entries.sort();
    assert_eq!(entries, ["basalt-a.conf", "basalt-b+0.conf"], "{entries:?}");
    let a = EntryFileName::parse(&entries[0]).unwrap();
    assert_eq!((a.slot(), a.counter), (Some(Slot::A), None));
    let b = EntryFileName::parse(&entries[1]).unwrap();
    assert_eq!(b.slot(), Some(Slot::B));
    assert_eq!(b.counter.map(|c| c.left), Some(0));
    let text = String::from_utf8(mread(dir, &esp, "loader/entries/basalt-a.conf")).unwrap();
    assert!(text.contains("\nlinux /basalt/a/vmlinuz\n"), "{text}");
    assert!(text.contains("\ninitrd /basalt/a/initrd.img\n"), "{text}");
    assert!(
        text.contains(&format!(
            "\noptions basalt.slot=A basalt.roothash={} console={console} ",
            out.root_hash
        )),
        "{text}"
    );
    // what systemd-boot will do, by the backend machined uses
    let sd = SystemdBoot::new(FatEsp::open_whole(&esp).unwrap(), None);
    let state = sd.inspect().unwrap();
    assert_eq!(state.next_entry().unwrap().file_name, "basalt-a.conf");
    let status = sd.status().unwrap();
    assert_eq!(status.order, vec![Slot::A]);
    assert!(!status.slots[1].bootable);
}

#[test]
fn uefi_images_pass_reference_tools_and_are_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let first = build_board(dir.path(), "arm64-uefi", "a");
    check_uefi_image(
        dir.path(),
        &first,
        "arm64-uefi",
        "EFI/BOOT/BOOTAA64.EFI",
        "Image",
    );
    let second = build_board(dir.path(), "arm64-uefi", "b");
    for name in ["disk.img", "disk.img.bmap", "slot.bundle", "manifest.json"] {
        let a = std::fs::read(first.disk_image.parent().unwrap().join(name)).unwrap();
        let b = std::fs::read(second.disk_image.parent().unwrap().join(name)).unwrap();
        assert!(a == b, "{name} differs between two arm64-uefi builds");
    }
    std::fs::remove_dir_all(first.disk_image.parent().unwrap()).unwrap();
    std::fs::remove_dir_all(second.disk_image.parent().unwrap()).unwrap();

    // The two x86_64 boards share the image shape; each is built and checked.
    for board in ["qemu-x86_64", "x86_64-uefi"] {
        let x86 = build_board(dir.path(), board, board);
        check_uefi_image(dir.path(), &x86, board, "EFI/BOOT/BOOTX64.EFI", "vmlinuz");
        std::fs::remove_dir_all(x86.disk_image.parent().unwrap()).unwrap();
    }
}
