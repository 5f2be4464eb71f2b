//! `basalt-flash write-slot` onto a flashed card (a loop device): signature, board and
//! size checks, the slot's bytes, and the U-Boot env on BOOT switched to try the slot.

mod common;

use std::path::Path;

use basalt_bootloader::Bootloader;
use basalt_bootloader::env::{EnvLayout, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::slot::Slot;
use basalt_bootloader::systemd_boot::FatEsp;
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_image::bundle::{BundleMeta, BundleWriter, generate_signing_key, verifying_key_pem};
use common::*;

fn env(card: &Path, boot: (u64, u64)) -> UbootBootloader<EspFileStore<FatEsp>> {
    let store = EspFileStore::new(FatEsp::open(card, boot.0, boot.1).unwrap(), "uboot.env");
    let env = UbootEnv::load(store, EnvLayout::single(0x4000)).unwrap();
    UbootBootloader::new(env, None)
}

#[test]
fn write_slot_b_and_switch_the_bootloader() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let layout = make_image(&image, 64);
    // The initial env as the image builder writes it: slot A active and committed.
    let store = EspFileStore::new(
        FatEsp::open(&image, layout.boot.0, layout.boot.1).unwrap(),
        "uboot.env",
    );
    let mut e = UbootEnv::load_or_default(
        store,
        EnvLayout::single(0x4000),
        basalt_bootloader::boot_counting::initial_vars(),
    )
    .unwrap();
    e.save().unwrap();
    drop(e);
    let card = dir.path().join("card");
    blank(&card, 64 * MIB, 0);
    let l = Loop::attach(&card);
    assert_eq!(
        flash(&["--quiet", s(&image), s(&l.dev)]).status.code(),
        Some(0)
    );
    assert_eq!(
        env(&l.dev, layout.boot).status().unwrap().next_boot(),
        Some(Slot::A)
    );

    // A signed bundle for the board.
    let slot_img = dir.path().join("slot.img");
    std::fs::write(&slot_img, noise(77, 6 * MIB as usize + 4096)).unwrap();
    let key = generate_signing_key(&dir.path().join("signing.pem")).unwrap();
    let public = dir.path().join("public.pem");
    std::fs::write(&public, verifying_key_pem(&key.verifying_key()).unwrap()).unwrap();
    let bundle = dir.path().join("update.bundle");
    let meta = BundleMeta::new("qemu-arm64", "1.2.3", "aarch64", 0, [7; 32]);
    BundleWriter::write(&slot_img, &meta, &key, &bundle).unwrap();

    // Wrong board, wrong key: rejected (exit 9), nothing changes.
    let out = flash(&[
        "write-slot",
        "--quiet",
        "--slot",
        "B",
        "--bundle",
        s(&bundle),
        "--trusted-key",
        s(&public),
        "--board",
        "rpi4",
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(9));
    let other = generate_signing_key(&dir.path().join("other.pem")).unwrap();
    let other_pub = dir.path().join("other.pub");
    std::fs::write(
        &other_pub,
        verifying_key_pem(&other.verifying_key()).unwrap(),
    )
    .unwrap();
    let out = flash(&[
        "write-slot",
        "--quiet",
        "--slot",
        "B",
        "--bundle",
        s(&bundle),
        "--trusted-key",
        s(&other_pub),
        "--board",
        "qemu-arm64",
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(9));
    assert!(
        read_range(&card, layout.system_b.0, MIB)
            .iter()
            .all(|&b| b == 0)
    );

    let out = flash(&[
        "write-slot",
        "--quiet",
        "--slot",
        "B",
        "--bundle",
        s(&bundle),
        "--trusted-key",
        s(&public),
        "--board",
        "qemu-arm64",
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        read_range(&card, layout.system_b.0, 6 * MIB + 4096),
        std::fs::read(&slot_img).unwrap()
    );
    // Slot A untouched; the bootloader tries B next.
    assert_eq!(
        read_range(&card, layout.system_a.0, MIB),
        read_range(&image, layout.system_a.0, MIB)
    );
    let status = env(&l.dev, layout.boot).status().unwrap();
    assert_eq!(status.next_boot(), Some(Slot::B), "{status:?}");
}
