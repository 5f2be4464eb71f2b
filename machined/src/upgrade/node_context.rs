//! [`UpgradeContext`] over machined's [`Node`]: the applied configuration's `UpdateConfig`,
//! the node's bootloader (behind its `Bootloader` trait), the reboot through
//! `HostActions`, and the console log.

use super::engine::UpgradeContext;
use super::trust::UpdateTrust;
use crate::node::Node;
use basalt_bootloader::{BootStatus, BootloaderError, Slot};
use std::sync::Arc;

/// The engine's view of a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeContext(pub Arc<Node>);

impl UpgradeContext for NodeContext {
    fn trust(&self) -> Result<Option<UpdateTrust>, String> {
        let Some(applied) = self.0.applied.latest() else {
            return Ok(None);
        };
        UpdateTrust::from_config(&applied.config)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn boot_status(&self) -> Result<BootStatus, BootloaderError> {
        self.0
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status()
    }

    fn prepare_update(&self, target: Slot) -> Result<(), BootloaderError> {
        self.0
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .prepare_update(target)
    }

    fn install_slot_boot_files(
        &self,
        target: Slot,
        device: &std::path::Path,
    ) -> Result<(), BootloaderError> {
        self.0
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .install_slot_boot_files(target, device)
    }

    fn activate(&self, target: Slot, tries: u32) -> Result<(), BootloaderError> {
        self.0
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .activate(target, tries)
    }

    fn reboot(&self) -> Result<(), String> {
        self.0.host.reboot().map_err(|e| e.to_string())
    }

    fn log(&self, message: &str) {
        crate::console(&self.0.state_dir, message);
    }
}
