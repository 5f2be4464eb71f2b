//! Read-back verification: every piece the writer wrote is read again, bypassing the page
//! cache (`O_DIRECT`, else `posix_fadvise(DONTNEED)` first), and its sha256 compared with
//! the hash taken while writing. A mismatch names the device and the offset and length of
//! the piece (at most 4 MiB) that differs.

use sha2::{Digest, Sha256};

use crate::blockdev::{AlignedBuf, BlockError, Target};
use crate::progress::{Phase, Reporter};
use crate::writer::Written;

/// A failed verification.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading back failed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The bytes read back differ.
    #[error(
        "verification of {name} failed at offset {offset}: {len} bytes read back hash to {found}, {expected} was written"
    )]
    Mismatch {
        /// The device.
        name: String,
        /// Device offset of the differing piece.
        offset: u64,
        /// Its length.
        len: u64,
        /// Hash read back.
        found: String,
        /// Hash written.
        expected: String,
    },
}

/// Verifies `written` on `target`; returns the bytes checked.
pub fn verify(
    target: &mut dyn Target,
    written: &[Written],
    reporter: &dyn Reporter,
    label: &str,
) -> Result<u64, VerifyError> {
    let total: u64 = written.iter().map(|w| w.len).sum();
    reporter.phase(label, Phase::Verify, Some(total));
    let mut done = 0;
    let mut buf = AlignedBuf::new(crate::pipeline::CHUNK);
    let mut pieces: Vec<&Written> = written.iter().collect();
    pieces.sort_by_key(|w| w.offset);
    for w in pieces {
        let mut b = if w.len as usize <= crate::pipeline::CHUNK {
            None
        } else {
            Some(AlignedBuf::new(w.len as usize))
        };
        let slice = match b.as_mut() {
            Some(b) => b.as_mut_slice(),
            None => &mut buf.as_mut_slice()[..w.len as usize],
        };
        target.read_uncached(slice, w.offset)?;
        let found: [u8; 32] = Sha256::digest(&*slice).into();
        if found != w.sha256 {
            return Err(VerifyError::Mismatch {
                name: target.name().to_string(),
                offset: w.offset,
                len: w.len,
                found: hex::encode(found),
                expected: hex::encode(w.sha256),
            });
        }
        done += w.len;
        reporter.progress(label, Phase::Verify, done);
    }
    reporter.done(label, Phase::Verify, done);
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockdev::DeviceFile;
    use crate::progress::Quiet;

    #[test]
    fn mismatch_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, vec![1u8; 1 << 16]).unwrap();
        let mut t = DeviceFile::open(&p, false, true).unwrap();
        let good = Written {
            offset: 0,
            len: 4096,
            sha256: Sha256::digest([1u8; 4096]).into(),
        };
        let bad = Written {
            offset: 8192,
            len: 4096,
            sha256: Sha256::digest([2u8; 4096]).into(),
        };
        assert_eq!(
            verify(&mut t, std::slice::from_ref(&good), &Quiet, "d").unwrap(),
            4096
        );
        let e = verify(&mut t, &[good, bad], &Quiet, "d").unwrap_err();
        assert!(e.to_string().contains("at offset 8192"), "{e}");
    }
}
