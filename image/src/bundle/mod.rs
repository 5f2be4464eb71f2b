//! Signed update bundles: one system slot image for one board and version, signed with
//! Ed25519, with a per-chunk sha256 index so a node can download it over an unreliable
//! link with HTTP Range requests, verify every chunk as it arrives, resume after a cut and
//! reuse chunks it already has in its active slot. The byte-by-byte specification is
//! `docs/BUNDLE-FORMAT.md`; in short (all integers little-endian):
//!
//! ```text
//! 0        64 B   prelude: "BASALTB1", format version (1), header length, payload length,
//!                 offsets and lengths of the parts below, reserved zeros
//! 64       M B    manifest: compact JSON (board, version, arch, created, slot size and
//!                 sha256, verity root hash, chunk size and count, sha256 of the chunk
//!                 table, optional min_version)
//! 64+M     96 B   signature block: signer's Ed25519 public key (32) ‖ signature (64)
//!                 over bytes [0, 64+M) (prelude and manifest)
//! 160+M    32·N   chunk table: sha256 of each payload chunk (its hash is in the manifest)
//!          …      zero padding up to the header length, a multiple of 4096
//! H        S B    payload: the raw slot image, S = slot size, chunk i = [i·C, (i+1)·C)
//! ```
//!
//! Trust chain: the signature covers the prelude and the manifest; the manifest carries the
//! sha256 of the chunk table; the table carries the sha256 of every payload chunk. Padding
//! must be zero and the file must end exactly after the payload, so every byte of a bundle
//! is checked by [`BundleReader::verify`] and [`BundleReader::verify_payload`].
//!
//! * Writing: [`BundleWriter::write`] streams the slot image once (never whole in memory)
//!   into a temporary file, fsyncs and renames it. The output is a function of the inputs
//!   only (Ed25519 signatures are deterministic; `created` comes from the caller, normally
//!   `SOURCE_DATE_EPOCH`), so builds are reproducible.
//! * Reading a file: [`BundleReader::open`], [`BundleReader::verify`] with the trusted
//!   keys, then [`BundleReader::verify_payload`] or [`BundleReader::copy_payload`].
//! * A node over HTTP: fetch the first bytes, [`BundleHeader::parse`] (it answers
//!   [`BundleError::NeedMoreBytes`] with the total it needs), [`BundleHeader::verify`],
//!   [`ChunkIndex::compute`] over the active slot and [`ChunkIndex::diff`] to know which
//!   chunks to fetch, then feed the payload in order to a [`PayloadVerifier`], which
//!   rejects a bad chunk and tells where to resume.

mod chunks;
mod format;
mod keys;
mod reader;
mod writer;

pub use chunks::{ChunkDiff, ChunkIndex, ChunkSource, PayloadVerifier, Progress};
pub use format::{BundleHeader, Manifest, VerifiedManifest};
pub use keys::{
    generate_signing_key, load_signing_key, load_verifying_key, parse_verifying_key,
    verifying_key_base64, verifying_key_pem,
};
pub use reader::BundleReader;
pub use writer::{BundleMeta, BundleWriter};

pub use ed25519_dalek::{SigningKey, VerifyingKey};

use std::io;

/// The magic at offset 0 of every bundle.
pub const MAGIC: [u8; 8] = *b"BASALTB1";
/// The bundle format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the fixed prelude at the start of a bundle; the manifest follows it.
pub const PRELUDE_LEN: u64 = 64;
/// Size of the signature block: the signer's public key (32) and the signature (64).
pub const SIGNATURE_BLOCK_LEN: u64 = 96;
/// The payload starts at a multiple of this (and so does every chunk).
pub const PAYLOAD_ALIGN: u64 = 4096;
/// Chunk size used when the caller does not choose one: 1 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Smallest chunk size (chunks are whole 4096-byte blocks).
pub const MIN_CHUNK_SIZE: u32 = 4096;
/// Largest chunk size: a chunk is buffered or re-fetched whole.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Largest manifest a reader accepts.
pub const MAX_MANIFEST_LEN: u64 = 1 << 20;
/// Largest header (prelude to padding) a reader accepts: 64 MiB, i.e. a chunk table for
/// two million chunks (2 TiB of payload with 1 MiB chunks).
pub const MAX_HEADER_LEN: u64 = 64 << 20;

/// A failure writing, reading or verifying a bundle. `file` names the bundle (or the
/// input: slot image, key file); offsets are byte offsets in that file unless the variant
/// says "payload offset".
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing failed.
    #[error("{file}: I/O error at offset {offset}: {source}")]
    Io {
        /// The file.
        file: String,
        /// Where in the file.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// A partial header: fetch at least `needed` bytes from offset 0 and parse again.
    #[error("{file}: need more bytes: {needed} (have {have})")]
    NeedMoreBytes {
        /// The bundle.
        file: String,
        /// Bytes needed from offset 0.
        needed: u64,
        /// Bytes given.
        have: u64,
    },
    /// The file does not start with [`MAGIC`].
    #[error(
        "{file}: not a Basalt update bundle: magic at offset 0 is {found:?}, expected \"BASALTB1\""
    )]
    BadMagic {
        /// The file.
        file: String,
        /// The 8 bytes found, escaped.
        found: String,
    },
    /// A format version this code does not know.
    #[error(
        "{file}: unsupported bundle format version {version} at offset 8 (this reader knows version {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The bundle.
        file: String,
        /// The version found.
        version: u32,
    },
    /// A header field, the manifest or the padding is malformed or inconsistent.
    #[error("{file}: malformed bundle header at offset {offset}: {reason}")]
    Malformed {
        /// The bundle.
        file: String,
        /// Offset of the offending field.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The file ends before the end of the payload the header announces.
    #[error("{file}: truncated bundle: {len} bytes, the header says {expected}")]
    Truncated {
        /// The bundle.
        file: String,
        /// Actual length.
        len: u64,
        /// Length the header announces (or the length needed to read the header).
        expected: u64,
    },
    /// Bytes follow the payload.
    #[error("{file}: {extra} bytes of trailing data after the payload end at offset {offset}")]
    TrailingData {
        /// The bundle.
        file: String,
        /// End of the payload.
        offset: u64,
        /// How many bytes follow it.
        extra: u64,
    },
    /// The bundle is signed by a key that is not among the trusted keys.
    #[error("{file}: signed by untrusted key {key} (signature block at offset {offset})")]
    UntrustedKey {
        /// The bundle.
        file: String,
        /// The signer's public key, base64.
        key: String,
        /// Offset of the signature block.
        offset: u64,
    },
    /// The signature does not verify: the prelude or manifest was modified, or the
    /// signature itself was.
    #[error(
        "{file}: bad signature at offset {offset}: the header or manifest was modified after signing by {key}"
    )]
    BadSignature {
        /// The bundle.
        file: String,
        /// Offset of the signature.
        offset: u64,
        /// The claimed signer's public key, base64.
        key: String,
    },
    /// The chunk table does not match the sha256 in the manifest.
    #[error(
        "{file}: chunk hash table at offset {offset} does not match the manifest's chunk_table_sha256"
    )]
    ChunkTableMismatch {
        /// The bundle.
        file: String,
        /// Offset of the chunk table.
        offset: u64,
    },
    /// A payload chunk does not match its hash in the chunk table.
    #[error(
        "{file}: chunk {index} at payload offset {offset} (bundle offset {bundle_offset}) does not match its signed sha256"
    )]
    ChunkMismatch {
        /// The bundle.
        file: String,
        /// Chunk index.
        index: u64,
        /// Offset of the chunk in the payload.
        offset: u64,
        /// Offset of the chunk in the bundle file.
        bundle_offset: u64,
    },
    /// The whole payload does not match the manifest's `slot_sha256`.
    #[error("{file}: payload at offset {offset} does not match the manifest's slot_sha256")]
    PayloadMismatch {
        /// The bundle.
        file: String,
        /// Offset of the payload.
        offset: u64,
    },
    /// Payload bytes fed out of order to a [`PayloadVerifier`].
    #[error(
        "{file}: payload data at offset {offset} does not continue the stream: expected offset {expected} (or resume at chunk boundary {resume})"
    )]
    OutOfOrder {
        /// The bundle.
        file: String,
        /// Payload offset given.
        offset: u64,
        /// Payload offset expected next.
        expected: u64,
        /// Last verified chunk boundary, where a resumed download may restart.
        resume: u64,
    },
    /// A key file or key text could not be read or used.
    #[error("{file}: {reason}")]
    Key {
        /// The key file (or `<text>`).
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Invalid input or use: metadata, chunk size, a resume offset, an incomplete payload.
    #[error("{file}: {reason}")]
    Invalid {
        /// The file concerned.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl BundleError {
    /// For [`BundleError::NeedMoreBytes`], how many bytes from offset 0 are needed.
    pub fn needed_bytes(&self) -> Option<u64> {
        match self {
            BundleError::NeedMoreBytes { needed, .. } => Some(*needed),
            _ => None,
        }
    }

    pub(crate) fn io(file: &str, offset: u64, source: io::Error) -> Self {
        BundleError::Io {
            file: file.to_string(),
            offset,
            source,
        }
    }

    pub(crate) fn malformed(file: &str, offset: u64, reason: impl Into<String>) -> Self {
        BundleError::Malformed {
            file: file.to_string(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(file: &str, reason: impl Into<String>) -> Self {
        BundleError::Invalid {
            file: file.to_string(),
            reason: reason.into(),
        }
    }
}

/// Result of the bundle functions.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;

/// Checks a chunk size: a multiple of 4096 between [`MIN_CHUNK_SIZE`] and
/// [`MAX_CHUNK_SIZE`].
pub(crate) fn check_chunk_size(file: &str, offset: u64, chunk_size: u32) -> Result<()> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
        || !u64::from(chunk_size).is_multiple_of(PAYLOAD_ALIGN)
    {
        return Err(BundleError::malformed(
            file,
            offset,
            format!(
                "chunk size {chunk_size} is not a multiple of 4096 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            ),
        ));
    }
    Ok(())
}
