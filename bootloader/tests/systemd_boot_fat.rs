//! The FAT-in-an-image ESP: volumes created in Rust, checked with `fsck.vfat -n`
//! (dosfstools; the test fails with a hint when it is missing), bytes outside the
//! partition untouched, and `FileSlice` bounds.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use basalt_bootloader::Slot;
use basalt_bootloader::systemd_boot::{
    EntrySet, EspFs, FatEsp, FatType, FileSlice, InactiveSlot, LoaderConfig, SlotEntry, format_fat,
    install_entry_set,
};

const MIB: u64 = 1024 * 1024;

fn fsck_vfat() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("fsck.vfat"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "fsck.vfat not found: this test checks the FAT images with it; \
                 run scripts/setup-host (installs dosfstools)"
            )
        })
}

/// `fsck.vfat -n` on `image[offset..offset+len]` (copied out: fsck takes no offset).
fn fsck(image: &Path, offset: u64, len: u64) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("volume.img");
    let mut source = File::open(image).unwrap();
    source.seek(SeekFrom::Start(offset)).unwrap();
    let mut bytes = vec![0u8; usize::try_from(len).unwrap()];
    source.read_exact(&mut bytes).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    let out = Command::new(fsck_vfat())
        .arg("-n")
        .arg(&copy)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck.vfat -n reports problems:\n{report}"
    );
    assert!(!report.to_lowercase().contains("dirty bit"), "{report}");
}

fn exercise(esp: &mut FatEsp) {
    for slot in ["a", "b"] {
        esp.write_file_atomic(&format!("basalt/{slot}/vmlinuz"), &vec![7u8; 300_000])
            .unwrap();
    }
    let set = EntrySet {
        active: Slot::A,
        a: SlotEntry::standard(Slot::A, "Basalt OS", "aa", ""),
        b: SlotEntry::standard(Slot::B, "Basalt OS", "bb", ""),
        inactive: InactiveSlot::Empty,
        loader: LoaderConfig::default(),
    };
    install_entry_set(esp, &set).unwrap();
    esp.rename(
        "loader/entries/basalt-b+0.conf",
        "loader/entries/basalt-b+3.conf",
    )
    .unwrap();
    esp.rename(
        "loader/entries/basalt-b+3.conf",
        "loader/entries/basalt-b+2-1.conf",
    )
    .unwrap();
    esp.write_file_atomic(
        "loader/entries/basalt-b+2-1.conf",
        b"title x\nlinux /basalt/b/vmlinuz\n",
    )
    .unwrap();
    esp.delete("basalt/a/vmlinuz").unwrap();
    let names: Vec<_> = esp
        .list_dir("loader/entries")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["basalt-a.conf", "basalt-b+2-1.conf"]);
    assert_eq!(
        esp.read_file("LOADER/Entries/BASALT-B+2-1.CONF").unwrap(),
        b"title x\nlinux /basalt/b/vmlinuz\n",
        "FAT names are case-insensitive"
    );
    assert!(!esp.exists("basalt/a/vmlinuz").unwrap());
    assert_eq!(esp.read_file("basalt/b/vmlinuz").unwrap().len(), 300_000);
}

#[test]
fn fat16_and_fat32_volumes_pass_fsck() {
    let dir = tempfile::tempdir().unwrap();
    // `None` on 2 MiB lets fatfs pick FAT12.
    for (fat_type, size) in [
        (None, 2 * MIB),
        (Some(FatType::Fat16), 16 * MIB),
        (Some(FatType::Fat32), 40 * MIB),
    ] {
        let image = dir.path().join(format!("{fat_type:?}.img"));
        File::create(&image).unwrap().set_len(size).unwrap();
        format_fat(&image, 0, size, fat_type, "BASALT-ESP").unwrap();
        fsck(&image, 0, size);
        let mut esp = FatEsp::open_whole(&image).unwrap();
        exercise(&mut esp);
        fsck(&image, 0, size);
    }
}

#[test]
fn directories_spanning_many_clusters_pass_fsck() {
    // FAT32 with 512-byte clusters: 16 entries per cluster, so long names span clusters.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("many.img");
    File::create(&image).unwrap().set_len(40 * MIB).unwrap();
    format_fat(&image, 0, 40 * MIB, Some(FatType::Fat32), "ESP").unwrap();
    let mut esp = FatEsp::open_whole(&image).unwrap();
    for i in 0..40 {
        esp.write_file_atomic(&format!("dir{i}/sub/entry-with-a-long-name-{i}.conf"), b"x")
            .unwrap();
        esp.write_file_atomic(&format!("loader/entries/other-entry-{i}+3.conf"), b"y")
            .unwrap();
    }
    for i in 0..40 {
        esp.rename(
            &format!("loader/entries/other-entry-{i}+3.conf"),
            &format!("loader/entries/other-entry-{i}+2-1.conf"),
        )
        .unwrap();
    }
    assert_eq!(esp.list_dir("loader/entries").unwrap().len(), 40);
    assert_eq!(
        esp.read_file("dir39/sub/entry-with-a-long-name-39.conf")
            .unwrap(),
        b"x"
    );
    fsck(&image, 0, 40 * MIB);
}

#[test]
fn partition_inside_a_disk_image_leaves_other_bytes_alone() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let (offset, len) = (3 * MIB, 40 * MIB);
    {
        let mut file = File::create(&image).unwrap();
        file.write_all(&vec![0xA5; usize::try_from(offset).unwrap()])
            .unwrap();
        file.set_len(offset + len).unwrap();
        file.seek(SeekFrom::End(0)).unwrap();
        file.write_all(&[0x5A; 4096]).unwrap();
    }
    format_fat(&image, offset, len, None, "ESP").unwrap();
    let mut esp = FatEsp::open(&image, offset, len).unwrap();
    exercise(&mut esp);
    fsck(&image, offset, len);

    let bytes = std::fs::read(&image).unwrap();
    let (before, rest) = bytes.split_at(usize::try_from(offset).unwrap());
    assert!(
        before.iter().all(|b| *b == 0xA5),
        "bytes before the partition changed"
    );
    let after = &rest[usize::try_from(len).unwrap()..];
    assert_eq!(after.len(), 4096);
    assert!(
        after.iter().all(|b| *b == 0x5A),
        "bytes after the partition changed"
    );

    let description = esp.describe();
    assert!(
        description.contains("disk.img at offset 3145728"),
        "{description}"
    );
}

#[test]
fn file_slice_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"0123456789").unwrap();
    let file = File::options().read(true).write(true).open(&path).unwrap();
    let mut slice = FileSlice::new(file, 2, 5).unwrap();
    let mut all = String::new();
    slice.read_to_string(&mut all).unwrap();
    assert_eq!(all, "23456");
    assert_eq!(slice.seek(SeekFrom::End(-1)).unwrap(), 4);
    assert_eq!(slice.write(b"xyz").unwrap(), 1, "writes stop at the end");
    assert!(slice.write(b"z").is_err());
    assert!(slice.seek(SeekFrom::Current(-10)).is_err());
    slice.seek(SeekFrom::Start(0)).unwrap();
    slice.write_all(b"ab").unwrap();
    drop(slice);
    assert_eq!(std::fs::read(&path).unwrap(), b"01ab45x789");
}
