//! The write target behind a small trait ([`Target`]), and its real implementation
//! [`DeviceFile`]: a block device (or, in tests, a plain file) opened twice, once with
//! `O_DIRECT` for aligned bulk I/O and once buffered for unaligned pieces and as the
//! fallback when the target refuses `O_DIRECT` (tmpfs files, some USB bridges).
//!
//! Whole-disk targets are opened with `O_EXCL`, so the kernel refuses the open while a
//! partition is mounted or another exclusive user (another flasher, `mkfs`) holds it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::num::NonZeroU64;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Buffer alignment for `O_DIRECT` (covers 512 and 4096 byte logical blocks).
pub const ALIGN: usize = 4096;

/// A failed operation on a target, naming the device and offset.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// Opening failed.
    #[error("failed to open {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The cause (EBUSY: in use or mounted).
        #[source]
        source: io::Error,
    },
    /// An I/O call failed.
    #[error("failed to {op} {name} at offset {offset}: {source}")]
    Io {
        /// write, read, sync.
        op: &'static str,
        /// The device.
        name: String,
        /// Byte offset.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A buffer whose start is [`ALIGN`]-aligned (safe code: an over-allocated `Vec` and an
/// offset into it; moving the `Vec` does not move its heap block).
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }

    /// Shortens the buffer.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// What the writer and verifier need from a device.
pub trait Target: Send {
    /// Name for messages (`/dev/sdb`).
    fn name(&self) -> &str;
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Writes all of `data` at `offset`.
    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError>;
    /// Reads exactly `buf.len()` bytes at `offset`, bypassing the page cache.
    fn read_uncached(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;
    /// Flushes written data to the medium (fdatasync).
    fn sync(&mut self) -> Result<(), BlockError>;
    /// Drops the device's page cache and asks the kernel to re-read the partition table
    /// (BLKFLSBUF, BLKRRPART; errors ignored: plain files do not support them).
    fn release(&mut self);
    /// Whether bulk writes go through `O_DIRECT`.
    fn direct(&self) -> bool;
}

/// A device (or file) opened for writing.
#[derive(Debug)]
pub struct DeviceFile {
    name: String,
    buffered: File,
    direct: Option<File>,
    size: u64,
    block: u64,
}

impl DeviceFile {
    /// Opens `path` read-write; `exclusive` adds `O_EXCL` (block devices), `direct` tries
    /// `O_DIRECT`.
    pub fn open(path: &Path, exclusive: bool, direct: bool) -> Result<DeviceFile, BlockError> {
        let open_err = |source| BlockError::Open {
            path: path.to_path_buf(),
            source,
        };
        let excl = if exclusive {
            rustix::fs::OFlags::EXCL.bits() as i32
        } else {
            0
        };
        let mut buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(excl)
            .open(path)
            .map_err(open_err)?;
        let size = buffered.seek(SeekFrom::End(0)).map_err(open_err)?;
        let block = rustix::fs::ioctl_blksszget(&buffered).map_or(512, u64::from);
        let direct = if direct {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path)
                .ok()
        } else {
            None
        };
        Ok(DeviceFile {
            name: path.display().to_string(),
            buffered,
            direct,
            size,
            block: block.max(512),
        })
    }

    fn aligned(&self, data: &[u8], offset: u64) -> bool {
        (data.as_ptr() as usize).is_multiple_of(ALIGN)
            && (data.len() as u64).is_multiple_of(self.block)
            && offset.is_multiple_of(self.block)
    }

    fn io(&self, op: &'static str, offset: u64) -> impl FnOnce(io::Error) -> BlockError + '_ {
        move |source| BlockError::Io {
            op,
            name: self.name.clone(),
            offset,
            source,
        }
    }
}

impl Target for DeviceFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), BlockError> {
        if self.aligned(data, offset)
            && let Some(d) = &self.direct
        {
            match d.write_all_at(data, offset) {
                Ok(()) => return Ok(()),
                // EINVAL: this target does not do O_DIRECT after all; fall back for good.
                Err(e) if e.raw_os_error() == Some(22) => self.direct = None,
                Err(e) => return Err(self.io("write", offset)(e)),
            }
        }
        self.buffered
            .write_all_at(data, offset)
            .map_err(self.io("write", offset))
    }

    fn read_uncached(&mut self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        if self.aligned(buf, offset)
            && let Some(d) = &self.direct
        {
            match d.read_exact_at(buf, offset) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(22) => {}
                Err(e) => return Err(self.io("read", offset)(e)),
            }
        }
        // Buffered: drop the cached pages first so the bytes come from the medium.
        let _ = rustix::fs::fadvise(
            &self.buffered,
            offset,
            NonZeroU64::new(buf.len() as u64),
            rustix::fs::Advice::DontNeed,
        );
        self.buffered
            .read_exact_at(buf, offset)
            .map_err(self.io("read", offset))
    }

    fn sync(&mut self) -> Result<(), BlockError> {
        rustix::fs::fdatasync(&self.buffered)
            .map_err(|e| self.io("sync", 0)(io::Error::from(e)))?;
        if let Some(d) = &self.direct {
            rustix::fs::fdatasync(d).map_err(|e| self.io("sync", 0)(io::Error::from(e)))?;
        }
        Ok(())
    }

    fn release(&mut self) {
        let _ = rustix::fs::fadvise(&self.buffered, 0, None, rustix::fs::Advice::DontNeed);
        // SAFETY: BLKFLSBUF (_IO(0x12, 97)) and BLKRRPART (_IO(0x12, 95)) take no argument
        // and only act on the device behind the descriptor; on other files they fail with
        // ENOTTY, which is ignored.
        unsafe {
            use rustix::ioctl::{NoArg, ioctl, opcode};
            let _ = ioctl(&self.buffered, NoArg::<{ opcode::none(0x12, 97) }>::new());
            let _ = ioctl(&self.buffered, NoArg::<{ opcode::none(0x12, 95) }>::new());
        }
    }

    fn direct(&self) -> bool {
        self.direct.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned() {
        for n in [1, 4096, 1 << 20] {
            let b = AlignedBuf::new(n);
            assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
            assert_eq!(b.as_slice().len(), n);
        }
    }

    #[test]
    fn file_target_writes_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        let mut t = DeviceFile::open(&p, false, true).unwrap();
        assert_eq!(t.size(), 1 << 20);
        let mut b = AlignedBuf::new(8192);
        b.as_mut_slice().fill(0xab);
        t.write_at(b.as_slice(), 4096).unwrap();
        t.write_at(b"xyz", 100).unwrap();
        t.sync().unwrap();
        let mut r = AlignedBuf::new(8192);
        t.read_uncached(r.as_mut_slice(), 4096).unwrap();
        assert_eq!(r.as_slice(), b.as_slice());
        let mut s = [0u8; 3];
        t.read_uncached(&mut s, 100).unwrap();
        assert_eq!(&s, b"xyz");
        t.release();
    }
}
