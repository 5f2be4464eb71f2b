//! The Basalt image composer.
//!
//! This crate will own composing a kernel, `machined` and a board overlay into the
//! artefacts of a release: initramfs, system slot (kernel, DTBs, initramfs, squashfs root
//! with a dm-verity hash tree), disk image with A/B slots, bmap, signed update bundle and
//! manifest. Builds are reproducible from the same inputs and `SOURCE_DATE_EPOCH`.
