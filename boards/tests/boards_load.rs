//! Loading and validating board files: every embedded board, strict decoding, and reporting
//! of all problems at once.

use basalt_boards::{
    Arch, Board, BoardError, BootloaderFamily, DEFAULT_BOARD, PartitionRole, PartitionTable,
};
use std::io::Write;

#[test]
fn every_embedded_board_loads_and_validates() {
    let boards = Board::all().expect("embedded boards load");
    let names: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "arm64-uefi",
            "jetson-nano",
            "qemu-arm64",
            "qemu-x86_64",
            "rpi3",
            "rpi4",
            "x86_64-uefi"
        ]
    );
    for b in &boards {
        assert!(b.problems().is_empty(), "{}: {:?}", b.name, b.problems());
        b.validate().unwrap();
        assert!(b.partition(PartitionRole::Data).unwrap().grow);
    }
    assert_eq!(Board::load(DEFAULT_BOARD).unwrap().name, "qemu-arm64");
}

#[test]
fn board_facts() {
    let rpi3 = Board::load("rpi3").unwrap();
    assert_eq!(rpi3.disk.table, PartitionTable::Mbr);
    assert_eq!(rpi3.boot.console, "ttyS1,115200");
    let nano = Board::load("jetson-nano").unwrap();
    assert!(nano.uboot.as_ref().unwrap().binary.is_none());
    assert_eq!(nano.kernel.dtbs, ["nvidia/tegra210-p3450-0000.dtb"]);
    let x86 = Board::load("qemu-x86_64").unwrap();
    assert_eq!(x86.arch, Arch::X86_64);
    assert_eq!(x86.boot.family, BootloaderFamily::UefiSystemdBoot);
    assert!(x86.uboot.is_none());
    assert_eq!(x86.efi.unwrap().loader.dest, "EFI/BOOT/BOOTX64.EFI");
    let q = Board::load("qemu-arm64").unwrap();
    let env = &q.uboot.unwrap().env;
    assert_eq!((env.file.as_deref(), env.size), (Some("uboot.env"), 0x4000));
}

#[test]
fn unknown_board_names_the_board_and_lists_known_ones() {
    let err = Board::load("rpi9").unwrap_err();
    assert!(matches!(err, BoardError::UnknownBoard { .. }));
    let msg = err.to_string();
    assert!(msg.contains("\"rpi9\""), "{msg}");
    assert!(msg.contains("qemu-arm64") && msg.contains("rpi4"), "{msg}");
}

#[test]
fn unknown_field_is_named_with_its_position() {
    let text = Board::embedded_source("rpi4").unwrap().replace(
        "slot_file = \"Image\"",
        "slot_file = \"Image\"\nslot_flie = \"x\"",
    );
    let err = Board::from_toml(&text, "rpi4-typo.toml").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BoardError::Parse { .. }), "{msg}");
    assert!(msg.contains("rpi4-typo.toml"), "{msg}");
    assert!(msg.contains("slot_flie"), "{msg}");
    assert!(msg.contains("line"), "{msg}");
}

#[test]
fn unknown_enum_value_is_named() {
    let text = Board::embedded_source("qemu-arm64")
        .unwrap()
        .replace("arch = \"aarch64\"", "arch = \"riscv64\"");
    let msg = Board::from_toml(&text, "x.toml").unwrap_err().to_string();
    assert!(msg.contains("riscv64"), "{msg}");
}

#[test]
fn several_problems_are_reported_together() {
    let text = Board::embedded_source("rpi4")
        .unwrap()
        .replace("console = \"ttyS1,115200\"", "console = \"serial one\"")
        .replace(
            "kernel_args = [\"panic=10\"]",
            "kernel_args = [\"console=tty0\"]",
        )
        .replace(
            "{ label = \"SYSTEM-B\", size_mib = 512",
            "{ label = \"SYSTEM-B\", size_mib = 256",
        )
        .replace("\"dm-verity\", ", "")
        .replace("size = 0x4000", "size = 0x4001");
    let err = Board::from_toml(&text, "broken.toml").unwrap_err();
    let BoardError::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err}");
    };
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for want in [
        "boot.console",
        "boot.kernel_args[0]",
        "disk.partitions",
        "kernel.early_modules",
        "uboot.env.size",
    ] {
        assert!(fields.contains(&want), "{want} missing in {fields:?}");
    }
    let msg = err.to_string();
    assert!(msg.contains("5 problems"), "{msg}");
    assert!(msg.contains("dm_verity") && msg.contains("0x4001"), "{msg}");
}

#[test]
fn family_sections_are_checked() {
    let mut b = Board::load("qemu-x86_64").unwrap();
    b.boot.family = BootloaderFamily::UBootScript;
    b.disk.table = PartitionTable::Mbr;
    let fields: Vec<String> = b.problems().into_iter().map(|p| p.field).collect();
    assert!(fields.contains(&"uboot".to_string()), "{fields:?}");
    assert!(fields.contains(&"arch".to_string()), "{fields:?}");
    assert!(fields.contains(&"efi".to_string()), "{fields:?}");
    let mut b = Board::load("qemu-x86_64").unwrap();
    b.disk.table = PartitionTable::Mbr;
    b.efi.as_mut().unwrap().loader.dest = "EFI/BOOT/BOOTAA64.EFI".into();
    let fields: Vec<String> = b.problems().into_iter().map(|p| p.field).collect();
    assert_eq!(fields, ["efi.loader.dest", "disk.table"]);
}

#[test]
fn board_from_path_checks_name_and_reports_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = Board::embedded_source("rpi4").unwrap();
    let good = dir.path().join("my-pi.toml");
    std::fs::write(&good, text.replace("name = \"rpi4\"", "name = \"my-pi\"")).unwrap();
    let b = Board::from_path(&good).unwrap();
    assert_eq!(b.name, "my-pi");
    assert_eq!(
        Board::resolve(good.to_str().unwrap()).unwrap().name,
        "my-pi"
    );

    let wrong = dir.path().join("other.toml");
    std::fs::File::create(&wrong)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let msg = Board::from_path(&wrong).unwrap_err().to_string();
    assert!(
        msg.contains("other.toml") && msg.contains("rpi4.toml"),
        "{msg}"
    );

    let missing = dir.path().join("nope.toml");
    let msg = Board::from_path(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.toml"), "{msg}");
}

#[test]
fn extensions_default_on_and_can_be_turned_off() {
    for b in Board::all().unwrap() {
        assert!(
            b.extensions.containers,
            "{}: containers on by default",
            b.name
        );
    }
    let text = Board::embedded_source("qemu-arm64").unwrap();
    let off = format!("{text}\n[extensions]\ncontainers = false\n");
    let b = Board::from_toml(&off, "no-containers.toml").unwrap();
    assert!(!b.extensions.containers);
    let empty = format!("{text}\n[extensions]\n");
    assert!(
        Board::from_toml(&empty, "x.toml")
            .unwrap()
            .extensions
            .containers
    );
    let typo = format!("{text}\n[extensions]\ncontainerd = false\n");
    let msg = Board::from_toml(&typo, "typo.toml")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("containerd") && msg.contains("typo.toml"),
        "{msg}"
    );
    let not_bool = format!("{text}\n[extensions]\ncontainers = \"no\"\n");
    let msg = Board::from_toml(&not_bool, "x.toml")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("containers") || msg.contains("bool"), "{msg}");
}
