//! Loop devices: a file as a block device, through `/dev/loop-control`.
//!
//! `LOOP_CTL_GET_FREE` returns the number of an unbound loop device (creating one if all
//! are in use); `LOOP_CONFIGURE` (Linux 5.8+) binds the backing file, sets flags and
//! sizes in one call. The device is read-only (`LO_FLAGS_READ_ONLY`), detaches itself when
//! its last user closes it (`LO_FLAGS_AUTOCLEAR`: device-mapper keeps it open while the
//! root is mapped; until then the caller holds it open, or closing it would detach it) and reads the file with direct I/O (`LO_FLAGS_DIRECT_IO`), so the data
//! is not cached twice (once for the file, once for the loop device); the kernel falls
//! back to buffered I/O when the backing filesystem cannot do direct I/O.
//!
//! Debian builds `loop` as a module: it must be in the board's early modules for this path
//! to be taken (see [`super::extents`] for the path used without it).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `LOOP_CTL_GET_FREE`.
const LOOP_CTL_GET_FREE: u32 = 0x4C82;
/// `LOOP_CONFIGURE`.
const LOOP_CONFIGURE: u32 = 0x4C0A;
/// `LO_FLAGS_READ_ONLY`.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_FLAGS_AUTOCLEAR`.
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// `LO_FLAGS_DIRECT_IO`.
pub const LO_FLAGS_DIRECT_IO: u32 = 16;
/// `LO_NAME_SIZE`.
const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

impl LoopConfig {
    /// A configuration binding `fd` with `flags`; the file name is informational
    /// (`LOOP_GET_STATUS64`), truncated to 63 bytes.
    pub fn new(fd: u32, flags: u32, file_name: &str) -> Self {
        let mut name = [0u8; LO_NAME_SIZE];
        let n = file_name.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&file_name.as_bytes()[..n]);
        Self {
            fd,
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; 32],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        }
    }
}

/// A bound loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// Device number.
    pub major: u32,
    /// Device number.
    pub minor: u32,
}

impl LoopDevice {
    /// `major:minor`.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Whether the loop driver is there (built in, or its module loaded).
pub fn available(dev_dir: &Path) -> bool {
    dev_dir.join("loop-control").exists()
}

/// Binds `file` read-only to a free loop device. The returned handle is the open loop
/// device: with `LO_FLAGS_AUTOCLEAR` the binding ends when its last user closes it, so keep
/// the handle until the next user (device-mapper) has opened the device, then drop it.
pub fn attach_read_only(dev_dir: &Path, file: &Path) -> io::Result<(LoopDevice, File)> {
    let control = File::open(dev_dir.join("loop-control")).map_err(|e| {
        io::Error::new(e.kind(), format!("{}/loop-control: {e}", dev_dir.display()))
    })?;
    let backing = File::open(file)?;
    let flags = LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    let mut last = None;
    // Another process could take the free device between the two calls (there is none this
    // early, but the daemon may call this later): retry a few times on EBUSY.
    for _ in 0..5 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument.
        let n =
            unsafe { super::sys::ioctl_ptr(&control, LOOP_CTL_GET_FREE, std::ptr::null_mut()) }?;
        let path = dev_dir.join(format!("loop{n}"));
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative file descriptor"))?;
        let mut config = LoopConfig::new(fd, flags, &file.to_string_lossy());
        // SAFETY: `config` is a `struct loop_config` that outlives the call; the kernel only
        // reads it.
        let r = unsafe { super::sys::ioctl_ptr(&dev, LOOP_CONFIGURE, (&raw mut config).cast()) };
        match r {
            Ok(_) => {
                let rdev = dev.metadata()?.rdev();
                let device = LoopDevice {
                    path,
                    major: rustix::fs::major(rdev),
                    minor: rustix::fs::minor(rdev),
                };
                return Ok((device, dev));
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                last = Some(e)
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("LOOP_CONFIGURE {}: {e}", path.display()),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free loop device")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
        let c = LoopConfig::new(7, LO_FLAGS_READ_ONLY, &"x".repeat(100));
        assert_eq!(c.fd, 7);
        assert_eq!(c.info.lo_flags, 1);
        assert_eq!(c.info.lo_file_name[62], b'x');
        assert_eq!(c.info.lo_file_name[63], 0);
    }

    #[test]
    fn unavailable_without_loop_control() {
        let t = tempfile::tempdir().unwrap();
        assert!(!available(t.path()));
        let err = attach_read_only(t.path(), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("loop-control"), "{err}");
    }
}
