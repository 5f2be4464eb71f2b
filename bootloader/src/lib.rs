//! Boot slot management for Basalt OS.
//!
//! This crate owns everything that decides which A/B system slot the next boot uses:
//!
//! - the U-Boot environment (binary format, single and redundant copies, storage backends),
//!   compatible with Debian's `fw_printenv`/`fw_setenv` and `mkenvimage`;
//! - the A/B slot state machine with boot counting (RAUC-compatible `BOOT_ORDER`,
//!   `BOOT_A_LEFT`, `BOOT_B_LEFT`), as pure transitions followed by one explicit write;
//! - boot scripts (`boot.cmd` rendered and packed into a legacy `boot.scr` image);
//! - the systemd-boot (UEFI) and Raspberry Pi tryboot backends.
//!
//! See DESIGN.md §4 for the protocol.

pub mod backend;
pub mod slot;

pub use backend::{Bootloader, BootloaderError};
pub use slot::{BootStatus, Slot, SlotState};
