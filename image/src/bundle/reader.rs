//! Reads a complete bundle from a file (or any `Read + Seek`): header, signature, payload.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use super::{BundleError, BundleHeader, PRELUDE_LEN, Result, VerifiedManifest};

/// A bundle opened for reading. Opening parses the header and checks the file length;
/// [`BundleReader::verify`] checks the signature; the payload is checked chunk by chunk by
/// [`BundleReader::verify_payload`], [`BundleReader::copy_payload`] or
/// [`BundleReader::read_chunk`].
#[derive(Debug)]
pub struct BundleReader<R> {
    inner: R,
    header: BundleHeader,
}

impl BundleReader<File> {
    /// Opens the bundle file at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| BundleError::io(&name, 0, e))?;
        BundleReader::from_reader(file, &name)
    }
}

fn read_prefix(r: &mut impl Read, name: &str, len: u64, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    r.take(len)
        .read_to_end(buf)
        .map_err(|e| BundleError::io(name, 0, e))?;
    Ok(())
}

impl<R: Read + Seek> BundleReader<R> {
    /// Reads and parses the header of the bundle in `inner` (from its start), named `name`
    /// in errors, and checks that the file ends exactly after the payload.
    pub fn from_reader(mut inner: R, name: &str) -> Result<Self> {
        let len = inner
            .seek(SeekFrom::End(0))
            .and_then(|l| inner.seek(SeekFrom::Start(0)).map(|_| l))
            .map_err(|e| BundleError::io(name, 0, e))?;
        let mut buf = Vec::new();
        read_prefix(&mut inner, name, PRELUDE_LEN, &mut buf)?;
        let header = match BundleHeader::parse_named(&buf, name) {
            Ok(h) => h,
            Err(BundleError::NeedMoreBytes { needed, .. }) if needed > len => {
                return Err(BundleError::Truncated {
                    file: name.to_string(),
                    len,
                    expected: needed,
                });
            }
            Err(BundleError::NeedMoreBytes { needed, .. }) => {
                inner
                    .seek(SeekFrom::Start(0))
                    .map_err(|e| BundleError::io(name, 0, e))?;
                read_prefix(&mut inner, name, needed, &mut buf)?;
                match BundleHeader::parse_named(&buf, name) {
                    Err(BundleError::NeedMoreBytes { needed, have, .. }) => {
                        return Err(BundleError::Truncated {
                            file: name.to_string(),
                            len: have,
                            expected: needed,
                        });
                    }
                    other => other?,
                }
            }
            Err(e) => return Err(e),
        };
        let end = header.bundle_len();
        if len < end {
            return Err(BundleError::Truncated {
                file: name.to_string(),
                len,
                expected: end,
            });
        }
        if len > end {
            return Err(BundleError::TrailingData {
                file: name.to_string(),
                offset: end,
                extra: len - end,
            });
        }
        Ok(BundleReader { inner, header })
    }

    /// The parsed (not yet verified) header.
    pub fn header(&self) -> &BundleHeader {
        &self.header
    }

    /// Checks the signature against the trusted keys (see [`BundleHeader::verify`]).
    pub fn verify(&self, trusted: &[VerifyingKey]) -> Result<VerifiedManifest> {
        self.header.verify(trusted)
    }

    /// Byte range of payload chunk `index` in the bundle file.
    pub fn payload_range(&self, index: u64) -> Option<Range<u64>> {
        self.header.payload_range(index)
    }

    fn check_same(&self, manifest: &VerifiedManifest) -> Result<()> {
        if manifest.signature() != self.header.signature()
            || manifest.payload_offset() != self.header.payload_offset()
        {
            return Err(BundleError::invalid(
                self.header.name(),
                "the verified manifest belongs to another bundle",
            ));
        }
        Ok(())
    }

    /// Reads payload chunk `index` and checks it against the verified chunk table.
    pub fn read_chunk(&mut self, manifest: &VerifiedManifest, index: u64) -> Result<Vec<u8>> {
        self.check_same(manifest)?;
        let name = self.header.name().to_string();
        let range = manifest.payload_range(index).ok_or_else(|| {
            BundleError::invalid(
                &name,
                format!(
                    "no chunk {index} (the payload has {})",
                    manifest.chunks().count()
                ),
            )
        })?;
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.inner
            .seek(SeekFrom::Start(range.start))
            .and_then(|_| self.inner.read_exact(&mut buf))
            .map_err(|e| BundleError::io(&name, range.start, e))?;
        let digest: [u8; 32] = Sha256::digest(&buf).into();
        if Some(&digest) != manifest.chunks().hash(index) {
            return Err(BundleError::ChunkMismatch {
                file: name,
                index,
                offset: range.start - manifest.payload_offset(),
                bundle_offset: range.start,
            });
        }
        Ok(buf)
    }

    /// Reads the whole payload, checking every chunk and the total sha256.
    pub fn verify_payload(&mut self, manifest: &VerifiedManifest) -> Result<()> {
        self.copy_payload(manifest, &mut io::sink()).map(|_| ())
    }

    /// Copies the payload (the slot image) to `out`, each chunk only after it verified;
    /// checks the total sha256 at the end. Returns the bytes copied.
    pub fn copy_payload(
        &mut self,
        manifest: &VerifiedManifest,
        out: &mut dyn Write,
    ) -> Result<u64> {
        self.check_same(manifest)?;
        let name = self.header.name().to_string();
        let base = manifest.payload_offset();
        self.inner
            .seek(SeekFrom::Start(base))
            .map_err(|e| BundleError::io(&name, base, e))?;
        let chunks = manifest.chunks();
        let mut buf = vec![0u8; chunks.chunk_size() as usize];
        let mut total = Sha256::new();
        for index in 0..chunks.count() {
            let offset = index * u64::from(chunks.chunk_size());
            let n = chunks.chunk_len(index) as usize;
            self.inner
                .read_exact(&mut buf[..n])
                .map_err(|e| BundleError::io(&name, base + offset, e))?;
            let digest: [u8; 32] = Sha256::digest(&buf[..n]).into();
            if Some(&digest) != chunks.hash(index) {
                return Err(BundleError::ChunkMismatch {
                    file: name,
                    index,
                    offset,
                    bundle_offset: base + offset,
                });
            }
            total.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| BundleError::io("payload output", offset, e))?;
        }
        let digest: [u8; 32] = total.finalize().into();
        if digest != manifest.manifest().slot_sha256 {
            return Err(BundleError::PayloadMismatch {
                file: name,
                offset: base,
            });
        }
        Ok(chunks.len())
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}
