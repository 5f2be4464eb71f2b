//! The Basalt image composer.
//!
//! Composes a kernel, `machined` and a board's files into the artefacts of a release, in
//! the order of the pipeline ([`compose`]):
//!
//! | module | what |
//! |---|---|
//! | [`inputs`] | pinned Debian packages read in Rust (ar + tar + xz/zst/gz): kernel, modules and their dependencies, DTBs, firmware, U-Boot |
//! | [`initramfs`] | reproducible cpio newc (gzip/zstd) with `machined` as `/init` and the early modules |
//! | [`squashfs`] | the read-only root filesystem (squashfs v4 via `backhand`) |
//! | [`verity`] | the dm-verity hash tree, computed in Rust, appended to the squashfs |
//! | [`disk`] | partition layout and GPT/MBR tables with reproducible identifiers |
//! | [`compose`] | the root's system extensions (the container runtime from pinned packages), system slot and BOOT as FAT built in Rust, STATE/DATA ext4, the assembled sparse disk image, and the release files |
//! | [`bmap`] | the bmaptool-compatible block map (XML 2.0, sha256 per range) |
//! | [`bundle`] | the signed update bundle (Ed25519, per-chunk hash index for resumable and adaptive downloads; docs/BUNDLE-FORMAT.md) |
//!
//! Builds are reproducible: the same inputs and `SOURCE_DATE_EPOCH` give byte-identical
//! artefacts (tested). Output is built in a temporary folder and renamed into place.

pub mod bmap;
pub mod bundle;
pub mod compose;
pub mod disk;
pub mod initramfs;
pub mod inputs;
pub mod sparse;
pub mod squashfs;
pub mod verity;
