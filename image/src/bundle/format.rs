//! The bundle header: prelude, manifest, signature block, chunk table and padding; parsing
//! (also from a partial download), building (for the writer) and signature verification.

use std::ops::Range;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    BundleError, ChunkIndex, FORMAT_VERSION, MAGIC, MAX_HEADER_LEN, MAX_MANIFEST_LEN,
    PAYLOAD_ALIGN, PRELUDE_LEN, Result, SIGNATURE_BLOCK_LEN, check_chunk_size,
    verifying_key_base64,
};

/// Prelude field offsets (see `docs/BUNDLE-FORMAT.md`).
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_PAYLOAD_LEN: usize = 16;
const OFF_MANIFEST_OFFSET: usize = 24;
const OFF_MANIFEST_LEN: usize = 28;
const OFF_SIGNATURE_OFFSET: usize = 32;
const OFF_TABLE_OFFSET: usize = 36;
const OFF_TABLE_LEN: usize = 40;
const OFF_RESERVED: usize = 44;

/// The signed description of a bundle, stored as compact JSON. Hashes are lower-case hex.
/// Readers ignore fields they do not know; a change old readers must not ignore bumps the
/// format version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Board name (`basalt-boards`), e.g. `rpi4`.
    pub board: String,
    /// Release version, e.g. `1.2.0`.
    pub version: String,
    /// Architecture, e.g. `aarch64`.
    pub arch: String,
    /// Build time, seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    /// Size of the slot image (= payload length) in bytes.
    pub slot_size: u64,
    /// sha256 of the whole slot image.
    #[serde(with = "hex32")]
    pub slot_sha256: [u8; 32],
    /// dm-verity root hash of the slot's root filesystem.
    #[serde(with = "hex32")]
    pub verity_root_hash: [u8; 32],
    /// Chunk size in bytes (a multiple of 4096).
    pub chunk_size: u32,
    /// Number of chunks: `ceil(slot_size / chunk_size)`.
    pub chunk_count: u64,
    /// sha256 of the chunk table that follows the signature block.
    #[serde(with = "hex32")]
    pub chunk_table_sha256: [u8; 32],
    /// Oldest installed version that may upgrade to this bundle, if limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(D::Error::custom("expected 64 lower-case hex digits"));
        }
        hex::decode_to_slice(&s, &mut out).map_err(D::Error::custom)?;
        Ok(out)
    }
}

/// Offsets of the header parts for a manifest of `manifest_len` bytes and `chunk_count`
/// chunks: (signature offset, chunk table offset, table length, header length).
pub(crate) fn layout(manifest_len: u64, chunk_count: u64) -> (u64, u64, u64, u64) {
    let signature_offset = PRELUDE_LEN + manifest_len;
    let table_offset = signature_offset + SIGNATURE_BLOCK_LEN;
    let table_len = chunk_count * 32;
    let header_len = (table_offset + table_len).next_multiple_of(PAYLOAD_ALIGN);
    (signature_offset, table_offset, table_len, header_len)
}

fn u32_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u64::from(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Builds the complete header (everything before the payload) and signs it.
pub(crate) fn build_header(
    name: &str,
    manifest: &Manifest,
    chunks: &ChunkIndex,
    key: &SigningKey,
) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(manifest)
        .map_err(|e| BundleError::invalid(name, format!("cannot encode the manifest: {e}")))?;
    let (sig_off, table_off, table_len, header_len) = layout(json.len() as u64, chunks.count());
    if json.len() as u64 > MAX_MANIFEST_LEN || header_len > MAX_HEADER_LEN {
        return Err(BundleError::invalid(
            name,
            format!(
                "header of {header_len} bytes (manifest {} bytes) exceeds the format limits",
                json.len()
            ),
        ));
    }
    let field = |v: u64| -> Result<[u8; 4]> {
        u32::try_from(v)
            .map(u32::to_le_bytes)
            .map_err(|_| BundleError::invalid(name, format!("header field {v} exceeds 32 bits")))
    };
    let mut h = Vec::with_capacity(header_len as usize);
    h.extend_from_slice(&MAGIC);
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&field(header_len)?);
    h.extend_from_slice(&manifest.slot_size.to_le_bytes());
    h.extend_from_slice(&field(PRELUDE_LEN)?);
    h.extend_from_slice(&field(json.len() as u64)?);
    h.extend_from_slice(&field(sig_off)?);
    h.extend_from_slice(&field(table_off)?);
    h.extend_from_slice(&field(table_len)?);
    h.resize(PRELUDE_LEN as usize, 0);
    h.extend_from_slice(&json);
    let signature = key.sign(&h);
    h.extend_from_slice(key.verifying_key().as_bytes());
    h.extend_from_slice(&signature.to_bytes());
    h.extend_from_slice(&chunks.table_bytes());
    h.resize(header_len as usize, 0);
    Ok(h)
}

/// A parsed, not yet verified bundle header.
#[derive(Debug, Clone)]
pub struct BundleHeader {
    name: String,
    header_len: u64,
    manifest: Manifest,
    signed: Vec<u8>,
    signer: [u8; 32],
    signature: [u8; 64],
    chunks: ChunkIndex,
}

impl BundleHeader {
    /// Parses a header from the first bytes of a bundle (more is fine: the payload start is
    /// ignored). Too few bytes give [`BundleError::NeedMoreBytes`] with the total needed
    /// from offset 0: 64 for the prelude, then the header length it announces. Checks the
    /// structure, the manifest's consistency and the chunk table's hash, not the signature
    /// ([`BundleHeader::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        BundleHeader::parse_named(bytes, "bundle")
    }

    /// [`BundleHeader::parse`], naming the bundle `name` (a path or URL) in errors.
    pub fn parse_named(bytes: &[u8], name: &str) -> Result<Self> {
        let need = |needed: u64| BundleError::NeedMoreBytes {
            file: name.to_string(),
            needed,
            have: bytes.len() as u64,
        };
        if bytes.len() < MAGIC.len() {
            return Err(need(PRELUDE_LEN));
        }
        if bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic {
                file: name.to_string(),
                found: bytes[..8].escape_ascii().to_string(),
            });
        }
        if (bytes.len() as u64) < PRELUDE_LEN {
            return Err(need(PRELUDE_LEN));
        }
        let version = u32_at(bytes, OFF_VERSION);
        if version != u64::from(FORMAT_VERSION) {
            return Err(BundleError::UnsupportedVersion {
                file: name.to_string(),
                version: version as u32,
            });
        }
        let bad = |off: usize, reason: String| BundleError::malformed(name, off as u64, reason);
        let header_len = u32_at(bytes, OFF_HEADER_LEN);
        let payload_len = u64_at(bytes, OFF_PAYLOAD_LEN);
        let manifest_off = u32_at(bytes, OFF_MANIFEST_OFFSET);
        let manifest_len = u32_at(bytes, OFF_MANIFEST_LEN);
        if let Some(i) = bytes[OFF_RESERVED..PRELUDE_LEN as usize]
            .iter()
            .position(|&b| b != 0)
        {
            return Err(bad(
                OFF_RESERVED + i,
                "reserved prelude byte is not zero".into(),
            ));
        }
        if manifest_off != PRELUDE_LEN {
            return Err(bad(
                OFF_MANIFEST_OFFSET,
                format!("manifest offset {manifest_off}, expected 64"),
            ));
        }
        if manifest_len == 0 || manifest_len > MAX_MANIFEST_LEN {
            return Err(bad(
                OFF_MANIFEST_LEN,
                format!("manifest length {manifest_len} out of range"),
            ));
        }
        let table_len = u32_at(bytes, OFF_TABLE_LEN);
        if !table_len.is_multiple_of(32) {
            return Err(bad(
                OFF_TABLE_LEN,
                format!("chunk table length {table_len} is not a multiple of 32"),
            ));
        }
        let (sig_off, table_off, _, expect_header) = layout(manifest_len, table_len / 32);
        for (off, found, want, what) in [
            (
                OFF_SIGNATURE_OFFSET,
                u32_at(bytes, OFF_SIGNATURE_OFFSET),
                sig_off,
                "signature offset",
            ),
            (
                OFF_TABLE_OFFSET,
                u32_at(bytes, OFF_TABLE_OFFSET),
                table_off,
                "chunk table offset",
            ),
            (OFF_HEADER_LEN, header_len, expect_header, "header length"),
        ] {
            if found != want {
                return Err(bad(
                    off,
                    format!(
                        "{what} is {found}, but the manifest length {manifest_len} and chunk table length {table_len} give {want}"
                    ),
                ));
            }
        }
        if header_len > MAX_HEADER_LEN {
            return Err(bad(
                OFF_HEADER_LEN,
                format!("header length {header_len} exceeds {MAX_HEADER_LEN}"),
            ));
        }
        if (bytes.len() as u64) < header_len {
            return Err(need(header_len));
        }
        let (sig_off, table_off, header_len) =
            (sig_off as usize, table_off as usize, header_len as usize);
        let table_end = table_off + table_len as usize;
        if let Some(i) = bytes[table_end..header_len].iter().position(|&b| b != 0) {
            return Err(bad(
                table_end + i,
                "padding before the payload is not zero".into(),
            ));
        }
        let json = &bytes[PRELUDE_LEN as usize..sig_off];
        let manifest: Manifest = serde_json::from_slice(json).map_err(|e| {
            let at = if e.line() == 1 {
                e.column().saturating_sub(1)
            } else {
                0
            };
            bad(
                PRELUDE_LEN as usize + at,
                format!("invalid manifest JSON: {e}"),
            )
        })?;
        check_manifest(name, &manifest, payload_len, table_len)?;
        let table = &bytes[table_off..table_end];
        let digest: [u8; 32] = Sha256::digest(table).into();
        if digest != manifest.chunk_table_sha256 {
            return Err(BundleError::ChunkTableMismatch {
                file: name.to_string(),
                offset: table_off as u64,
            });
        }
        let chunks = ChunkIndex::from_table(manifest.chunk_size, manifest.slot_size, table)
            .map_err(|e| bad(table_off, e.to_string()))?;
        let mut signer = [0u8; 32];
        signer.copy_from_slice(&bytes[sig_off..sig_off + 32]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[sig_off + 32..sig_off + 96]);
        Ok(BundleHeader {
            name: name.to_string(),
            header_len: header_len as u64,
            manifest,
            signed: bytes[..sig_off].to_vec(),
            signer,
            signature,
            chunks,
        })
    }

    /// Checks the signature against `trusted`: the signer must be one of them
    /// ([`BundleError::UntrustedKey`]) and the signature must verify (strict Ed25519,
    /// [`BundleError::BadSignature`]).
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<VerifiedManifest> {
        let sig_off = self.signed.len() as u64;
        let Some(key) = trusted.iter().find(|k| k.as_bytes() == &self.signer) else {
            return Err(BundleError::UntrustedKey {
                file: self.name.clone(),
                key: base64_of(&self.signer),
                offset: sig_off,
            });
        };
        let signature = Signature::from_bytes(&self.signature);
        key.verify_strict(&self.signed, &signature)
            .map_err(|_| BundleError::BadSignature {
                file: self.name.clone(),
                offset: sig_off + 32,
                key: verifying_key_base64(key),
            })?;
        Ok(VerifiedManifest {
            manifest: self.manifest.clone(),
            chunks: self.chunks.clone(),
            signer: *key,
            payload_offset: self.header_len,
            signature: self.signature,
        })
    }

    /// The bundle format version.
    pub fn format_version(&self) -> u32 {
        FORMAT_VERSION
    }

    /// Header length = offset of the payload (a multiple of 4096).
    pub fn header_len(&self) -> u64 {
        self.header_len
    }

    /// Offset of the payload in the bundle.
    pub fn payload_offset(&self) -> u64 {
        self.header_len
    }

    /// Payload length (= slot size).
    pub fn payload_len(&self) -> u64 {
        self.manifest.slot_size
    }

    /// Length of the whole bundle file.
    pub fn bundle_len(&self) -> u64 {
        self.header_len + self.manifest.slot_size
    }

    /// The manifest, **not verified**: use [`BundleHeader::verify`] before trusting it.
    pub fn unverified_manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The claimed signer's public key, base64.
    pub fn signer_base64(&self) -> String {
        base64_of(&self.signer)
    }

    /// Offset of the signature block.
    pub fn signature_offset(&self) -> u64 {
        self.signed.len() as u64
    }

    /// Byte range of payload chunk `index` in the bundle file (for HTTP Range requests).
    pub fn payload_range(&self, index: u64) -> Option<Range<u64>> {
        let r = self.chunks.chunk_range(index)?;
        Some(self.header_len + r.start..self.header_len + r.end)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}

fn base64_of(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn check_manifest(name: &str, m: &Manifest, payload_len: u64, table_len: u64) -> Result<()> {
    let at = PRELUDE_LEN;
    for (field, value) in [
        ("board", &m.board),
        ("version", &m.version),
        ("arch", &m.arch),
    ] {
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(BundleError::malformed(
                name,
                at,
                format!("manifest {field} {value:?} is empty or has control characters"),
            ));
        }
    }
    check_chunk_size(name, at, m.chunk_size)?;
    if m.slot_size == 0 || m.slot_size != payload_len {
        return Err(BundleError::malformed(
            name,
            OFF_PAYLOAD_LEN as u64,
            format!(
                "payload length {payload_len} differs from the manifest slot_size {}",
                m.slot_size
            ),
        ));
    }
    let count = m.slot_size.div_ceil(u64::from(m.chunk_size));
    if m.chunk_count != count || table_len != count * 32 {
        return Err(BundleError::malformed(
            name,
            OFF_TABLE_LEN as u64,
            format!(
                "{} chunks in the manifest, {} in the table, {count} for {} bytes in chunks of {}",
                m.chunk_count,
                table_len / 32,
                m.slot_size,
                m.chunk_size
            ),
        ));
    }
    Ok(())
}

/// A manifest whose signature verified against a trusted key, with its chunk index. Only
/// [`BundleHeader::verify`] (or the writer) makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    chunks: ChunkIndex,
    signer: VerifyingKey,
    payload_offset: u64,
    signature: [u8; 64],
}

impl VerifiedManifest {
    pub(crate) fn from_signed(
        manifest: Manifest,
        chunks: ChunkIndex,
        signer: VerifyingKey,
        payload_offset: u64,
        signature: [u8; 64],
    ) -> Self {
        VerifiedManifest {
            manifest,
            chunks,
            signer,
            payload_offset,
            signature,
        }
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The verified chunk index of the payload.
    pub fn chunks(&self) -> &ChunkIndex {
        &self.chunks
    }

    /// The key that signed it.
    pub fn signer(&self) -> &VerifyingKey {
        &self.signer
    }

    /// Offset of the payload in the bundle.
    pub fn payload_offset(&self) -> u64 {
        self.payload_offset
    }

    /// Payload length (= slot size).
    pub fn payload_len(&self) -> u64 {
        self.manifest.slot_size
    }

    /// Length of the whole bundle file.
    pub fn bundle_len(&self) -> u64 {
        self.payload_offset + self.manifest.slot_size
    }

    /// Byte range of payload chunk `index` in the bundle file (for HTTP Range requests).
    pub fn payload_range(&self, index: u64) -> Option<Range<u64>> {
        let r = self.chunks.chunk_range(index)?;
        Some(self.payload_offset + r.start..self.payload_offset + r.end)
    }

    /// The signature bytes (they identify this bundle's header).
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
}
