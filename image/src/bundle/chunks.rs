//! The per-chunk hash index, the reuse plan against an active slot, and the streaming
//! verifier for a payload arriving in order over an unreliable link.

use std::collections::HashMap;
use std::io::{self, Read};
use std::ops::Range;

use sha2::{Digest, Sha256};

use super::{BundleError, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, Result, VerifiedManifest};

/// The sha256 of every fixed-size chunk of a payload (or of a slot), in order. The last
/// chunk is shorter when the length is not a multiple of the chunk size; it is hashed as
/// it is, without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    chunk_size: u32,
    len: u64,
    hashes: Vec<[u8; 32]>,
}

impl ChunkIndex {
    /// An index from its parts; `hashes` must hold one digest per chunk of `len` bytes.
    pub fn new(chunk_size: u32, len: u64, hashes: Vec<[u8; 32]>) -> Result<Self> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size)
            || !chunk_size.is_multiple_of(4096)
        {
            return Err(BundleError::invalid(
                "chunk index",
                format!(
                    "chunk size {chunk_size} is not a multiple of 4096 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
                ),
            ));
        }
        let count = len.div_ceil(u64::from(chunk_size));
        if hashes.len() as u64 != count {
            return Err(BundleError::invalid(
                "chunk index",
                format!(
                    "{} hashes for {len} bytes in chunks of {chunk_size} (needs {count})",
                    hashes.len()
                ),
            ));
        }
        Ok(ChunkIndex {
            chunk_size,
            len,
            hashes,
        })
    }

    /// Hashes the first `len` bytes of `data` in chunks of `chunk_size`: how a node indexes
    /// its active slot (pass the new bundle's chunk size, and the slot size recorded when
    /// that slot was installed, or the partition size). Fails if `data` ends early.
    pub fn compute(data: &mut dyn Read, chunk_size: u32, len: u64) -> io::Result<Self> {
        let invalid = |e: BundleError| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        ChunkIndex::new(chunk_size, 0, Vec::new()).map_err(invalid)?;
        let count = len.div_ceil(u64::from(chunk_size));
        let mut hashes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut buf = vec![0u8; 1 << 16];
        let mut left = len;
        while left > 0 {
            let mut h = Sha256::new();
            let mut chunk_left = left.min(u64::from(chunk_size));
            left -= chunk_left;
            while chunk_left > 0 {
                let n = buf
                    .len()
                    .min(usize::try_from(chunk_left).unwrap_or(buf.len()));
                data.read_exact(&mut buf[..n])?;
                h.update(&buf[..n]);
                chunk_left -= n as u64;
            }
            hashes.push(h.finalize().into());
        }
        ChunkIndex::new(chunk_size, len, hashes).map_err(invalid)
    }

    /// Parses a chunk table (32-byte digests back to back).
    pub fn from_table(chunk_size: u32, len: u64, table: &[u8]) -> Result<Self> {
        if !table.len().is_multiple_of(32) {
            return Err(BundleError::invalid(
                "chunk index",
                format!(
                    "chunk table of {} bytes is not a multiple of 32",
                    table.len()
                ),
            ));
        }
        let hashes = table
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect();
        ChunkIndex::new(chunk_size, len, hashes)
    }

    /// The chunk table: the digests back to back.
    pub fn table_bytes(&self) -> Vec<u8> {
        self.hashes.concat()
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Total length of the indexed data in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the indexed data is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of chunks.
    pub fn count(&self) -> u64 {
        self.hashes.len() as u64
    }

    /// All digests, in order.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// Digest of chunk `index`.
    pub fn hash(&self, index: u64) -> Option<&[u8; 32]> {
        self.hashes.get(usize::try_from(index).ok()?)
    }

    /// Byte range of chunk `index` within the data (payload-relative).
    pub fn chunk_range(&self, index: u64) -> Option<Range<u64>> {
        if index >= self.count() {
            return None;
        }
        let start = index * u64::from(self.chunk_size);
        Some(start..(start + u64::from(self.chunk_size)).min(self.len))
    }

    /// Length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u64) -> u64 {
        self.chunk_range(index).map_or(0, |r| r.end - r.start)
    }

    /// Plans an adaptive download: for every chunk of `self` (the new payload), whether a
    /// chunk with the same sha256 exists in `have` (the node's active slot, indexed with
    /// [`ChunkIndex::compute`]) and can be copied locally, or must be fetched. A chunk at
    /// the same index is preferred, else the first one with that hash. Indexes with
    /// different chunk sizes share nothing: everything is fetched.
    pub fn diff(&self, have: &ChunkIndex) -> ChunkDiff {
        let mut by_hash: HashMap<&[u8; 32], u64> = HashMap::new();
        if have.chunk_size == self.chunk_size {
            for (i, h) in have.hashes.iter().enumerate() {
                by_hash.entry(h).or_insert(i as u64);
            }
        }
        let sources = self
            .hashes
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let i = i as u64;
                let same = have.chunk_size == self.chunk_size && have.hash(i) == Some(h);
                match (same, by_hash.get(h)) {
                    (true, _) => ChunkSource::Local { chunk: i },
                    (false, Some(&j)) => ChunkSource::Local { chunk: j },
                    (false, None) => ChunkSource::Fetch,
                }
            })
            .collect();
        ChunkDiff {
            index: self.clone(),
            sources,
        }
    }
}

/// Where one chunk of a new payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkSource {
    /// Download it.
    Fetch,
    /// Copy chunk `chunk` of the active slot (same sha256).
    Local {
        /// Chunk index in the active slot (its byte offset is `chunk × chunk size`).
        chunk: u64,
    },
}

/// The result of [`ChunkIndex::diff`]: one [`ChunkSource`] per chunk of the new payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkDiff {
    index: ChunkIndex,
    sources: Vec<ChunkSource>,
}

impl ChunkDiff {
    /// One source per chunk of the new payload, in order.
    pub fn sources(&self) -> &[ChunkSource] {
        &self.sources
    }

    /// Indexes of the chunks to download.
    pub fn fetch(&self) -> Vec<u64> {
        (0..self.index.count())
            .filter(|&i| self.sources[i as usize] == ChunkSource::Fetch)
            .collect()
    }

    /// Number of chunks to download.
    pub fn fetch_count(&self) -> u64 {
        self.sources
            .iter()
            .filter(|s| **s == ChunkSource::Fetch)
            .count() as u64
    }

    /// Number of chunks copied from the active slot.
    pub fn reuse_count(&self) -> u64 {
        self.index.count() - self.fetch_count()
    }

    /// Bytes to download.
    pub fn fetch_bytes(&self) -> u64 {
        self.fetch().iter().map(|&i| self.index.chunk_len(i)).sum()
    }

    /// The payload byte ranges to download, adjacent chunks merged: add the bundle's
    /// payload offset for HTTP `Range: bytes=start-(end-1)` requests.
    pub fn fetch_ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for i in self.fetch() {
            let Some(r) = self.index.chunk_range(i) else {
                continue;
            };
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }
}

/// What a [`PayloadVerifier`] has seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Payload bytes verified, from 0: always a chunk boundary, and where a download
    /// resumes after a cut (persist it once the data before it is written and synced).
    pub verified: u64,
    /// Payload bytes received, verified or not (the next expected offset).
    pub received: u64,
    /// Payload length.
    pub total: u64,
    /// Chunks verified by this call to [`PayloadVerifier::feed`].
    pub newly_verified: Range<u64>,
    /// True once every chunk is verified.
    pub complete: bool,
}

/// Verifies a payload arriving in order, chunk by chunk, against the signed chunk table.
///
/// Feed bytes with their payload offset. A chunk whose sha256 differs is rejected with
/// [`BundleError::ChunkMismatch`] naming its index and offset, and the verifier rewinds to
/// that chunk's start ([`PayloadVerifier::resume_offset`]): fetch again from there. After
/// a cut, feed again from `resume_offset()` (a partial chunk is restarted); bytes before
/// it are skipped. Across restarts, persist `resume_offset()` and build a new verifier
/// with [`PayloadVerifier::resume`]. Since the table is signed and every chunk is checked,
/// a complete verifier proves the payload equals the signed slot image.
#[derive(Debug, Clone)]
pub struct PayloadVerifier {
    name: String,
    chunks: ChunkIndex,
    payload_offset: u64,
    verified_chunks: u64,
    in_chunk: u64,
    hasher: Sha256,
}

impl PayloadVerifier {
    /// A verifier expecting the payload from offset 0.
    pub fn new(manifest: &VerifiedManifest) -> Self {
        PayloadVerifier {
            name: format!(
                "bundle {} {}",
                manifest.manifest().board,
                manifest.manifest().version
            ),
            chunks: manifest.chunks().clone(),
            payload_offset: manifest.payload_offset(),
            verified_chunks: 0,
            in_chunk: 0,
            hasher: Sha256::new(),
        }
    }

    /// A verifier that trusts the payload before `verified` (a chunk boundary, or the
    /// payload length) to have been verified already, e.g. before a power cut.
    pub fn resume(manifest: &VerifiedManifest, verified: u64) -> Result<Self> {
        let mut v = PayloadVerifier::new(manifest);
        let size = u64::from(v.chunks.chunk_size);
        if verified > v.chunks.len || (!verified.is_multiple_of(size) && verified != v.chunks.len) {
            return Err(BundleError::invalid(
                &v.name,
                format!(
                    "cannot resume at payload offset {verified}: not a chunk boundary (chunk size {size}, payload {} bytes)",
                    v.chunks.len
                ),
            ));
        }
        v.verified_chunks = verified.div_ceil(size);
        Ok(v)
    }

    /// Payload offset up to which everything is verified (a chunk boundary).
    pub fn resume_offset(&self) -> u64 {
        (self.verified_chunks * u64::from(self.chunks.chunk_size)).min(self.chunks.len)
    }

    /// True once every chunk is verified.
    pub fn is_complete(&self) -> bool {
        self.verified_chunks == self.chunks.count()
    }

    fn progress(&self, first: u64) -> Progress {
        Progress {
            verified: self.resume_offset(),
            received: self.resume_offset() + self.in_chunk,
            total: self.chunks.len,
            newly_verified: first..self.verified_chunks,
            complete: self.is_complete(),
        }
    }

    /// Takes `data` found at payload offset `offset`. It must continue the stream
    /// (`offset` = bytes received so far), restart the current chunk (`offset` =
    /// [`PayloadVerifier::resume_offset`]) or overlap verified data (that part is skipped).
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Result<Progress> {
        let first = self.verified_chunks;
        let resume = self.resume_offset();
        let next = resume + self.in_chunk;
        let mut data = data;
        let mut offset = offset;
        if offset < resume {
            let skip = resume - offset;
            if skip >= data.len() as u64 {
                return Ok(self.progress(first));
            }
            data = &data[skip as usize..];
            offset = resume;
        }
        if offset == resume && self.in_chunk > 0 {
            self.hasher = Sha256::new();
            self.in_chunk = 0;
        } else if offset != next {
            return Err(BundleError::OutOfOrder {
                file: self.name.clone(),
                offset,
                expected: next,
                resume,
            });
        }
        let end = offset + data.len() as u64;
        if end > self.chunks.len {
            return Err(BundleError::invalid(
                &self.name,
                format!(
                    "payload data up to offset {end} runs past the payload end {}",
                    self.chunks.len
                ),
            ));
        }
        while !data.is_empty() {
            let index = self.verified_chunks;
            let want = self.chunks.chunk_len(index) - self.in_chunk;
            let take = want.min(data.len() as u64) as usize;
            self.hasher.update(&data[..take]);
            self.in_chunk += take as u64;
            data = &data[take..];
            if self.in_chunk == self.chunks.chunk_len(index) {
                let digest: [u8; 32] = self.hasher.finalize_reset().into();
                self.in_chunk = 0;
                if Some(&digest) != self.chunks.hash(index) {
                    let offset = index * u64::from(self.chunks.chunk_size);
                    return Err(BundleError::ChunkMismatch {
                        file: self.name.clone(),
                        index,
                        offset,
                        bundle_offset: self.payload_offset + offset,
                    });
                }
                self.verified_chunks += 1;
            }
        }
        Ok(self.progress(first))
    }

    /// Succeeds when every chunk is verified.
    pub fn finish(&self) -> Result<()> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(BundleError::invalid(
                &self.name,
                format!(
                    "payload incomplete: {} of {} bytes verified",
                    self.resume_offset(),
                    self.chunks.len
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(data: &[u8], chunk: u32) -> ChunkIndex {
        ChunkIndex::compute(&mut &data[..], chunk, data.len() as u64).expect("index")
    }

    #[test]
    fn short_last_chunk_and_ranges() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let idx = index(&data, 4096);
        assert_eq!(idx.count(), 3);
        assert_eq!(idx.chunk_range(2), Some(8192..10_000));
        assert_eq!(idx.chunk_range(3), None);
        let last: [u8; 32] = Sha256::digest(&data[8192..]).into();
        assert_eq!(idx.hash(2), Some(&last));
        let again = ChunkIndex::from_table(4096, 10_000, &idx.table_bytes()).expect("table");
        assert_eq!(again, idx);
    }

    #[test]
    fn diff_prefers_same_index_then_any_match() {
        let mut old = vec![0u8; 4096 * 4];
        for (i, b) in old.iter_mut().enumerate() {
            *b = (i / 4096) as u8 + 1;
        }
        let mut new = old.clone();
        new.copy_within(0..4096, 4096 * 3); // chunk 3 = old chunk 0
        new[4096 * 2] = 99; // chunk 2 changed
        let d = index(&new, 4096).diff(&index(&old, 4096));
        assert_eq!(
            d.sources(),
            &[
                ChunkSource::Local { chunk: 0 },
                ChunkSource::Local { chunk: 1 },
                ChunkSource::Fetch,
                ChunkSource::Local { chunk: 0 },
            ]
        );
        assert_eq!(d.fetch_ranges(), vec![8192..12288]);
        assert_eq!(
            (d.fetch_count(), d.reuse_count(), d.fetch_bytes()),
            (1, 3, 4096)
        );
        let other = index(&old, 8192);
        assert_eq!(index(&new, 4096).diff(&other).fetch_count(), 4);
    }
}
