//! The Basalt flashing tool.
//!
//! This crate will own writing a disk image (raw or compressed, with or without a bmap), or
//! one A/B slot from an update bundle, to an SD card, eMMC or USB device: device safety
//! checks, bounded-memory streaming writes, read-back verification and first-boot config
//! injection into the STATE partition.
