//! The state directory: where the machine configuration is stored, atomically and with
//! history.
//!
//! Layout under `<state>/config/` (on the STATE partition on a node; mode 0700, files 0600
//! because a configuration holds private keys):
//!
//! - `current.yaml`: the configuration the node runs;
//! - `history/NNNNNN.yaml`: every stored version, the last [`KEEP_VERSIONS`] kept; the
//!   highest number is the current version;
//! - `staged.yaml`: a configuration applied with mode STAGED, promoted at the next start.
//!
//! Every write is atomic: a temporary file in the same directory is written and fsynced,
//! renamed over the target, and the directory is fsynced; a power cut leaves the old or the
//! new file, never a mix. The history copy is written before `current.yaml`, so the
//! current version always has its history entry.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How many configuration versions are kept in `history/`.
pub const KEEP_VERSIONS: usize = 10;

/// A failed state directory operation.
#[derive(Debug, thiserror::Error)]
#[error("state {path}: {source}")]
pub struct StateError {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError {
        path: path.to_path_buf(),
        source,
    }
}

/// A stored configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredConfig {
    /// The configuration bytes, as applied.
    pub data: Vec<u8>,
    /// Its version number (1 for the first).
    pub version: u64,
    /// When it was stored.
    pub applied_at: SystemTime,
}

/// The configuration store in a state directory.
#[derive(Debug, Clone)]
pub struct ConfigStore {
    dir: PathBuf,
}

/// Creates `dir` (and parents) with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err(dir))
}

/// Writes `data` to `path` atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    file.write_all(data).map_err(err(&tmp))?;
    file.sync_all().map_err(err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err(dir))
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match std::fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path)(e)),
    }
}

impl ConfigStore {
    /// Opens the store in `<state_dir>/config`, creating its directories.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("config");
        create_private_dir(&dir.join("history"))?;
        Ok(Self { dir })
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join("current.yaml")
    }

    fn staged_path(&self) -> PathBuf {
        self.dir.join("staged.yaml")
    }

    fn history(&self) -> Result<Vec<u64>, StateError> {
        let dir = self.dir.join("history");
        let mut versions = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(err(&dir))? {
            let entry = entry.map_err(err(&dir))?;
            let name = entry.file_name();
            if let Some(v) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".yaml"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                versions.push(v);
            }
        }
        versions.sort_unstable();
        Ok(versions)
    }

    /// The current configuration, or `None` when none was ever stored (maintenance mode).
    pub fn current(&self) -> Result<Option<StoredConfig>, StateError> {
        let path = self.current_path();
        let Some(data) = read_optional(&path)? else {
            return Ok(None);
        };
        let applied_at = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map_err(err(&path))?;
        let version = self.history()?.last().copied().unwrap_or(1);
        Ok(Some(StoredConfig {
            data,
            version,
            applied_at,
        }))
    }

    /// Every stored version that can be read, newest first: the current configuration, then
    /// the history (for a start that has to fall back).
    pub fn versions_newest_first(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        let mut out = Vec::new();
        if let Some(current) = self.current()? {
            out.push((current.version, current.data));
        }
        for version in self.history()?.into_iter().rev() {
            let path = self.dir.join("history").join(format!("{version:06}.yaml"));
            if let Some(data) = read_optional(&path)?
                && !out.iter().any(|(v, d)| *v == version && *d == data)
            {
                out.push((version, data));
            }
        }
        Ok(out)
    }

    /// A staged configuration waiting for the next start, if any.
    pub fn staged(&self) -> Result<Option<Vec<u8>>, StateError> {
        read_optional(&self.staged_path())
    }

    /// Stores `data` as the new current configuration; returns its version. Versions
    /// beyond [`KEEP_VERSIONS`] are removed from the history.
    pub fn store(&self, data: &[u8]) -> Result<u64, StateError> {
        let history = self.history()?;
        let version = history.last().copied().unwrap_or(0) + 1;
        let hist_dir = self.dir.join("history");
        write_atomic(&hist_dir.join(format!("{version:06}.yaml")), data)?;
        write_atomic(&self.current_path(), data)?;
        let mut all = history;
        all.push(version);
        if all.len() > KEEP_VERSIONS {
            for old in &all[..all.len() - KEEP_VERSIONS] {
                let path = hist_dir.join(format!("{old:06}.yaml"));
                std::fs::remove_file(&path).map_err(err(&path))?;
            }
        }
        Ok(version)
    }

    /// Stores `data` as the staged configuration (replacing an earlier one).
    pub fn stage(&self, data: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.staged_path(), data)
    }

    /// Makes the staged configuration current (at start); returns its version, or `None`
    /// when nothing was staged.
    pub fn promote_staged(&self) -> Result<Option<u64>, StateError> {
        let Some(data) = self.staged()? else {
            return Ok(None);
        };
        let version = self.store(&data)?;
        let path = self.staged_path();
        std::fs::remove_file(&path).map_err(err(&path))?;
        Ok(Some(version))
    }
}

/// A configuration trial (APPLY_MODE_TRY) recorded on disk: the configuration to go back
/// to unless the trial is confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trial {
    /// The configuration that was current before the trial.
    pub previous: Vec<u8>,
    /// The version of the configuration on trial.
    pub version: u64,
}

impl ConfigStore {
    fn trial_path(&self) -> PathBuf {
        self.dir.join("trial-previous.yaml")
    }

    fn trial_version_path(&self) -> PathBuf {
        self.dir.join("trial-version")
    }

    /// Stores `data` as the current configuration on trial: `previous` is kept until
    /// [`ConfigStore::end_trial`] (confirmed) or [`ConfigStore::revert_trial`]. The record is
    /// written before the new configuration, so a power cut in between leaves either no
    /// trial (the old configuration current) or a trial that the next start reverts.
    pub fn store_trial(&self, data: &[u8], previous: &[u8]) -> Result<u64, StateError> {
        // A trial started while another is pending keeps the configuration from before the
        // first: that is the last one somebody confirmed.
        if self.trial()?.is_none() {
            write_atomic(&self.trial_path(), previous)?;
        }
        let version = self.store(data)?;
        write_atomic(&self.trial_version_path(), version.to_string().as_bytes())?;
        Ok(version)
    }

    /// The pending trial, if any.
    pub fn trial(&self) -> Result<Option<Trial>, StateError> {
        let Some(previous) = read_optional(&self.trial_path())? else {
            return Ok(None);
        };
        let version = read_optional(&self.trial_version_path())?
            .and_then(|v| String::from_utf8_lossy(&v).trim().parse().ok())
            .unwrap_or(0);
        Ok(Some(Trial { previous, version }))
    }

    /// Confirms a pending trial: the configuration on trial stays.
    pub fn end_trial(&self) -> Result<(), StateError> {
        for path in [self.trial_version_path(), self.trial_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&path)(e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Ends a pending trial by storing the configuration from before it as a new version;
    /// returns that version and the configuration, or `None` when no trial was pending.
    pub fn revert_trial(&self) -> Result<Option<(u64, Vec<u8>)>, StateError> {
        let Some(trial) = self.trial()? else {
            return Ok(None);
        };
        let version = self.store(&trial.previous)?;
        self.end_trial()?;
        Ok(Some((version, trial.previous)))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn stores_versions_and_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::open(dir.path()).unwrap();
        assert_eq!(store.current().unwrap(), None);
        for i in 1..=12u64 {
            assert_eq!(store.store(format!("v{i}").as_bytes()).unwrap(), i);
        }
        let cur = store.current().unwrap().unwrap();
        assert_eq!((cur.data.as_slice(), cur.version), (&b"v12"[..], 12));
        assert_eq!(store.history().unwrap(), (3..=12).collect::<Vec<_>>());
        let mode = std::fs::metadata(dir.path().join("config/current.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("config"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn staged_config_is_promoted() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigStore::open(dir.path()).unwrap();
        store.stage(b"staged").unwrap();
        assert_eq!(store.current().unwrap(), None);
        assert_eq!(store.promote_staged().unwrap(), Some(1));
        assert_eq!(store.current().unwrap().unwrap().data, b"staged");
        assert_eq!(store.staged().unwrap(), None);
        assert_eq!(store.promote_staged().unwrap(), None);
    }
}
