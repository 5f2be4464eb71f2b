//! Slot devices: where the upgrade engine writes a slot image.
//!
//! [`SlotDevice`] is positioned I/O on one slot partition: `read_at`, `write_at`, `sync`,
//! `len`, and `drop_cache` (so a read-back sees the medium, not the page cache).
//! [`FileSlotDevice`] is the real one (a block device such as `/dev/mmcblk0p2`, or a
//! regular file in dev mode): `pwrite`/`pread`, `fsync`, and `posix_fadvise(DONTNEED)`
//! after the sync. [`MemorySlotDevice`] keeps the bytes in memory for tests.
//!
//! [`SlotDevices`] opens the device of slot A or B; [`FileSlotDevices`] maps the two slots to
//! paths (`/dev/disk/by-partlabel/SYSTEM-A`, … on a node, `--dev-slot-a FILE` in dev mode).

use basalt_bootloader::Slot;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A failed slot device operation, naming the slot, its device and the offset.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Opening the device failed.
    #[error("slot {slot} ({device}): open failed: {source}")]
    Open {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A positioned read, write, sync or size query failed.
    #[error("slot {slot} ({device}): {op} at offset {offset} failed: {source}")]
    Io {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// "write", "read", "sync", "size".
        op: &'static str,
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An access past the end of the device.
    #[error(
        "slot {slot} ({device}): {op} of {len} bytes at offset {offset} runs past the end ({size} bytes)"
    )]
    OutOfRange {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
        /// "write" or "read".
        op: &'static str,
        /// Where.
        offset: u64,
        /// How many bytes.
        len: u64,
        /// Device size.
        size: u64,
    },
}

/// Positioned I/O on one slot partition.
pub trait SlotDevice: Send {
    /// The slot it holds.
    fn slot(&self) -> Slot;
    /// The device, for messages (e.g. `/dev/vda3`).
    fn name(&self) -> String;
    /// Size in bytes.
    fn len(&self) -> Result<u64, DeviceError>;
    /// Whether the device has no bytes.
    fn is_empty(&self) -> Result<bool, DeviceError> {
        Ok(self.len()? == 0)
    }
    /// Writes all of `data` at `offset`.
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError>;
    /// Fills `buf` from `offset`.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError>;
    /// Makes every write so far durable (fsync).
    fn sync(&mut self) -> Result<(), DeviceError>;
    /// Drops cached pages so later reads come from the medium, where the platform allows.
    fn drop_cache(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Opens the device of a slot.
pub trait SlotDevices: Send + Sync {
    /// The device of `slot`, opened for reading and writing.
    fn open(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError>;
    /// The device of `slot`, opened for reading only (the booted slot, to copy chunks
    /// from). Defaults to [`SlotDevices::open`].
    fn open_read(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError> {
        self.open(slot)
    }
    /// The device's name, for messages.
    fn name(&self, slot: Slot) -> String;
}

fn index(slot: Slot) -> usize {
    match slot {
        Slot::A => 0,
        Slot::B => 1,
    }
}

/// A slot partition (block device) or a file, by path.
#[derive(Debug)]
pub struct FileSlotDevice {
    slot: Slot,
    path: PathBuf,
    file: File,
}

impl FileSlotDevice {
    /// Opens `path` read-write (it must exist).
    pub fn open(slot: Slot, path: &Path) -> Result<Self, DeviceError> {
        Self::open_with(slot, path, true)
    }

    /// Opens `path` read-only: writes fail.
    pub fn open_read(slot: Slot, path: &Path) -> Result<Self, DeviceError> {
        Self::open_with(slot, path, false)
    }

    fn open_with(slot: Slot, path: &Path, write: bool) -> Result<Self, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|source| DeviceError::Open {
                slot,
                device: path.display().to_string(),
                source,
            })?;
        Ok(FileSlotDevice {
            slot,
            path: path.to_path_buf(),
            file,
        })
    }

    fn io(&self, op: &'static str, offset: u64, source: std::io::Error) -> DeviceError {
        DeviceError::Io {
            slot: self.slot,
            device: self.path.display().to_string(),
            op,
            offset,
            source,
        }
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<(), DeviceError> {
        let size = self.len()?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(DeviceError::OutOfRange {
                slot: self.slot,
                device: self.path.display().to_string(),
                op,
                offset,
                len,
                size,
            });
        }
        Ok(())
    }
}

impl SlotDevice for FileSlotDevice {
    fn slot(&self) -> Slot {
        self.slot
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn len(&self) -> Result<u64, DeviceError> {
        // A block device reports size 0 in its metadata; seeking to the end works for both.
        let mut f = &self.file;
        f.seek(SeekFrom::End(0)).map_err(|e| self.io("size", 0, e))
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.check("write", offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io("write", offset, e))
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.check("read", offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io("read", offset, e))
    }

    fn sync(&mut self) -> Result<(), DeviceError> {
        self.file.sync_all().map_err(|e| self.io("sync", 0, e))
    }

    fn drop_cache(&mut self) -> Result<(), DeviceError> {
        // Dirty pages are not dropped: callers sync first. Advice errors (e.g. EINVAL on a
        // device that does not support it) only cost the guarantee of an uncached read.
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed);
        Ok(())
    }
}

/// Slot A and B by path.
#[derive(Debug, Clone)]
pub struct FileSlotDevices {
    paths: [PathBuf; 2],
}

impl FileSlotDevices {
    /// Slot A at `paths[0]`, slot B at `paths[1]`.
    pub fn new(paths: [PathBuf; 2]) -> Self {
        FileSlotDevices { paths }
    }
}

impl SlotDevices for FileSlotDevices {
    fn open(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError> {
        Ok(Box::new(FileSlotDevice::open(
            slot,
            &self.paths[index(slot)],
        )?))
    }

    fn open_read(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError> {
        Ok(Box::new(FileSlotDevice::open_read(
            slot,
            &self.paths[index(slot)],
        )?))
    }

    fn name(&self, slot: Slot) -> String {
        self.paths[index(slot)].display().to_string()
    }
}

/// Creates `path` as a slot file of `size` bytes when it is missing, or extends a shorter
/// one (dev mode: `--dev-slot-a FILE`). An existing file of at least `size` is left alone.
pub fn ensure_slot_file(path: &Path, size: u64) -> std::io::Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)?;
    if file.metadata()?.len() < size {
        file.set_len(size)?;
        file.sync_all()?;
    }
    Ok(())
}

/// A slot in memory: shared bytes (tests inspect them) and an optional corruption of
/// writes, to test the read-back.
#[derive(Debug, Clone)]
pub struct MemorySlotDevice {
    slot: Slot,
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Flip one bit of the byte written at this offset (simulates a medium that loses data).
    pub corrupt_write_at: Option<u64>,
    /// Writes seen, as (offset, length), in order.
    pub writes: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl MemorySlotDevice {
    /// A zero-filled slot of `size` bytes.
    pub fn new(slot: Slot, size: usize) -> Self {
        MemorySlotDevice {
            slot,
            bytes: Arc::new(Mutex::new(vec![0; size])),
            corrupt_write_at: None,
            writes: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A copy of the bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn range(
        &self,
        op: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<std::ops::Range<usize>, DeviceError> {
        let size = self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(DeviceError::OutOfRange {
                slot: self.slot,
                device: self.name(),
                op,
                offset,
                len: len as u64,
                size,
            }),
        }
    }
}

impl SlotDevice for MemorySlotDevice {
    fn slot(&self) -> Slot {
        self.slot
    }

    fn name(&self) -> String {
        format!("memory slot {}", self.slot)
    }

    fn len(&self) -> Result<u64, DeviceError> {
        Ok(self.bytes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        let r = self.range("write", offset, data.len())?;
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        bytes[r.clone()].copy_from_slice(data);
        if let Some(bad) = self.corrupt_write_at
            && r.contains(&(bad as usize))
        {
            bytes[bad as usize] ^= 0x01;
        }
        self.writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((offset, data.len() as u64));
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let r = self.range("read", offset, buf.len())?;
        buf.copy_from_slice(&self.bytes.lock().unwrap_or_else(|e| e.into_inner())[r]);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DeviceError> {
        Ok(())
    }
}

/// Two memory slots (clones share their bytes).
#[derive(Debug, Clone)]
pub struct MemorySlotDevices {
    /// Slot A and B.
    pub slots: [MemorySlotDevice; 2],
}

impl MemorySlotDevices {
    /// Two zero-filled slots of `size` bytes.
    pub fn new(size: usize) -> Self {
        MemorySlotDevices {
            slots: [
                MemorySlotDevice::new(Slot::A, size),
                MemorySlotDevice::new(Slot::B, size),
            ],
        }
    }

    /// The device of `slot`.
    pub fn slot(&self, slot: Slot) -> &MemorySlotDevice {
        &self.slots[index(slot)]
    }
}

impl SlotDevices for MemorySlotDevices {
    fn open(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError> {
        Ok(Box::new(self.slots[index(slot)].clone()))
    }

    fn name(&self, slot: Slot) -> String {
        self.slots[index(slot)].name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_device_positioned_io_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slot-b.img");
        ensure_slot_file(&path, 8192).unwrap();
        let mut d = FileSlotDevice::open(Slot::B, &path).unwrap();
        assert_eq!(d.len().unwrap(), 8192);
        d.write_at(4096, b"hello").unwrap();
        d.sync().unwrap();
        d.drop_cache().unwrap();
        let mut buf = [0u8; 5];
        d.read_at(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let e = d.write_at(8190, b"abc").unwrap_err().to_string();
        assert!(
            e.contains("slot B") && e.contains("offset 8190") && e.contains("slot-b.img"),
            "{e}"
        );
        // An existing, larger file is left alone.
        ensure_slot_file(&path, 4096).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 8192);
    }
}
