//! Boot slot management for Basalt OS.
//!
//! This crate owns everything that decides which A/B system slot the next boot uses, and is
//! shared by machined (on the node), the image builder and the flashing tool:
//!
//! | module | what |
//! |---|---|
//! | [`slot`] | the slots `A`/`B` and the boot status every backend reports |
//! | [`backend`] | the [`Bootloader`] trait: `status`, `prepare_update`, `activate`, `mark_good`, `mark_bad`, `rollback` |
//! | [`boot_counting`] | the A/B state machine over U-Boot variables (RAUC-compatible `BOOT_ORDER`, `BOOT_A_LEFT`, `BOOT_B_LEFT`, plus `BASALT_TRIAL`, `BASALT_LAST_FAILED`): pure transitions, and `boot_decision`, the boot script's algorithm in Rust |
//! | [`env`] | the U-Boot environment: binary format, single and redundant copies, file/device/memory stores; interoperates with `fw_printenv`/`fw_setenv` and `mkenvimage` |
//! | [`esp_env_store`] | a U-Boot env kept as a file (`uboot.env`) on a FAT volume, in an image or mounted |
//! | [`uboot_backend`] | [`Bootloader`] over a U-Boot env: one atomic env write per transition; over memory, the test backend |
//! | [`script`] | `boot.cmd` templates rendered per board and packed into `boot.scr` (byte-identical to `mkimage -T script`) |
//! | [`systemd_boot`] | [`Bootloader`] over systemd-boot loader entries with boot counting in file names, on a mounted ESP or a FAT volume inside an image |
//! | [`tryboot`] | [`Bootloader`] over the Raspberry Pi firmware's `autoboot.txt` and one-shot tryboot |
//! | [`partition_table`] | a read-only GPT/MBR reader to find BOOT and the slots in an image or device |
//! | [`gpt_grow`] | moving the backup GPT to the end of a larger disk and growing DATA into the space (basalt-flash `--grow-data`, machined on first boot) |
//! | [`mbr_grow`] | the same for the last (possibly logical) partition of an MBR disk (machined on first boot) |
//!
//! The protocol is DESIGN.md §4. Every transition is computed first and then written in one
//! atomic write of the backend's storage, so a power cut leaves the state before or after it.

pub mod backend;
pub mod boot_counting;
pub mod env;
pub mod esp_env_store;
pub mod gpt_grow;
pub mod mbr_grow;
pub mod partition_table;
pub mod script;
pub mod slot;
pub mod systemd_boot;
pub mod tryboot;
pub mod uboot_backend;

pub use backend::{Bootloader, BootloaderError};
pub use slot::{BootStatus, Slot, SlotState};
