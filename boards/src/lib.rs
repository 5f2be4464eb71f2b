//! Board definitions for Basalt OS.
//!
//! This crate owns the data files under `boards/` (one per board: architecture, bootloader
//! family, partition table type and layout, console, kernel arguments, device trees,
//! firmware, U-Boot binary and env storage, early kernel modules, support level) and their
//! strict loader and validator. `basalt-image` and `basalt-flash` read boards only through
//! this crate.
