//! Why an upgrade was refused or failed ([`UpgradeError`]), shared by the engine and the
//! API handlers.

use super::device::DeviceError;
use super::engine::MAX_TRIES;
use super::progress::ProgressError;
use super::version::VersionError;
use basalt_bootloader::{BootloaderError, Slot};
use basalt_image::bundle::BundleError;

/// Why an upgrade was refused or failed. Refusals happen before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Another upgrade is running.
    #[error("refused: another upgrade is running on this node; wait for it or interrupt it")]
    Busy,
    /// The node trusts no signing key.
    #[error(
        "refused: no trusted update signing keys: apply a configuration with an UpdateConfig document listing trustedSigningKeys first"
    )]
    NoTrustedKeys,
    /// The stored configuration could not be read for the update settings.
    #[error("refused: reading the update settings of the stored configuration: {0}")]
    Config(String),
    /// The bundle is malformed, untrusted, badly signed, or a chunk does not match.
    #[error("bundle refused: {0}")]
    Bundle(#[from] BundleError),
    /// The bundle is for another board.
    #[error("refused: the bundle is for board {bundle:?}, this node is a {node:?}")]
    WrongBoard {
        /// The bundle's board.
        bundle: String,
        /// The node's board.
        node: String,
    },
    /// The bundle is not newer than the booted system.
    #[error(
        "refused: bundle version {bundle} is not newer than the booted version {booted} (pass allow_downgrade / --allow-downgrade to install it anyway)"
    )]
    NotNewer {
        /// The bundle's version.
        bundle: String,
        /// The booted version.
        booted: String,
    },
    /// The booted version is older than the bundle's `min_version`.
    #[error(
        "refused: bundle version {bundle} needs at least version {min_version} installed, this node runs {booted}; upgrade to an intermediate release first"
    )]
    TooOld {
        /// The bundle's version.
        bundle: String,
        /// The bundle's min_version.
        min_version: String,
        /// The booted version.
        booted: String,
    },
    /// A version string cannot be compared.
    #[error("refused: {0}")]
    Version(#[from] VersionError),
    /// The booted slot is still on trial.
    #[error(
        "refused: the booted slot {booted} is on trial and not committed yet; an upgrade now would overwrite slot {target}, the only known-good fallback. Wait for the health check to commit it, or roll back"
    )]
    TrialBoot {
        /// The booted slot.
        booted: Slot,
        /// The slot an upgrade would write.
        target: Slot,
    },
    /// The target slot is the one running.
    #[error("refused: the target slot {0} is the booted slot")]
    TargetIsBooted(Slot),
    /// Tries out of range.
    #[error("refused: tries {0} is out of range 1..={MAX_TRIES}")]
    BadTries(u32),
    /// The slot partition is smaller than the image.
    #[error(
        "refused: slot {slot} ({device}) has {size} bytes, the bundle's slot image needs {needed}"
    )]
    SlotTooSmall {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// Its size.
        size: u64,
        /// The image size.
        needed: u64,
    },
    /// Data does not continue the bundle where the node is.
    #[error("bundle data at offset {offset} leaves a gap: the node continues at offset {expected}")]
    Gap {
        /// Offset of the data.
        offset: u64,
        /// Where the node is.
        expected: u64,
    },
    /// Data past the end of the bundle.
    #[error("bundle data up to offset {end} runs past the bundle end at {bundle_len}")]
    PastEnd {
        /// End of the data.
        end: u64,
        /// Length of the bundle.
        bundle_len: u64,
    },
    /// The bundle ended before the payload was complete.
    #[error(
        "bundle incomplete: {verified} of {total} payload bytes verified and written (resume from bundle offset {resume_offset})"
    )]
    Incomplete {
        /// Payload bytes verified.
        verified: u64,
        /// Payload size.
        total: u64,
        /// Bundle offset to resume from.
        resume_offset: u64,
    },
    /// The read-back found a chunk that differs from what was verified and written.
    #[error(
        "slot {slot} ({device}): read-back mismatch in chunk {chunk} at offset {offset}: the slot does not hold the signed image; not activated (the next attempt rewrites from offset {offset})"
    )]
    ReadbackMismatch {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// Index of the first bad chunk.
        chunk: u64,
        /// Its offset in the slot.
        offset: u64,
    },
    /// The whole slot hash differs from the signed `slot_sha256`.
    #[error(
        "slot {slot} ({device}): read-back sha256 {found} differs from the signed slot_sha256; not activated"
    )]
    SlotHashMismatch {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// The hash found.
        found: String,
    },
    /// A step was called out of order.
    #[error("upgrade: {0}")]
    State(&'static str),
    /// The slot device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The progress file failed.
    #[error(transparent)]
    Progress(#[from] ProgressError),
    /// The bootloader refused or failed.
    #[error("bootloader: {0}")]
    Bootloader(#[from] BootloaderError),
    /// The reboot failed.
    #[error("reboot into the new slot: {0}")]
    Reboot(String),
}

impl UpgradeError {
    /// Whether the upgrade was refused by a check (as opposed to failing while running).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            UpgradeError::Busy
                | UpgradeError::NoTrustedKeys
                | UpgradeError::Config(_)
                | UpgradeError::WrongBoard { .. }
                | UpgradeError::NotNewer { .. }
                | UpgradeError::TooOld { .. }
                | UpgradeError::Version(_)
                | UpgradeError::TrialBoot { .. }
                | UpgradeError::TargetIsBooted(_)
                | UpgradeError::BadTries(_)
                | UpgradeError::SlotTooSmall { .. }
        )
    }
}
