//! Image archives staged on DATA while they are streamed in (ImageImport).
//!
//! An archive is named by the sha256 of the whole file: its bytes are appended to
//! `<sha256>.partial` in the staging directory, in order, so that a stream cut half way
//! leaves a prefix of the archive, and the next call of the same archive resumes at its
//! length. Only when the staged length equals the announced size and the file's sha256
//! matches its name is the archive handed on to be imported; a copy that does not match is
//! removed. One archive is staged at a time: staging another removes what is left of the
//! previous one, so abandoned uploads never pile up on DATA.
//!
//! Limits: the sha256 is computed over the whole file once it is complete (reading it back),
//! not while it streams in, because a hash state cannot be resumed across calls.

use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Suffix of a staged (possibly partial) archive.
const PARTIAL_SUFFIX: &str = ".partial";
/// The most one data message carries.
pub const MAX_CHUNK: usize = 4 << 20;

/// Why an archive cannot be staged.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// The announced sha256 is not 64 lowercase hex digits.
    #[error("image archive sha256 {sha256:?} is not 64 lowercase hex digits")]
    BadSha256 {
        /// What was given.
        sha256: String,
    },
    /// The announced size is zero.
    #[error("image archive {sha256}: size 0 (an archive holds at least its index)")]
    Empty {
        /// The archive.
        sha256: String,
    },
    /// Data that does not continue what is staged.
    #[error(
        "image archive {sha256}: data at offset {offset}, the node holds {staged} bytes of it (resume from {staged}, see ImageImportStatus)"
    )]
    WrongOffset {
        /// The archive.
        sha256: String,
        /// The offset sent.
        offset: u64,
        /// The staged length.
        staged: u64,
    },
    /// More data than the announced size.
    #[error("image archive {sha256}: {len} bytes sent, more than its size {size}")]
    TooLong {
        /// The archive.
        sha256: String,
        /// Bytes it would have.
        len: u64,
        /// The announced size.
        size: u64,
    },
    /// One message is too large.
    #[error("image archive {sha256}: a data message of {len} bytes (at most {MAX_CHUNK})")]
    ChunkTooLarge {
        /// The archive.
        sha256: String,
        /// Its length.
        len: usize,
    },
    /// The stream ended before the archive was whole.
    #[error(
        "image archive {sha256}: the stream ended at {staged} of {size} bytes; the part received is kept (resume from {staged})"
    )]
    Incomplete {
        /// The archive.
        sha256: String,
        /// Bytes staged.
        staged: u64,
        /// The announced size.
        size: u64,
    },
    /// The whole file does not hash to its name.
    #[error(
        "image archive {expected}: the {size} bytes received hash to {found}; the staged copy is removed, send the archive again"
    )]
    Mismatch {
        /// The announced sha256.
        expected: String,
        /// What the staged file hashes to.
        found: String,
        /// Its length.
        size: u64,
    },
    /// Not enough room on the file system of the staging directory.
    #[error(
        "image archive {sha256}: {dir} has {available} bytes free, importing {size} bytes needs {needed} (the staged archive and its copy in the image store)"
    )]
    NoRoom {
        /// The archive.
        sha256: String,
        /// The staging directory.
        dir: PathBuf,
        /// Bytes free.
        available: u64,
        /// The archive's size.
        size: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// A file operation failed.
    #[error("staged image archive {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// The staging directory (on DATA on a node).
#[derive(Debug, Clone)]
pub struct ImportStaging {
    dir: PathBuf,
}

/// An archive being staged: the file open for appending.
#[derive(Debug)]
pub struct StagedArchive {
    file: File,
    path: PathBuf,
    sha256: String,
    size: u64,
    len: u64,
}

/// A whole archive whose sha256 matched.
#[derive(Debug)]
pub struct VerifiedArchive {
    /// The file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StagingError {
    let path = path.to_path_buf();
    move |source| StagingError::Io { path, source }
}

fn check_sha256(sha256: &str) -> Result<(), StagingError> {
    let ok = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StagingError::BadSha256 {
            sha256: sha256.into(),
        })
    }
}

/// Bytes free for an unprivileged writer on the file system of `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

impl ImportStaging {
    /// Stages in `dir` (created when the first archive is staged).
    pub fn new(dir: PathBuf) -> Self {
        ImportStaging { dir }
    }

    /// The staging directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn partial(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}{PARTIAL_SUFFIX}"))
    }

    /// Bytes of the archive `sha256` staged (0 when none, or when `sha256` is not one).
    pub fn staged_len(&self, sha256: &str) -> u64 {
        if check_sha256(sha256).is_err() {
            return 0;
        }
        std::fs::metadata(self.partial(sha256))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Whether any archive (whole or partial) is staged.
    pub fn holds_any(&self) -> bool {
        std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX))
            })
            .unwrap_or(false)
    }

    /// Opens the archive `sha256` of `size` bytes for appending, keeping what is staged of
    /// it and removing any other archive's remains; refused when the file system cannot
    /// hold the rest of it and its copy in the image store.
    pub fn begin(&self, sha256: &str, size: u64) -> Result<StagedArchive, StagingError> {
        check_sha256(sha256)?;
        if size == 0 {
            return Err(StagingError::Empty {
                sha256: sha256.into(),
            });
        }
        crate::state::create_private_dir(&self.dir).map_err(|e| StagingError::Io {
            path: self.dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let path = self.partial(sha256);
        self.remove_others(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        let mut len = file.metadata().map_err(io(&path))?.len();
        if len > size {
            // Not a prefix of this archive: start over.
            file.set_len(0).map_err(io(&path))?;
            len = 0;
        }
        let available = available_bytes(&self.dir).map_err(io(&self.dir))?;
        let needed = (size - len).saturating_add(size);
        if available < needed {
            return Err(StagingError::NoRoom {
                sha256: sha256.into(),
                dir: self.dir.clone(),
                available,
                size,
                needed,
            });
        }
        Ok(StagedArchive {
            file,
            path,
            sha256: sha256.into(),
            size,
            len,
        })
    }

    fn remove_others(&self, keep: &Path) -> Result<(), StagingError> {
        let entries = std::fs::read_dir(&self.dir).map_err(io(&self.dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path != keep {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }
}

impl StagedArchive {
    /// Bytes staged.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is staged yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The archive's sha256.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Appends `data`, which must start where the staged part ends.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), StagingError> {
        if data.len() > MAX_CHUNK {
            return Err(StagingError::ChunkTooLarge {
                sha256: self.sha256.clone(),
                len: data.len(),
            });
        }
        if offset != self.len {
            return Err(StagingError::WrongOffset {
                sha256: self.sha256.clone(),
                offset,
                staged: self.len,
            });
        }
        let len = self.len + data.len() as u64;
        if len > self.size {
            return Err(StagingError::TooLong {
                sha256: self.sha256.clone(),
                len,
                size: self.size,
            });
        }
        self.file.write_all(data).map_err(io(&self.path))?;
        self.len = len;
        Ok(())
    }

    /// Makes the staged part durable (at the end of a call, cut or not).
    pub fn sync(&self) -> Result<(), StagingError> {
        self.file.sync_data().map_err(io(&self.path))
    }

    /// Checks the archive is whole and hashes to its name; a copy that does not is removed.
    pub fn verify(self) -> Result<VerifiedArchive, StagingError> {
        if self.len < self.size {
            return Err(StagingError::Incomplete {
                sha256: self.sha256,
                staged: self.len,
                size: self.size,
            });
        }
        self.sync()?;
        let mut hasher = Sha256::new();
        let mut f = File::open(&self.path).map_err(io(&self.path))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io(&self.path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let found = hex::encode(hasher.finalize());
        if found != self.sha256 {
            std::fs::remove_file(&self.path).map_err(io(&self.path))?;
            return Err(StagingError::Mismatch {
                expected: self.sha256,
                found,
                size: self.len,
            });
        }
        Ok(VerifiedArchive {
            path: self.path,
            sha256: self.sha256,
        })
    }
}

impl VerifiedArchive {
    /// Removes the staged file (after the import, or when the archive is refused).
    pub fn remove(self) -> Result<(), StagingError> {
        std::fs::remove_file(&self.path).map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn a_cut_stream_resumes_and_only_a_matching_whole_archive_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let staging = ImportStaging::new(dir.path().join("imports"));
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let id = sha(&data);
        assert_eq!(staging.staged_len(&id), 0);
        assert!(!staging.holds_any());

        let mut s = staging.begin(&id, data.len() as u64).unwrap();
        s.append(0, &data[..4000]).unwrap();
        s.sync().unwrap();
        let e = s.verify().unwrap_err().to_string();
        assert!(e.contains("ended at 4000 of 10000 bytes"), "{e}");
        assert_eq!(staging.staged_len(&id), 4000);
        assert!(staging.holds_any());

        let mut s = staging.begin(&id, data.len() as u64).unwrap();
        assert_eq!(s.len(), 4000);
        let e = s.append(0, &data[..10]).unwrap_err().to_string();
        assert!(e.contains("offset 0, the node holds 4000 bytes"), "{e}");
        let e = s.append(4000, &[0u8; 7000]).unwrap_err().to_string();
        assert!(
            e.contains("11000 bytes sent, more than its size 10000"),
            "{e}"
        );
        s.append(4000, &data[4000..]).unwrap();
        let v = s.verify().unwrap();
        assert_eq!(std::fs::read(&v.path).unwrap(), data);
        v.remove().unwrap();
        assert!(!staging.holds_any());
    }

    #[test]
    fn a_corrupt_copy_is_removed_and_another_archive_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let staging = ImportStaging::new(dir.path().to_path_buf());
        let data = b"the archive".to_vec();
        let id = sha(&data);
        let mut s = staging.begin(&id, data.len() as u64).unwrap();
        s.append(0, b"THE ARCHIVE").unwrap();
        let e = s.verify().unwrap_err().to_string();
        assert!(e.contains("the staged copy is removed"), "{e}");
        assert_eq!(staging.staged_len(&id), 0);

        let mut s = staging.begin(&id, data.len() as u64).unwrap();
        s.append(0, b"the").unwrap();
        drop(s);
        let other = sha(b"another");
        let s = staging.begin(&other, 7).unwrap();
        assert!(s.is_empty());
        assert_eq!(
            staging.staged_len(&id),
            0,
            "the first one's remains are gone"
        );

        for bad in ["", "ABC", &"g".repeat(64), &id.to_uppercase()] {
            let e = staging.begin(bad, 1).unwrap_err().to_string();
            assert!(e.contains("not 64 lowercase hex digits"), "{bad}: {e}");
        }
        let e = staging.begin(&id, 0).unwrap_err().to_string();
        assert!(e.contains("size 0"), "{e}");
        let e = staging.begin(&id, u64::MAX / 4).unwrap_err().to_string();
        assert!(e.contains("bytes free"), "{e}");
    }
}
