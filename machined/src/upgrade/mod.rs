//! A/B upgrades: a signed update bundle (docs/BUNDLE-FORMAT.md) into the inactive system
//! slot, verified before, during and after the write, then the bootloader switch.
//!
//! The flow, its guarantees under power loss, resume and refusals are described in
//! `docs/UPGRADES.md`. The parts:
//!
//! - [`engine`]: the domain logic ([`UpgradeEngine`], [`UpgradeSession`]) behind small
//!   traits: [`SlotDevices`]/[`SlotDevice`] for the slot partitions and
//!   [`UpgradeContext`] for the bootloader, the stored configuration, the reboot and the
//!   log;
//! - [`plan`]: the checks of a bundle header before anything is written, and which
//!   chunks the booted slot already holds (`UpgradePlan`; copied instead of received);
//! - [`device`]: the slot devices (positioned I/O + fsync on a block device or file, and
//!   memory for tests);
//! - [`progress`]: the resume record on STATE (`upgrade/progress.json`);
//! - [`trust`]: trusted signing keys and default tries from the `UpdateConfig` document;
//! - [`version`]: version comparison;
//! - [`fetch`]: the HTTP(S) Range client of `UpgradeFromUrl`, resuming after drops;
//! - [`node_context`]: [`UpgradeContext`] over machined's [`crate::node::Node`].
//!
//! The node's board, booted version, booted slot and slot partitions are inputs
//! ([`UpgradeTarget`]), filled by `main.rs`: from `--dev-*` flags in dev mode, from early
//! boot on a node.

pub mod device;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod node_context;
pub mod plan;
pub mod progress;
pub mod trust;
pub mod types;
pub mod version;

pub use device::{SlotDevice, SlotDevices};
pub use engine::{
    UpgradeContext, UpgradeEngine, UpgradeError, UpgradeOptions, UpgradeOutcome, UpgradeSession,
    UpgradeTarget,
};
pub use plan::UpgradePlan;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fetch;
#[cfg(test)]
mod tests_plan;
#[cfg(test)]
mod tests_readback;
