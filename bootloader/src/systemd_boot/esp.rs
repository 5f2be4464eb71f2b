//! File access to an EFI system partition (or the Raspberry Pi's FAT BOOT partition).
//!
//! [`EspFs`] is the small set of operations the boot backends need. Paths are relative to
//! the partition root, `/`-separated (`loader/entries/basalt-a+3.conf`); a leading `/` is
//! ignored, empty, `.` and `..` components are refused. Two implementations:
//!
//! - [`DirEsp`]: a mounted directory (`/boot/efi`). An atomic write is temp file in the
//!   same directory → `fsync` → `rename` over the target → `fsync` of the file under its
//!   new name → `fsync` of the directory; a rename is followed by the same two `fsync`s, a
//!   delete by the directory's. The file's own `fsync` after a rename matters on FAT: Linux
//!   writes a renamed file's start cluster and size into its new directory entry only when
//!   the file's inode is written back, which a directory `fsync` does not do; until then
//!   (up to half a minute of writeback delay) the new name is an empty file on the disk.
//!   machined also mounts FAT partitions with `dirsync`, which makes the kernel write the
//!   new entry whole before it removes the old one.
//! - [`super::FatEsp`]: a FAT file system inside an image file or block device, accessed with
//!   the `fatfs` crate without mounting.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// File name (the long name on FAT).
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// A failed ESP operation. Messages name the operation, the path and the ESP.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// An I/O operation failed.
    #[error("failed to {op} {path} on {esp}: {source}")]
    Io {
        /// What was attempted ("read", "rename", ...).
        op: &'static str,
        /// The path (for a rename: `from -> to`).
        path: String,
        /// Which ESP, e.g. "ESP /boot/efi".
        esp: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A path that cannot name a file on the ESP.
    #[error("invalid path {path:?} on {esp}: {reason}")]
    InvalidPath {
        /// The path.
        path: String,
        /// Which ESP.
        esp: String,
        /// Why.
        reason: &'static str,
    },
}

impl EspError {
    /// Whether the error is a missing file or directory.
    pub fn is_not_found(&self) -> bool {
        matches!(self, EspError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The file operations the boot backends need on a FAT partition.
pub trait EspFs {
    /// Names the ESP in messages, e.g. "ESP /boot/efi".
    fn describe(&self) -> String;
    /// Entries of directory `dir` (`""` is the root), without `.` and `..`.
    fn list_dir(&self, dir: &str) -> Result<Vec<DirEntry>, EspError>;
    /// The whole content of file `path`.
    fn read_file(&self, path: &str) -> Result<Vec<u8>, EspError>;
    /// Whether `path` exists (file or directory).
    fn exists(&self, path: &str) -> Result<bool, EspError>;
    /// Replaces (or creates) `path` with `data` so that a reader sees the old or the new
    /// content, creating missing parent directories.
    fn write_file_atomic(&mut self, path: &str, data: &[u8]) -> Result<(), EspError>;
    /// Renames file `from` to `to` (same directory or not), replacing `to` if it exists.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError>;
    /// Deletes file `path`.
    fn delete(&mut self, path: &str) -> Result<(), EspError>;
}

impl<T: EspFs + ?Sized> EspFs for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn list_dir(&self, dir: &str) -> Result<Vec<DirEntry>, EspError> {
        (**self).list_dir(dir)
    }
    fn read_file(&self, path: &str) -> Result<Vec<u8>, EspError> {
        (**self).read_file(path)
    }
    fn exists(&self, path: &str) -> Result<bool, EspError> {
        (**self).exists(path)
    }
    fn write_file_atomic(&mut self, path: &str, data: &[u8]) -> Result<(), EspError> {
        (**self).write_file_atomic(path, data)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        (**self).rename(from, to)
    }
    fn delete(&mut self, path: &str) -> Result<(), EspError> {
        (**self).delete(path)
    }
}

/// Splits an ESP path into checked components.
pub(crate) fn components<'a>(
    path: &'a str,
    esp: &dyn Fn() -> String,
) -> Result<Vec<&'a str>, EspError> {
    let invalid = |reason| EspError::InvalidPath {
        path: path.to_string(),
        esp: esp(),
        reason,
    };
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err(invalid("empty path component")),
            "." | ".." => return Err(invalid("`.` and `..` are not allowed")),
            _ if part.contains('\\') || part.contains('\0') => {
                return Err(invalid("backslash or NUL in a file name"));
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// Name of the temporary file an atomic write of `name` uses: hidden, and not ending in
/// `.conf`, so systemd-boot never takes it for an entry.
pub(crate) fn temp_name(name: &str) -> String {
    format!(".{name}.basalt-tmp")
}

/// An ESP mounted as a directory.
#[derive(Debug, Clone)]
pub struct DirEsp {
    root: PathBuf,
    label: String,
}

impl DirEsp {
    /// The ESP mounted at `root`, named `ESP <root>` in messages.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::with_label(root, "ESP")
    }

    /// Like [`DirEsp::new`], named `<label> <root>` in messages (e.g. "BOOT partition").
    pub fn with_label(root: impl Into<PathBuf>, label: &str) -> Self {
        let root = root.into();
        let label = format!("{label} {}", root.display());
        DirEsp { root, label }
    }

    /// The mount point.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn resolve(&self, path: &str) -> Result<PathBuf, EspError> {
        let parts = components(path, &|| self.describe())?;
        Ok(parts.iter().fold(self.root.clone(), |p, c| p.join(c)))
    }

    fn io(&self, op: &'static str, path: &str, source: io::Error) -> EspError {
        EspError::Io {
            op,
            path: path.to_string(),
            esp: self.describe(),
            source,
        }
    }

    /// Writes a renamed file's directory entry (start cluster, size) under its new name.
    fn sync_renamed(&self, file: &Path, path: &str) -> Result<(), EspError> {
        File::open(file)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.io("fsync the renamed", path, e))
    }

    fn sync_dir(&self, dir: &Path, path: &str) -> Result<(), EspError> {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io("fsync the directory of", path, e))
    }
}

impl EspFs for DirEsp {
    fn describe(&self) -> String {
        self.label.clone()
    }

    fn list_dir(&self, dir: &str) -> Result<Vec<DirEntry>, EspError> {
        let full = self.resolve(dir)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(&full).map_err(|e| self.io("list", dir, e))? {
            let entry = entry.map_err(|e| self.io("list", dir, e))?;
            let is_dir = entry
                .file_type()
                .map_err(|e| self.io("list", dir, e))?
                .is_dir();
            entries.push(DirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, EspError> {
        fs::read(self.resolve(path)?).map_err(|e| self.io("read", path, e))
    }

    fn exists(&self, path: &str) -> Result<bool, EspError> {
        match fs::symlink_metadata(self.resolve(path)?) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io("stat", path, e)),
        }
    }

    fn write_file_atomic(&mut self, path: &str, data: &[u8]) -> Result<(), EspError> {
        let full = self.resolve(path)?;
        let (Some(parent), Some(name)) = (full.parent(), full.file_name()) else {
            return Err(EspError::InvalidPath {
                path: path.to_string(),
                esp: self.describe(),
                reason: "not a file path",
            });
        };
        fs::create_dir_all(parent).map_err(|e| self.io("create the directory of", path, e))?;
        let temp = parent.join(temp_name(&name.to_string_lossy()));
        let written = File::create(&temp).and_then(|mut file| {
            file.write_all(data)?;
            file.sync_all()
        });
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            return Err(self.io("write", path, e));
        }
        if let Err(e) = fs::rename(&temp, &full) {
            let _ = fs::remove_file(&temp);
            return Err(self.io("replace", path, e));
        }
        self.sync_renamed(&full, path)?;
        self.sync_dir(parent, path)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        let (src, dst) = (self.resolve(from)?, self.resolve(to)?);
        let what = format!("{from} -> {to}");
        fs::rename(&src, &dst).map_err(|e| self.io("rename", &what, e))?;
        self.sync_renamed(&dst, &what)?;
        for dir in [src.parent(), dst.parent()].into_iter().flatten() {
            self.sync_dir(dir, &what)?;
        }
        Ok(())
    }

    fn delete(&mut self, path: &str) -> Result<(), EspError> {
        let full = self.resolve(path)?;
        fs::remove_file(&full).map_err(|e| self.io("delete", path, e))?;
        match full.parent() {
            Some(parent) => self.sync_dir(parent, path),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_esp_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut esp = DirEsp::new(dir.path());
        esp.write_file_atomic("loader/entries/a.conf", b"one")
            .unwrap();
        esp.write_file_atomic("/loader/entries/a.conf", b"two")
            .unwrap();
        assert_eq!(esp.read_file("loader/entries/a.conf").unwrap(), b"two");
        let names: Vec<_> = esp
            .list_dir("loader/entries")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.conf"], "no temp file left behind");
        esp.rename("loader/entries/a.conf", "loader/entries/b.conf")
            .unwrap();
        assert!(!esp.exists("loader/entries/a.conf").unwrap());
        assert!(esp.exists("loader/entries/b.conf").unwrap());
        esp.delete("loader/entries/b.conf").unwrap();
        let err = esp.read_file("loader/entries/b.conf").unwrap_err();
        assert!(err.is_not_found());
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to read loader/entries/b.conf on ESP "),
            "{msg}"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let esp = DirEsp::new(dir.path());
        for bad in ["../etc/passwd", "loader//x", "a/./b", "a\\b"] {
            assert!(
                matches!(esp.read_file(bad), Err(EspError::InvalidPath { .. })),
                "{bad}"
            );
        }
    }
}
