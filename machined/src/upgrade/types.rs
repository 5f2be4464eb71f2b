//! The engine's inputs and outputs: what it knows of the node ([`UpgradeTarget`]), how to
//! install ([`UpgradeOptions`]), what it asks of the rest of machined
//! ([`UpgradeContext`]) and where a finished upgrade left the node ([`UpgradeOutcome`]).

use super::trust::UpdateTrust;
use basalt_bootloader::{BootStatus, BootloaderError, Slot};
use std::path::PathBuf;

/// What the engine needs to know about the node; filled by `main.rs` (dev flags, or early
/// boot on a node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeTarget {
    /// The board name (as in `basalt-boards` and bundle manifests), e.g. `qemu-arm64`.
    pub board: String,
    /// The version of the booted slot.
    pub booted_version: String,
    /// The booted slot; upgrades go to the other one.
    pub booted_slot: Slot,
    /// The devices of slot A and B (`SYSTEM-A`, `SYSTEM-B` partitions).
    pub slot_devices: [PathBuf; 2],
}

/// How to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpgradeOptions {
    /// Accept a bundle not newer than the booted version.
    pub allow_downgrade: bool,
    /// Do not reboot after activation.
    pub stage: bool,
    /// Boot tries of the new slot; `None` for the UpdateConfig's.
    pub tries: Option<u32>,
    /// Copy the chunks the booted slot holds instead of expecting them in the stream (the
    /// client sends only what [`super::UpgradeEngine::plan`] listed); set right after the
    /// header is verified.
    pub reuse_booted_slot: bool,
}

/// What the engine asks of the rest of machined: settings, bootloader, reboot, log.
pub trait UpgradeContext: Send + Sync {
    /// The update settings of the stored configuration; `Ok(None)` when none is stored.
    fn trust(&self) -> Result<Option<UpdateTrust>, String>;
    /// The boot state.
    fn boot_status(&self) -> Result<BootStatus, BootloaderError>;
    /// Takes `target` out of the boot order.
    fn prepare_update(&self, target: Slot) -> Result<(), BootloaderError>;
    /// Copies what the bootloader needs from the written slot `device` to where it reads it
    /// (systemd-boot: kernel and initramfs onto the ESP, the slot's entry); a no-op for
    /// bootloaders that read the slot partition. See `Bootloader::install_slot_boot_files`.
    fn install_slot_boot_files(
        &self,
        target: Slot,
        device: &std::path::Path,
    ) -> Result<(), BootloaderError>;
    /// Boots `target` next, on trial with `tries` attempts.
    fn activate(&self, target: Slot, tries: u32) -> Result<(), BootloaderError>;
    /// Reboots the node.
    fn reboot(&self) -> Result<(), String>;
    /// Records a phase (console and log).
    fn log(&self, message: &str);
}

/// Where a finished upgrade left the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeOutcome {
    /// The slot written and activated.
    pub slot: Slot,
    /// The bundle's version.
    pub version: String,
    /// The bundle's board.
    pub board: String,
    /// Payload bytes written by this session.
    pub bytes_written: u64,
    /// Slot image size.
    pub slot_size: u64,
    /// Boot tries of the new slot.
    pub tries: u32,
    /// Whether a reboot was started.
    pub rebooting: bool,
}
