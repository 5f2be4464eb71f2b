//! Writes a bundle from a slot image: one streaming pass over the slot, a temporary file
//! next to the output, fsync, rename, fsync of the directory.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha256};

use super::format::{build_header, layout};
use super::{
    BundleError, ChunkIndex, DEFAULT_CHUNK_SIZE, MAX_HEADER_LEN, Manifest, Result,
    VerifiedManifest, check_chunk_size,
};

/// What the caller says about a bundle; sizes and hashes are computed by the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleMeta {
    /// Board name.
    pub board: String,
    /// Release version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Build time, seconds since the epoch: pass `SOURCE_DATE_EPOCH` for reproducible
    /// bundles.
    pub created: u64,
    /// dm-verity root hash of the slot's root filesystem.
    pub verity_root_hash: [u8; 32],
    /// Oldest installed version that may upgrade to this bundle, if limited.
    pub min_version: Option<String>,
    /// Chunk size ([`DEFAULT_CHUNK_SIZE`] unless there is a reason).
    pub chunk_size: u32,
}

impl BundleMeta {
    /// Metadata with the default chunk size and no minimum version.
    pub fn new(
        board: impl Into<String>,
        version: impl Into<String>,
        arch: impl Into<String>,
        created: u64,
        verity_root_hash: [u8; 32],
    ) -> Self {
        BundleMeta {
            board: board.into(),
            version: version.into(),
            arch: arch.into(),
            created,
            verity_root_hash,
            min_version: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    fn manifest(&self, slot_size: u64, hashes: ([u8; 32], [u8; 32]), count: u64) -> Manifest {
        Manifest {
            board: self.board.clone(),
            version: self.version.clone(),
            arch: self.arch.clone(),
            created: self.created,
            slot_size,
            slot_sha256: hashes.0,
            verity_root_hash: self.verity_root_hash,
            chunk_size: self.chunk_size,
            chunk_count: count,
            chunk_table_sha256: hashes.1,
            min_version: self.min_version.clone(),
        }
    }
}

/// Writes bundles.
#[derive(Debug, Clone, Copy, Default)]
pub struct BundleWriter;

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl BundleWriter {
    /// Writes the bundle for `slot_image` to `out`, signed with `key`, and returns its
    /// verified manifest. The slot image is read once, chunk by chunk; the bundle is built
    /// in a temporary file beside `out`, fsynced and renamed over it. Same inputs give a
    /// byte-identical bundle.
    pub fn write(
        slot_image: &Path,
        meta: &BundleMeta,
        key: &SigningKey,
        out: &Path,
    ) -> Result<VerifiedManifest> {
        let slot_name = slot_image.display().to_string();
        let out_name = out.display().to_string();
        for (field, value) in [
            ("board", &meta.board),
            ("version", &meta.version),
            ("arch", &meta.arch),
        ] {
            if value.is_empty() || value.chars().any(char::is_control) {
                return Err(BundleError::invalid(
                    &out_name,
                    format!("bundle {field} {value:?} is empty or has control characters"),
                ));
            }
        }
        if let Some(v) = &meta.min_version
            && (v.is_empty() || v.chars().any(char::is_control))
        {
            return Err(BundleError::invalid(
                &out_name,
                format!("bundle min_version {v:?} is empty or has control characters"),
            ));
        }
        check_chunk_size(&out_name, 0, meta.chunk_size)
            .map_err(|e| BundleError::invalid(&out_name, e.to_string()))?;
        let mut slot = File::open(slot_image).map_err(|e| BundleError::io(&slot_name, 0, e))?;
        let slot_size = slot
            .metadata()
            .map_err(|e| BundleError::io(&slot_name, 0, e))?
            .len();
        if slot_size == 0 {
            return Err(BundleError::invalid(&slot_name, "the slot image is empty"));
        }
        let count = slot_size.div_ceil(u64::from(meta.chunk_size));
        // Hashes are fixed-width hex, so a manifest with placeholder hashes has the final
        // length: the payload offset is known before the slot is read.
        let placeholder = serde_json::to_vec(&meta.manifest(slot_size, ([0; 32], [0; 32]), count))
            .map_err(|e| BundleError::invalid(&out_name, format!("cannot encode manifest: {e}")))?;
        let header_len = layout(placeholder.len() as u64, count).3;
        if header_len > MAX_HEADER_LEN {
            return Err(BundleError::invalid(
                &out_name,
                format!("header of {header_len} bytes: use a larger chunk size"),
            ));
        }

        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = out
            .file_name()
            .ok_or_else(|| BundleError::invalid(&out_name, "the output path has no file name"))?;
        let tmp_path = dir.join(format!(
            ".{}.tmp-{}",
            file_name.to_string_lossy(),
            std::process::id()
        ));
        let tmp_name = tmp_path.display().to_string();
        let _ = fs::remove_file(&tmp_path);
        let mut guard = TempFile(Some(tmp_path.clone()));
        let mut tmp = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .map_err(|e| BundleError::io(&tmp_name, 0, e))?;

        tmp.seek(SeekFrom::Start(header_len))
            .map_err(|e| BundleError::io(&tmp_name, header_len, e))?;
        let (chunks, slot_sha256) = copy_hashing(
            &mut slot,
            &slot_name,
            &mut tmp,
            &tmp_name,
            meta.chunk_size,
            slot_size,
            header_len,
        )?;
        let table_sha256: [u8; 32] = Sha256::digest(chunks.table_bytes()).into();
        let manifest = meta.manifest(slot_size, (slot_sha256, table_sha256), count);
        let header = build_header(&out_name, &manifest, &chunks, key)?;
        if header.len() as u64 != header_len {
            return Err(BundleError::invalid(
                &out_name,
                format!(
                    "internal: header is {} bytes, planned {header_len}",
                    header.len()
                ),
            ));
        }
        tmp.seek(SeekFrom::Start(0))
            .and_then(|_| tmp.write_all(&header))
            .and_then(|()| tmp.sync_all())
            .map_err(|e| BundleError::io(&tmp_name, 0, e))?;
        drop(tmp);
        fs::rename(&tmp_path, out).map_err(|e| BundleError::io(&out_name, 0, e))?;
        guard.0 = None;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BundleError::io(&dir.display().to_string(), 0, e))?;

        let mut signature = [0u8; 64];
        let sig_off = layout(placeholder.len() as u64, count).0 as usize + 32;
        signature.copy_from_slice(&header[sig_off..sig_off + 64]);
        Ok(VerifiedManifest::from_signed(
            manifest,
            chunks,
            key.verifying_key(),
            header_len,
            signature,
        ))
    }
}

/// Copies `len` bytes from `src` to `dst` (positioned at `dst_base`), hashing every chunk
/// and the whole; fails if `src` is shorter or longer than `len` (it changed under us).
fn copy_hashing(
    src: &mut File,
    src_name: &str,
    dst: &mut File,
    dst_name: &str,
    chunk_size: u32,
    len: u64,
    dst_base: u64,
) -> Result<(ChunkIndex, [u8; 32])> {
    let mut total = Sha256::new();
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; chunk_size as usize];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(u64::from(chunk_size)) as usize;
        src.read_exact(&mut buf[..n])
            .map_err(|e| BundleError::io(src_name, pos, e))?;
        total.update(&buf[..n]);
        hashes.push(Sha256::digest(&buf[..n]).into());
        dst.write_all(&buf[..n])
            .map_err(|e| BundleError::io(dst_name, dst_base + pos, e))?;
        pos += n as u64;
    }
    let mut probe = [0u8; 1];
    if src
        .read(&mut probe)
        .map_err(|e| BundleError::io(src_name, pos, e))?
        != 0
    {
        return Err(BundleError::invalid(
            src_name,
            "the slot image grew while it was read",
        ));
    }
    let index = ChunkIndex::new(chunk_size, len, hashes)?;
    Ok((index, total.finalize().into()))
}
