//! Where environment copies live: the [`EnvStore`] trait, its error type and the in-memory
//! store used by tests. File and device stores are in [`super::fs`].

use std::io;

/// Raw storage of one or two environment copies.
///
/// A store knows nothing of the format: it reads and writes whole copies of the size the
/// caller asks for. Copies are numbered from 0; messages number them from 1 ("copy 1",
/// "copy 2"), as `fw_env.config` lines are usually described.
pub trait EnvStore {
    /// Number of copies: 1 (single) or 2 (redundant).
    fn copies(&self) -> usize;

    /// Human-readable location of `copy` for messages, e.g. `/dev/mmcblk0 offset 0x3fc000`.
    fn location(&self, copy: usize) -> String;

    /// Reads `len` bytes of `copy`. `Ok(None)` means the copy does not exist yet (a missing
    /// `uboot.env` file); a copy shorter than `len` is an error.
    fn read_copy(&self, copy: usize, len: usize) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes `data` as `copy` and makes it durable (fsync) before returning.
    fn write_copy(&mut self, copy: usize, data: &[u8]) -> Result<(), StoreError>;

    /// Checks that copies of `size` bytes fit this store (e.g. do not overlap). Called once
    /// when an environment is opened.
    fn check_size(&self, size: usize) -> Result<(), StoreError> {
        let _ = size;
        Ok(())
    }
}

/// A failed read or write of an environment copy.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading a copy failed.
    #[error("failed to read U-Boot env copy {} at {location}: {source}", copy + 1)]
    Read {
        /// Copy index (0-based).
        copy: usize,
        /// Where the copy lives.
        location: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Writing a copy, or making it durable, failed.
    #[error("failed to write U-Boot env copy {} at {location}: {source}", copy + 1)]
    Write {
        /// Copy index (0-based).
        copy: usize,
        /// Where the copy lives.
        location: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The storage ends before a whole copy could be read.
    #[error(
        "U-Boot env copy {} at {location} is truncated: fewer than {needed:#x} bytes available",
        copy + 1
    )]
    Short {
        /// Copy index (0-based).
        copy: usize,
        /// Where the copy lives.
        location: String,
        /// The env size.
        needed: usize,
    },
    /// A copy index beyond the store's copies.
    #[error("U-Boot env copy {} does not exist: the store has {copies} copies", copy + 1)]
    NoSuchCopy {
        /// Copy index (0-based).
        copy: usize,
        /// Number of copies of the store.
        copies: usize,
    },
    /// The store cannot hold copies of the requested size.
    #[error("U-Boot env store cannot hold copies of {size:#x} bytes: {reason}")]
    BadGeometry {
        /// The env size.
        size: usize,
        /// Why not.
        reason: String,
    },
}

/// How the next write to a [`MemoryStore`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// The write fails before any byte changes.
    Fail,
    /// The first `written` bytes reach the copy, then the write fails (power cut mid-write).
    Torn {
        /// Bytes that reach the copy.
        written: usize,
    },
}

/// Environment copies kept in memory, with fault injection for tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    copies: Vec<Option<Vec<u8>>>,
    fault: Option<WriteFault>,
    writes: Vec<usize>,
}

impl MemoryStore {
    /// A store of `copies` copies (1 or 2), none of which exists yet.
    pub fn new(copies: usize) -> Self {
        Self {
            copies: vec![None; copies],
            ..Self::default()
        }
    }

    /// A store holding `copies` as they are.
    pub fn with_copies(copies: Vec<Vec<u8>>) -> Self {
        Self {
            copies: copies.into_iter().map(Some).collect(),
            ..Self::default()
        }
    }

    /// The current bytes of `copy`, if it exists.
    pub fn copy(&self, copy: usize) -> Option<&[u8]> {
        self.copies.get(copy).and_then(|c| c.as_deref())
    }

    /// Replaces the bytes of `copy` (`None` removes it). Out-of-range indices are ignored.
    pub fn set_copy(&mut self, copy: usize, data: Option<Vec<u8>>) {
        if let Some(slot) = self.copies.get_mut(copy) {
            *slot = data;
        }
    }

    /// Makes the next write fail as `fault` describes; later writes succeed again.
    pub fn fail_next_write(&mut self, fault: WriteFault) {
        self.fault = Some(fault);
    }

    /// Indices of the copies written successfully, oldest first.
    pub fn writes(&self) -> &[usize] {
        &self.writes
    }
}

impl EnvStore for MemoryStore {
    fn copies(&self) -> usize {
        self.copies.len()
    }

    fn location(&self, copy: usize) -> String {
        format!("memory slot {copy}")
    }

    fn read_copy(&self, copy: usize, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let slot = self.copies.get(copy).ok_or(StoreError::NoSuchCopy {
            copy,
            copies: self.copies.len(),
        })?;
        match slot {
            None => Ok(None),
            Some(data) if data.len() < len => Err(StoreError::Short {
                copy,
                location: self.location(copy),
                needed: len,
            }),
            Some(data) => Ok(Some(data[..len].to_vec())),
        }
    }

    fn write_copy(&mut self, copy: usize, data: &[u8]) -> Result<(), StoreError> {
        let copies = self.copies.len();
        let location = self.location(copy);
        let slot = self
            .copies
            .get_mut(copy)
            .ok_or(StoreError::NoSuchCopy { copy, copies })?;
        let failed = |what: &str| StoreError::Write {
            copy,
            location,
            source: io::Error::other(format!("simulated {what}")),
        };
        match self.fault.take() {
            None => {
                *slot = Some(data.to_vec());
                self.writes.push(copy);
                Ok(())
            }
            Some(WriteFault::Fail) => Err(failed("write failure")),
            Some(WriteFault::Torn { written }) => {
                let target = slot.get_or_insert_with(Vec::new);
                let written = written.min(data.len());
                if target.len() < data.len() {
                    target.resize(data.len(), 0);
                }
                target[..written].copy_from_slice(&data[..written]);
                Err(failed("torn write"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_reads_and_writes() {
        let mut store = MemoryStore::new(2);
        assert_eq!(store.copies(), 2);
        assert_eq!(store.read_copy(0, 4).unwrap(), None);
        store.write_copy(1, b"abcd").unwrap();
        assert_eq!(
            store.read_copy(1, 4).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        assert!(matches!(
            store.read_copy(1, 5),
            Err(StoreError::Short { copy: 1, .. })
        ));
        assert!(matches!(
            store.read_copy(2, 4),
            Err(StoreError::NoSuchCopy { copy: 2, .. })
        ));
        assert_eq!(store.writes(), &[1]);
    }

    #[test]
    fn memory_store_faults() {
        let mut store = MemoryStore::with_copies(vec![b"old!".to_vec()]);
        store.fail_next_write(WriteFault::Fail);
        let err = store.write_copy(0, b"new!").unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to write U-Boot env copy 1 at memory slot 0: simulated write failure"
        );
        assert_eq!(store.copy(0), Some(&b"old!"[..]));
        store.fail_next_write(WriteFault::Torn { written: 2 });
        assert!(store.write_copy(0, b"new!").is_err());
        assert_eq!(store.copy(0), Some(&b"ned!"[..]));
        // Faults are one-shot.
        store.write_copy(0, b"new!").unwrap();
        assert_eq!(store.copy(0), Some(&b"new!"[..]));
        assert_eq!(store.writes(), &[0]);
    }
}
