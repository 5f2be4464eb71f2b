//! The persisted progress of an upgrade: `<STATE>/upgrade/progress.json`.
//!
//! It records which bundle is being written (its identity: the sha256 of the signed header,
//! so a different bundle, even of the same version, never continues another one's slot
//! write), into which slot, and the payload offset up to which every chunk was verified,
//! written **and synced** to the slot. It is written atomically (temporary file, fsync,
//! rename, fsync of the directory) after the slot's fsync, so after a power cut it never
//! claims more than the slot holds. It is removed once the slot is activated.

use crate::state::{StateError, create_private_dir, write_atomic};
use basalt_bootloader::Slot;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A failure reading or writing the progress file.
#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    /// The file could not be read, written or removed.
    #[error("upgrade progress: {0}")]
    State(#[from] StateError),
    /// The file does not hold a progress record.
    #[error("upgrade progress {path}: unreadable record ({message}); remove it to start over")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The decoding error.
        message: String,
    },
}

/// What is recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeProgress {
    /// sha256 (hex) of the bundle's signed header (bytes 0 to `header_len`).
    pub bundle_sha256: String,
    /// The bundle's board.
    pub board: String,
    /// The bundle's version.
    pub version: String,
    /// The slot being written ("A" or "B").
    pub slot: String,
    /// Length of the bundle header.
    pub header_len: u64,
    /// Payload (slot image) size.
    pub slot_size: u64,
    /// Payload offset up to which chunks are verified, written and synced (a chunk
    /// boundary, or `slot_size`).
    pub verified: u64,
}

impl UpgradeProgress {
    /// The slot being written.
    pub fn slot(&self) -> Option<Slot> {
        self.slot.parse().ok()
    }

    /// Bundle file offset to resume from.
    pub fn resume_offset(&self) -> u64 {
        self.header_len + self.verified
    }

    /// Length of the bundle file.
    pub fn bundle_len(&self) -> u64 {
        self.header_len + self.slot_size
    }
}

/// The progress file in a state directory.
#[derive(Debug, Clone)]
pub struct ProgressStore {
    path: PathBuf,
}

impl ProgressStore {
    /// The store of `state_dir` (`upgrade/progress.json`).
    pub fn new(state_dir: &Path) -> Self {
        ProgressStore {
            path: state_dir.join("upgrade").join("progress.json"),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded progress, if any.
    pub fn load(&self) -> Result<Option<UpgradeProgress>, ProgressError> {
        let data = match std::fs::read(&self.path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError {
                    path: self.path.clone(),
                    source,
                }
                .into());
            }
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| ProgressError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Records `progress` atomically.
    pub fn save(&self, progress: &UpgradeProgress) -> Result<(), ProgressError> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)?;
        }
        let mut data = serde_json::to_vec_pretty(progress).map_err(|e| ProgressError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        data.push(b'\n');
        Ok(write_atomic(&self.path, &data)?)
    }

    /// Forgets the progress (after activation, or to start over).
    pub fn clear(&self) -> Result<(), ProgressError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(StateError {
                    path: self.path.clone(),
                    source,
                }
                .into());
            }
        }
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StateError {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProgressStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let p = UpgradeProgress {
            bundle_sha256: "ab".repeat(32),
            board: "qemu-arm64".into(),
            version: "1.1.0".into(),
            slot: "B".into(),
            header_len: 4096,
            slot_size: 1 << 20,
            verified: 65536,
        };
        store.save(&p).unwrap();
        assert_eq!(store.load().unwrap(), Some(p.clone()));
        assert_eq!(p.resume_offset(), 4096 + 65536);
        assert_eq!(p.slot(), Some(Slot::B));
        store.clear().unwrap();
        assert_eq!(store.load().unwrap(), None);
        std::fs::create_dir_all(store.path().parent().unwrap()).unwrap();
        std::fs::write(store.path(), b"{not json").unwrap();
        assert!(matches!(store.load(), Err(ProgressError::Corrupt { .. })));
    }
}
