//! BOOT of a UEFI board: the EFI system partition that systemd-boot runs from.
//!
//! ```text
//! EFI/BOOT/BOOTAA64.EFI | BOOTX64.EFI   systemd-boot, at the removable-media path
//! loader/loader.conf                     default basalt-*, timeout 0, editor no
//! loader/entries/basalt-a.conf           slot A: blessed (committed), priority 2
//! loader/entries/basalt-b+0.conf         slot B: empty, bad until an upgrade activates it
//! basalt/a/vmlinuz, basalt/a/initrd.img  slot A's kernel and initramfs (copies)
//! ```
//!
//! systemd-boot loads kernels only from the ESP, so slot A's kernel and initramfs are copied
//! here; the slot partition keeps them too (with `basalt/cmdline`), so an upgrade installs
//! a new slot's copies from the slot alone
//! ([`basalt_bootloader::systemd_boot::slot_boot`]). Each entry's options are
//! `basalt.slot=<A|B> basalt.roothash=<hex> console=<console> <kernel args>`.
//!
//! The firmware needs no boot variables: it boots the removable-media path of the first
//! disk's ESP. The entries are written through [`FatEsp`], the same code machined's
//! backend uses on a node, so the layout checks of the bootloader crate apply.

use std::path::Path;

use basalt_boards::Board;
use basalt_bootloader::Slot;
use basalt_bootloader::systemd_boot::{
    EntrySet, FatEsp, InactiveSlot, LoaderConfig, SlotEntry, install_entry_set,
};

use super::fat_volume::{FatContent, build_fat};
use super::overlay::BootOverlay;
use super::{ComposeError, step};
use crate::inputs::BoardInputs;

/// The OS name in loader entry titles.
pub const OS_NAME: &str = "Basalt OS";

/// The kernel arguments of `board` besides `basalt.slot=` and `basalt.roothash=`: the
/// console first, then the board's kernel args. Written into the slot as `basalt/cmdline`.
pub fn kernel_args(board: &Board) -> String {
    let mut args = vec![format!("console={}", board.boot.console)];
    args.extend(board.boot.kernel_args.iter().cloned());
    args.join(" ")
}

/// The entries of a fresh image: slot A blessed and first, slot B bad (empty).
pub fn entry_set(board: &Board, version: &str, root_hash: &str) -> EntrySet {
    let args = kernel_args(board);
    EntrySet {
        active: Slot::A,
        a: SlotEntry::standard(Slot::A, &format!("{OS_NAME} {version}"), root_hash, &args),
        // B's entry points at files an upgrade installs; it stays bad until then.
        b: SlotEntry::standard(Slot::B, OS_NAME, root_hash, &args),
        inactive: InactiveSlot::Empty,
        loader: LoaderConfig::default(),
    }
}

/// What of slot A the ESP carries besides its kernel.
#[derive(Debug, Clone, Copy)]
pub struct SlotA<'a> {
    /// Slot A's initramfs.
    pub initrd: &'a Path,
    /// Slot A's dm-verity root hash (hex), for its entry's options.
    pub root_hash: &'a str,
}

/// Builds the ESP image at `path` (`size` bytes): the board's EFI files, slot A's kernel
/// and initramfs, the overlay files, `loader.conf` and both entries.
pub fn build_esp(
    path: &Path,
    size: u64,
    board: &Board,
    version: &str,
    inputs: &BoardInputs,
    slot_a: SlotA<'_>,
    overlay: &BootOverlay,
) -> Result<(), ComposeError> {
    let set = entry_set(board, version, slot_a.root_hash);
    let mut files = Vec::new();
    for f in &inputs.boot_files {
        files.push((f.dest.clone(), FatContent::File(f.source.clone())));
    }
    let initrd_dest = set.a.initrd.first().cloned().unwrap_or_default();
    files.push((
        set.a.linux.trim_start_matches('/').to_string(),
        FatContent::File(inputs.kernel.image.clone()),
    ));
    files.push((
        initrd_dest.trim_start_matches('/').to_string(),
        FatContent::File(slot_a.initrd.to_path_buf()),
    ));
    overlay.lay_over(&mut files);
    build_fat(path, size, "BOOT", &files).map_err(step("build the ESP"))?;
    let mut esp = FatEsp::open(path, 0, size)
        .map_err(step("open the ESP"))?
        .with_label("BOOT");
    install_entry_set(&mut esp, &set).map_err(step("write the loader entries"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_slot_root_hash_console_and_args() {
        let board = Board::load("arm64-uefi").unwrap();
        let set = entry_set(&board, "1.2.0", "ab12");
        let a = set.a.render(Slot::A, 2).unwrap();
        assert!(a.contains("title Basalt OS 1.2.0 (slot A)\n"), "{a}");
        assert!(a.contains("linux /basalt/a/vmlinuz\ninitrd /basalt/a/initrd.img\n"));
        assert!(
            a.ends_with(
                "options basalt.slot=A basalt.roothash=ab12 console=ttyAMA0,115200 panic=10\n"
            ),
            "{a}"
        );
        let b = set.b.render(Slot::B, 1).unwrap();
        assert!(b.contains("linux /basalt/b/vmlinuz\n"), "{b}");
        let x86 = Board::load("qemu-x86_64").unwrap();
        assert_eq!(kernel_args(&x86), "console=ttyS0,115200 panic=10");
    }
}
