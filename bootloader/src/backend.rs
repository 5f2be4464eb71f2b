//! The [`Bootloader`] trait: what machined needs from any boot backend.
//!
//! Every backend (U-Boot environment, systemd-boot loader entries, Raspberry Pi tryboot,
//! memory) implements the same six operations with the same meaning:
//!
//! | operation | effect on the next boot |
//! |---|---|
//! | `status` | none: reports order, tries and whether the booted slot is committed |
//! | `prepare_update(target)` | `target` is no longer bootable; called before any byte of it is written |
//! | `activate(target, tries)` | `target` boots next, on trial, with `tries` attempts; the other slot stays the fallback |
//! | `mark_good(booted)` | the booted slot is committed: it stays first and its counter is restored |
//! | `mark_bad(slot)` | `slot` is no longer bootable |
//! | `rollback()` | the other slot (which must be bootable) boots next, on trial; the current one stays behind it as the fallback |
//!
//! Each operation is one atomic write of the backend's storage.
//!
//! One more step, `install_slot_boot_files(target, device)`, runs between writing a slot and
//! `activate`: backends whose bootloader cannot read the slot partition (systemd-boot loads
//! kernels only from the ESP) copy the slot's kernel and initramfs to their own storage
//! there. The default does nothing (U-Boot and the Pi firmware load from the slot).

use crate::slot::{BootStatus, Slot};

/// A failed bootloader operation.
#[derive(Debug, thiserror::Error)]
pub enum BootloaderError {
    /// The requested transition is not allowed in the current state.
    #[error("refused: {0}")]
    Refused(String),
    /// The backend's storage could not be read or written.
    #[error("{backend} storage: {source}")]
    Storage {
        /// Which backend failed, e.g. "u-boot env at /dev/mmcblk0".
        backend: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What machined needs from a boot backend. See the module docs for the semantics.
pub trait Bootloader {
    /// The current boot state.
    fn status(&self) -> Result<BootStatus, BootloaderError>;
    /// Takes `target` out of the boot order before it is overwritten.
    fn prepare_update(&mut self, target: Slot) -> Result<(), BootloaderError>;
    /// Makes `target` boot next on trial with `tries` attempts.
    fn activate(&mut self, target: Slot, tries: u32) -> Result<(), BootloaderError>;
    /// Commits the booted slot.
    fn mark_good(&mut self, booted: Slot) -> Result<(), BootloaderError>;
    /// Makes `slot` unbootable.
    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootloaderError>;
    /// Switches back to the other slot; returns the slot that boots next.
    fn rollback(&mut self) -> Result<Slot, BootloaderError>;
    /// Copies what the bootloader needs to boot `target` from the freshly written slot
    /// `device` (a partition or image file holding the slot's FAT) to where the bootloader
    /// reads it; called after `prepare_update` and the slot write, before `activate`.
    fn install_slot_boot_files(
        &mut self,
        target: Slot,
        device: &std::path::Path,
    ) -> Result<(), BootloaderError> {
        let _ = (target, device);
        Ok(())
    }
}
