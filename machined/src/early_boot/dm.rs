//! Device-mapper through its ioctl interface (`/dev/mapper/control`), as `dmsetup` does,
//! without libdevmapper and without udev.
//!
//! A device is created in three calls: `DM_DEV_CREATE` (name, optional UUID), then
//! `DM_TABLE_LOAD` (the targets, into the inactive table), then `DM_DEV_SUSPEND` without
//! the suspend flag, which resumes the device and makes the loaded table live. The request
//! is a `struct dm_ioctl` header (312 bytes) followed, for a table load, by one
//! `struct dm_target_spec` (40 bytes) per target, each followed by its NUL-terminated
//! parameter string padded to 8 bytes; `next` is the offset from one spec to the next
//! (`include/uapi/linux/dm-ioctl.h`). The encoding is plain bytes ([`encode`]) so it can
//! be checked without a kernel.
//!
//! The kernel explains a refused table in its log (`device-mapper: table: …`), which is on
//! the console during early boot; the ioctl itself only returns `EINVAL`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `DM_VERSION_MAJOR`; minor and patch 0 are accepted by every kernel of that major.
const VERSION: [u32; 3] = [4, 0, 0];
/// `sizeof(struct dm_ioctl)`.
pub const HEADER_SIZE: usize = 312;
/// `sizeof(struct dm_target_spec)`.
pub const SPEC_SIZE: usize = 40;
/// `DM_NAME_LEN`.
pub const NAME_LEN: usize = 128;
/// `DM_UUID_LEN`.
pub const UUID_LEN: usize = 129;
/// `DM_MAX_TYPE_NAME`.
const TYPE_LEN: usize = 16;
/// Room for the kernel's answers (it writes status and names back into the buffer).
const BUFFER_SIZE: usize = 16 * 1024;

/// `DM_READONLY_FLAG`.
pub const READONLY_FLAG: u32 = 1 << 0;
/// `DM_SUSPEND_FLAG`.
pub const SUSPEND_FLAG: u32 = 1 << 1;

const OFF_DATA_SIZE: usize = 12;
const OFF_DATA_START: usize = 16;
const OFF_TARGET_COUNT: usize = 20;
const OFF_FLAGS: usize = 28;
const OFF_DEV: usize = 40;
const OFF_NAME: usize = 48;
const OFF_UUID: usize = OFF_NAME + NAME_LEN;

/// Device-mapper commands (`DM_*_CMD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `DM_DEV_CREATE`.
    DevCreate = 3,
    /// `DM_DEV_REMOVE`.
    DevRemove = 4,
    /// `DM_DEV_SUSPEND` (also resumes).
    DevSuspend = 6,
    /// `DM_TABLE_LOAD`.
    TableLoad = 9,
}

impl Command {
    /// `_IOWR(0xfd, cmd, struct dm_ioctl)`.
    pub fn opcode(self) -> u32 {
        const READ_WRITE: u32 = 3;
        (READ_WRITE << 30) | ((HEADER_SIZE as u32) << 16) | (0xfd << 8) | self as u32
    }
}

/// One line of a table: `<start> <length> <type> <params>` (sectors of 512 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// First sector of the mapped device this target covers.
    pub start: u64,
    /// Sectors covered.
    pub length: u64,
    /// Target type, e.g. `linear`, `verity`.
    pub kind: String,
    /// Target parameters.
    pub params: String,
}

impl Target {
    /// The `dmsetup table` form of this line.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {}",
            self.start, self.length, self.kind, self.params
        )
    }
}

/// A request the kernel would refuse before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Name or UUID too long, or with a NUL or `/`.
    #[error("device-mapper {what} {value:?} is invalid")]
    BadName {
        /// `name` or `uuid`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A target type or parameter string is too long or has a NUL.
    #[error("device-mapper target {0:?} is invalid")]
    BadTarget(String),
}

/// Encodes a request: the header with `name`, `uuid` and `flags`, then `targets`. The
/// buffer is at least `min_size` bytes and `data_size` says so.
pub fn encode(
    name: &str,
    uuid: Option<&str>,
    flags: u32,
    targets: &[Target],
    min_size: usize,
) -> Result<Vec<u8>, EncodeError> {
    if name.is_empty() || name.len() >= NAME_LEN || name.contains(['\0', '/']) {
        return Err(EncodeError::BadName {
            what: "name",
            value: name.to_string(),
        });
    }
    if let Some(u) = uuid
        && (u.len() >= UUID_LEN || u.contains('\0'))
    {
        return Err(EncodeError::BadName {
            what: "uuid",
            value: u.to_string(),
        });
    }
    let mut buf = vec![0u8; HEADER_SIZE];
    for (i, v) in VERSION.iter().enumerate() {
        put_u32(&mut buf, i * 4, *v);
    }
    put_u32(&mut buf, OFF_DATA_START, HEADER_SIZE as u32);
    put_u32(&mut buf, OFF_TARGET_COUNT, targets.len() as u32);
    put_u32(&mut buf, OFF_FLAGS, flags);
    buf[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
    if let Some(u) = uuid {
        buf[OFF_UUID..OFF_UUID + u.len()].copy_from_slice(u.as_bytes());
    }
    for t in targets {
        if t.kind.is_empty()
            || t.kind.len() >= TYPE_LEN
            || t.kind.contains('\0')
            || t.params.contains('\0')
        {
            return Err(EncodeError::BadTarget(t.line()));
        }
        let params_len = (t.params.len() + 1).next_multiple_of(8);
        let at = buf.len();
        buf.resize(at + SPEC_SIZE + params_len, 0);
        buf[at..at + 8].copy_from_slice(&t.start.to_ne_bytes());
        buf[at + 8..at + 16].copy_from_slice(&t.length.to_ne_bytes());
        put_u32(&mut buf, at + 20, (SPEC_SIZE + params_len) as u32);
        buf[at + 24..at + 24 + t.kind.len()].copy_from_slice(t.kind.as_bytes());
        let p = at + SPEC_SIZE;
        buf[p..p + t.params.len()].copy_from_slice(t.params.as_bytes());
    }
    if buf.len() < min_size {
        buf.resize(min_size, 0);
    }
    let size = buf.len() as u32;
    put_u32(&mut buf, OFF_DATA_SIZE, size);
    Ok(buf)
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_ne_bytes());
}

/// The device number in a reply, decoded from the kernel's `huge_encode_dev`.
pub fn reply_dev(buf: &[u8]) -> (u32, u32) {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&buf[OFF_DEV..OFF_DEV + 8]);
    let dev = u64::from_ne_bytes(raw);
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    (major, minor)
}

/// A live device-mapper device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its device-mapper name.
    pub name: String,
    /// Device number.
    pub major: u32,
    /// Device number (`dm-<minor>`).
    pub minor: u32,
}

impl Device {
    /// The node devtmpfs creates: `/dev/dm-<minor>`.
    pub fn node(&self) -> PathBuf {
        PathBuf::from(format!("/dev/dm-{}", self.minor))
    }

    /// `major:minor`, for stacking another target on it.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// The control device.
#[derive(Debug)]
pub struct Control {
    file: File,
}

impl Control {
    /// Opens `/dev/mapper/control` (devtmpfs creates it when dm-mod loads).
    pub fn open() -> io::Result<Self> {
        Self::open_at(Path::new("/dev/mapper/control"))
    }

    /// Opens the control device at `path`.
    pub fn open_at(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Self { file })
    }

    fn call(&self, cmd: Command, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
        // SAFETY: `buf` is a `struct dm_ioctl` whose `data_size` is `buf.len()`; the kernel
        // reads and writes at most `data_size` bytes of it, and `buf` outlives the call.
        unsafe { super::sys::ioctl_ptr(&self.file, cmd.opcode(), buf.as_mut_ptr().cast()) }
            .map_err(|e| io::Error::new(e.kind(), format!("{cmd:?}: {e}")))?;
        Ok(buf)
    }

    fn simple(
        &self,
        cmd: Command,
        name: &str,
        uuid: Option<&str>,
        flags: u32,
    ) -> io::Result<Vec<u8>> {
        let buf = encode(name, uuid, flags, &[], BUFFER_SIZE)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.call(cmd, buf)
    }

    /// Creates `name` with `targets` and activates it; removes it again when the table is
    /// refused, so a retry can reuse the name.
    pub fn create(
        &self,
        name: &str,
        uuid: Option<&str>,
        targets: &[Target],
        read_only: bool,
    ) -> io::Result<Device> {
        self.simple(Command::DevCreate, name, uuid, 0)?;
        let activate = || -> io::Result<Device> {
            let flags = if read_only { READONLY_FLAG } else { 0 };
            let buf = encode(name, None, flags, targets, BUFFER_SIZE)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            self.call(Command::TableLoad, buf).map_err(|e| {
                io::Error::new(e.kind(), format!("{e} (the kernel log above says why)"))
            })?;
            let reply = self.simple(Command::DevSuspend, name, None, 0)?;
            let (major, minor) = reply_dev(&reply);
            Ok(Device {
                name: name.to_string(),
                major,
                minor,
            })
        };
        activate().inspect_err(|_| {
            let _ = self.remove(name);
        })
    }

    /// Removes `name`.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.simple(Command::DevRemove, name, None, 0).map(|_| ())
    }
}

/// Adds `/dev/mapper/<name>` → `../dm-<minor>`, as udev would (there is no udev); an
/// existing link is replaced.
pub fn link_mapper_name(dev_dir: &Path, device: &Device) -> io::Result<PathBuf> {
    let dir = dev_dir.join("mapper");
    std::fs::create_dir_all(&dir)?;
    let link = dir.join(&device.name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(format!("../dm-{}", device.minor), &link)?;
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn opcodes_match_the_kernel_headers() {
        // values of DM_DEV_CREATE etc. from <linux/dm-ioctl.h> (all architectures with the
        // generic ioctl encoding: x86_64, aarch64)
        assert_eq!(Command::DevCreate.opcode(), 0xc138_fd03);
        assert_eq!(Command::DevRemove.opcode(), 0xc138_fd04);
        assert_eq!(Command::DevSuspend.opcode(), 0xc138_fd06);
        assert_eq!(Command::TableLoad.opcode(), 0xc138_fd09);
    }

    #[test]
    fn table_load_layout() {
        let targets = [
            Target {
                start: 0,
                length: 8,
                kind: "linear".into(),
                params: "254:2 2048".into(),
            },
            Target {
                start: 8,
                length: 16,
                kind: "linear".into(),
                params: "254:2 9000".into(),
            },
        ];
        let b = encode(
            "basalt-rootfs",
            Some("BASALT-x"),
            READONLY_FLAG,
            &targets,
            0,
        )
        .unwrap();
        assert_eq!(u32_at(&b, 0), 4);
        assert_eq!(u32_at(&b, OFF_DATA_SIZE) as usize, b.len());
        assert_eq!(u32_at(&b, OFF_DATA_START) as usize, HEADER_SIZE);
        assert_eq!(u32_at(&b, OFF_TARGET_COUNT), 2);
        assert_eq!(u32_at(&b, OFF_FLAGS), READONLY_FLAG);
        assert_eq!(&b[OFF_NAME..OFF_NAME + 14], b"basalt-rootfs\0");
        assert_eq!(&b[OFF_UUID..OFF_UUID + 9], b"BASALT-x\0");
        // first spec: "254:2 2048" + NUL = 11 bytes, padded to 16
        let s0 = HEADER_SIZE;
        assert_eq!(u64_at(&b, s0), 0);
        assert_eq!(u64_at(&b, s0 + 8), 8);
        assert_eq!(u32_at(&b, s0 + 20) as usize, SPEC_SIZE + 16);
        assert_eq!(&b[s0 + 24..s0 + 31], b"linear\0");
        assert_eq!(&b[s0 + 40..s0 + 51], b"254:2 2048\0");
        let s1 = s0 + SPEC_SIZE + 16;
        assert_eq!(u64_at(&b, s1), 8);
        assert_eq!(u64_at(&b, s1 + 8), 16);
        assert_eq!(&b[s1 + 40..s1 + 51], b"254:2 9000\0");
        assert_eq!(b.len(), s1 + SPEC_SIZE + 16);
        assert_eq!(b.len() % 8, 0);
        // min_size pads and data_size follows
        let padded = encode("x", None, 0, &[], 4096).unwrap();
        assert_eq!(padded.len(), 4096);
        assert_eq!(u32_at(&padded, OFF_DATA_SIZE), 4096);
        assert_eq!(u32_at(&padded, OFF_TARGET_COUNT), 0);
    }

    #[test]
    fn refuses_bad_names_and_targets() {
        assert!(encode("", None, 0, &[], 0).is_err());
        assert!(encode("a/b", None, 0, &[], 0).is_err());
        assert!(encode(&"n".repeat(128), None, 0, &[], 0).is_err());
        assert!(encode("ok", Some(&"u".repeat(129)), 0, &[], 0).is_err());
        let t = Target {
            start: 0,
            length: 1,
            kind: "a-very-long-target-type".into(),
            params: String::new(),
        };
        assert!(encode("ok", None, 0, &[t], 0).is_err());
    }

    #[test]
    fn device_number_decoding() {
        let mut b = vec![0u8; HEADER_SIZE];
        // major 254, minor 0x12345: huge_encode_dev layout
        let (major, minor) = (254u64, 0x12345u64);
        let dev = (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12);
        b[OFF_DEV..OFF_DEV + 8].copy_from_slice(&dev.to_ne_bytes());
        assert_eq!(reply_dev(&b), (254, 0x12345));
        let d = Device {
            name: "basalt-root".into(),
            major: 254,
            minor: 1,
        };
        assert_eq!(d.node(), Path::new("/dev/dm-1"));
        assert_eq!(d.dev_string(), "254:1");
    }

    #[test]
    fn mapper_link() {
        let t = tempfile::tempdir().unwrap();
        let d = Device {
            name: "basalt-root".into(),
            major: 254,
            minor: 1,
        };
        let link = link_mapper_name(t.path(), &d).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../dm-1"));
        link_mapper_name(t.path(), &d).unwrap();
    }
}
