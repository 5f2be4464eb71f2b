//! The Basalt flashing tool: writes a disk image (raw, `.gz`, `.xz` or `.zst`, from a path,
//! stdin or HTTP(S) with Range resume, with or without a bmap) or one A/B slot from a
//! signed update bundle to SD cards, eMMC and USB devices; safely, fast and verified.
//!
//! # Design
//!
//! ```text
//!  source ─► decompress ─► reader thread ──bounded queue (8 × 4 MiB)──► writer thread ─► /dev/sdb
//!  (path, stdin, HTTP)      checks bmap        └─bounded queue──────────► writer thread ─► /dev/sdc
//!                           range sha256                                  then verify (O_DIRECT)
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`source`], [`http`] | inputs, compression sniffing, HTTP Range resume |
//! | [`bmap`] | bmap 1.0–1.4 (sha1/sha256) and 2.0 (through `basalt_image::bmap`) |
//! | [`device`] | sysfs discovery and the safety rules |
//! | [`blockdev`] | the [`blockdev::Target`] trait, `O_DIRECT` with fallback, aligned buffers |
//! | [`pipeline`] | the reader thread feeding every device |
//! | [`writer`] | per-device writes: first MiB last, bounded dirty data, backup GPT |
//! | [`gpt`] | backup GPT relocation and DATA growth (re-exported from `basalt_bootloader::gpt_grow`, shared with machined) |
//! | [`verify`] | read-back sha256 comparison |
//! | [`firstboot`] | first-boot config validated and stored in STATE (`mke2fs -d`) |
//! | [`slot`] | `write-slot` from a signed bundle and the bootloader switch |
//! | [`flash`] | the whole-image flow over several devices |
//! | [`progress`] | indicatif bars, JSON lines |
//!
//! # Safety
//!
//! Everything that can refuse a run (config validation, bmap parsing, the device rules of
//! [`device`]) happens before a device is opened for writing. The first MiB (MBR, GPT) is
//! written last, after everything else is synced, so an interrupted or failed write leaves a
//! card that does not boot half an image.
//!
//! # Limits
//!
//! - Without a bmap, a compressed or streamed image's size is unknown until its end: a
//!   too-small device is then detected when a write passes its end (before the first MiB
//!   is written), not up front.
//! - GPT relocation assumes 512-byte sectors; MBR images are written as they are.
//! - `write-slot` checks the bundle's board against `--board`: a card does not record its
//!   board.
//! - Eject is `BLKFLSBUF` + `BLKRRPART` after a final sync; the device is not powered off.

pub mod blockdev;
pub mod bmap;
pub mod device;
pub mod firstboot;
pub mod flash;
pub use basalt_bootloader::gpt_grow as gpt;
pub mod http;
pub mod pipeline;
pub mod progress;
pub mod slot;
pub mod source;
pub mod verify;
pub mod writer;

/// Exit codes of `basalt-flash` (also listed in `--help` and docs/FLASHING.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Every device was written (and verified).
    Success = 0,
    /// An unexpected error.
    Failure = 1,
    /// Bad command line.
    Usage = 2,
    /// A safety rule refused a device; nothing was written.
    Refused = 3,
    /// The source could not be read, decompressed or downloaded, or did not match its bmap.
    SourceFailed = 4,
    /// Writing a device failed.
    WriteFailed = 5,
    /// Read-back verification found different bytes.
    VerifyFailed = 6,
    /// The first-boot config is invalid (nothing was written) or could not be stored.
    ConfigInvalid = 7,
    /// Several devices: some succeeded, some failed.
    Partial = 8,
    /// write-slot: the bundle's signature, board or size was rejected.
    BundleRejected = 9,
}

/// The exit code table as shown in `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  every device written (and verified)
  1  unexpected error
  2  bad command line
  3  a safety rule refused a device; nothing was written
  4  the source could not be read, decompressed or downloaded, or did not match its bmap
  5  writing a device failed
  6  read-back verification found different bytes
  7  the first-boot config is invalid (nothing was written) or could not be stored
  8  several devices: some succeeded, some failed
  9  write-slot: bundle signature, board or size rejected";
