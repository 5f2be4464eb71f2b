//! File and device stores.
//!
//! - [`FileStore`]: each copy is a whole file (`uboot.env` on the Raspberry Pi's FAT boot
//!   partition, and `uboot-redund.env` when U-Boot is built with a redundant FAT env). A write
//!   replaces the file atomically: temporary file in the same directory, fsync, rename over
//!   the old file, fsync of the file under its name (on FAT, what writes the new start
//!   cluster and size into the directory entry), fsync of the directory.
//! - [`DeviceStore`]: each copy is `size` bytes at an offset of a block device or image file,
//!   as a line of `fw_env.config` describes it (`/dev/mmcblk0 0x3fc000 0x4000`). A write
//!   overwrites the bytes in place and fsyncs the device; it can be torn by a power cut, which
//!   is what the redundant layout protects against.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::store::{EnvStore, StoreError};

/// Copies stored as whole files, replaced atomically on write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStore {
    paths: Vec<PathBuf>,
}

impl FileStore {
    /// One copy in one file.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            paths: vec![path.into()],
        }
    }

    /// Two copies in two files (U-Boot's `CONFIG_ENV_FAT_FILE_REDUND`).
    pub fn redundant(first: impl Into<PathBuf>, second: impl Into<PathBuf>) -> Self {
        Self {
            paths: vec![first.into(), second.into()],
        }
    }

    /// The file of each copy.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    fn path(&self, copy: usize) -> Result<&Path, StoreError> {
        self.paths
            .get(copy)
            .map(PathBuf::as_path)
            .ok_or(StoreError::NoSuchCopy {
                copy,
                copies: self.paths.len(),
            })
    }
}

impl EnvStore for FileStore {
    fn copies(&self) -> usize {
        self.paths.len()
    }

    fn location(&self, copy: usize) -> String {
        match self.paths.get(copy) {
            Some(path) => path.display().to_string(),
            None => format!("<no copy {copy}>"),
        }
    }

    fn read_copy(&self, copy: usize, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(copy)?;
        let read_err = |source| StoreError::Read {
            copy,
            location: self.location(copy),
            source,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        // Like U-Boot and libubootenv, read the first `len` bytes; a longer file is accepted.
        let mut buf = Vec::with_capacity(len);
        file.take(len as u64)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        if buf.len() < len {
            return Err(StoreError::Short {
                copy,
                location: self.location(copy),
                needed: len,
            });
        }
        Ok(Some(buf))
    }

    fn write_copy(&mut self, copy: usize, data: &[u8]) -> Result<(), StoreError> {
        let path = self.path(copy)?.to_path_buf();
        replace_file(&path, data).map_err(|source| StoreError::Write {
            copy,
            location: self.location(copy),
            source,
        })
    }
}

/// Atomically replaces `path` with `data`: temp file + fsync + rename + fsync of the renamed
/// file + fsync of the directory.
fn replace_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Keep the old file's mode where the filesystem has one (FAT has none: ignore failures).
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = tmp.as_file().set_permissions(meta.permissions());
    }
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    File::open(path)?.sync_all()?;
    File::open(dir)?.sync_all()
}

/// One copy on a block device or image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCopy {
    /// Device or image file.
    pub path: PathBuf,
    /// Byte offset of the copy.
    pub offset: u64,
}

/// Copies at fixed offsets of block devices or image files, written in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStore {
    copies: Vec<DeviceCopy>,
}

impl DeviceStore {
    /// One copy at `offset` of `path`.
    pub fn single(path: impl Into<PathBuf>, offset: u64) -> Self {
        Self {
            copies: vec![DeviceCopy {
                path: path.into(),
                offset,
            }],
        }
    }

    /// Two copies, possibly on two devices (the two lines of a redundant `fw_env.config`).
    pub fn redundant(first: DeviceCopy, second: DeviceCopy) -> Self {
        Self {
            copies: vec![first, second],
        }
    }

    /// The copies.
    pub fn device_copies(&self) -> &[DeviceCopy] {
        &self.copies
    }

    fn dev(&self, copy: usize) -> Result<&DeviceCopy, StoreError> {
        self.copies.get(copy).ok_or(StoreError::NoSuchCopy {
            copy,
            copies: self.copies.len(),
        })
    }
}

impl EnvStore for DeviceStore {
    fn copies(&self) -> usize {
        self.copies.len()
    }

    fn location(&self, copy: usize) -> String {
        match self.copies.get(copy) {
            Some(dev) => format!("{} offset {:#x}", dev.path.display(), dev.offset),
            None => format!("<no copy {copy}>"),
        }
    }

    fn read_copy(&self, copy: usize, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        let dev = self.dev(copy)?;
        let read_err = |source| StoreError::Read {
            copy,
            location: self.location(copy),
            source,
        };
        let file = File::open(&dev.path).map_err(read_err)?;
        let mut buf = vec![0; len];
        match file.read_exact_at(&mut buf, dev.offset) {
            Ok(()) => Ok(Some(buf)),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(StoreError::Short {
                copy,
                location: self.location(copy),
                needed: len,
            }),
            Err(e) => Err(read_err(e)),
        }
    }

    fn write_copy(&mut self, copy: usize, data: &[u8]) -> Result<(), StoreError> {
        let dev = self.dev(copy)?;
        let write = || -> io::Result<()> {
            let file = OpenOptions::new().write(true).open(&dev.path)?;
            file.write_all_at(data, dev.offset)?;
            file.sync_all()
        };
        write().map_err(|source| StoreError::Write {
            copy,
            location: self.location(copy),
            source,
        })
    }

    fn check_size(&self, size: usize) -> Result<(), StoreError> {
        if let [a, b] = self.copies.as_slice()
            && a.path == b.path
            && a.offset.abs_diff(b.offset) < size as u64
        {
            return Err(StoreError::BadGeometry {
                size,
                reason: format!(
                    "copies at {} and {} overlap",
                    self.location(0),
                    self.location(1)
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_missing_short_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uboot.env");
        let mut store = FileStore::new(&path);
        assert_eq!(store.read_copy(0, 8).unwrap(), None);
        store.write_copy(0, b"12345678").unwrap();
        assert_eq!(
            store.read_copy(0, 8).unwrap().as_deref(),
            Some(&b"12345678"[..])
        );
        // A longer file is read up to the env size.
        assert_eq!(
            store.read_copy(0, 4).unwrap().as_deref(),
            Some(&b"1234"[..])
        );
        let err = store.read_copy(0, 9).unwrap_err();
        assert!(err.to_string().contains("uboot.env is truncated"), "{err}");
        // Only the env file remains: no temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn file_store_write_error_names_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = FileStore::redundant(
            dir.path().join("uboot.env"),
            dir.path().join("missing-dir/uboot-redund.env"),
        );
        let err = store.write_copy(1, b"x").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("failed to write U-Boot env copy 2 at "),
            "{msg}"
        );
        assert!(msg.contains("missing-dir/uboot-redund.env: "), "{msg}");
    }

    #[test]
    fn device_store_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, vec![0xAA; 0x40]).unwrap();
        let mut store = DeviceStore::redundant(
            DeviceCopy {
                path: path.clone(),
                offset: 0x10,
            },
            DeviceCopy {
                path: path.clone(),
                offset: 0x20,
            },
        );
        store.check_size(0x10).unwrap();
        let err = store.check_size(0x11).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
        store.write_copy(1, &[1; 0x10]).unwrap();
        let disk = std::fs::read(&path).unwrap();
        assert_eq!(disk.len(), 0x40);
        assert!(disk[..0x20].iter().all(|&b| b == 0xAA));
        assert!(disk[0x20..0x30].iter().all(|&b| b == 1));
        assert_eq!(store.read_copy(1, 0x10).unwrap(), Some(vec![1; 0x10]));
        let err = store.read_copy(1, 0x21).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "U-Boot env copy 2 at {} offset 0x20 is truncated: fewer than 0x21 bytes available",
                path.display()
            )
        );
    }

    #[test]
    fn device_store_missing_device_is_an_error() {
        let mut store = DeviceStore::single("/nonexistent/mmcblk9", 0x3fc000);
        let err = store.read_copy(0, 16).unwrap_err();
        assert!(matches!(err, StoreError::Read { .. }));
        let err = store.write_copy(0, b"x").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "failed to write U-Boot env copy 1 at /nonexistent/mmcblk9 offset 0x3fc000: "
            ),
            "{err}"
        );
    }
}
