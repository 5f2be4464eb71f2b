//! First-boot storage: STATE created from a template when blank, DATA grown to fill the disk.
//!
//! The node has no e2fsprogs (machined is the initramfs's only program), so:
//!
//! - **STATE blank → created.** The image builder puts a small empty ext4 made by `mke2fs`
//!   (label STATE, reproducible) into the verified root filesystem at
//!   [`basalt_image::compose::STATE_TEMPLATE`]. When STATE's first 4 KiB (boot sector and the
//!   primary superblock) hold only `0x00` or only `0xFF` bytes, [`create_from_template`]
//!   writes the template at the partition's start, **superblock block last** (everything after
//!   the first 4 KiB, flush, then the first 4 KiB, flush): a power cut in between leaves the
//!   first 4 KiB blank, and the next boot starts over. The filesystem is then mounted and
//!   grown online to the partition's size ([`grow_mounted_ext4`]).
//! - **STATE with anything else → never formatted.** An ext4 superblock is mounted as it is
//!   (a mount failure is fatal). Data that is neither blank nor ext4 (a damaged filesystem,
//!   another filesystem) is refused ([`StorageError::NotBlank`]): the boot fails and is
//!   retried by the bootloader. Choice: formatting a damaged STATE would silently drop the
//!   machine's configuration and secrets and put the node back into maintenance mode, where
//!   whoever reaches it first can configure it; a node that does not boot is visible and
//!   recoverable (Reset or reflash), a hijacked one is not. Limit: a filesystem whose first
//!   4 KiB alone were zeroed counts as blank (STATE is one block group: no backup superblock).
//! - **DATA grown.** When the disk has room after its last partition (an image written to a
//!   larger card, a disk file extended), [`grow_table`] moves the backup GPT to the disk's end
//!   and extends DATA (the last partition) to the last whole MiB before it, with the shared
//!   [`basalt_bootloader::gpt_grow`] (the same code as `basalt-flash --grow-data`): backup
//!   first, flush, primary, flush, so the table is valid after a cut at any point. On an MBR
//!   disk (Raspberry Pi 3) [`basalt_bootloader::mbr_grow`] extends the extended container,
//!   then DATA's logical entry, flushing after each sector. The kernel
//!   is told with `BLKPG_RESIZE_PARTITION` (no re-read of a disk whose partitions are in use),
//!   and the mounted ext4 is grown with `EXT4_IOC_RESIZE_FS` (what `resize2fs` does online).
//!
//! Every step compares what is with what should be, so it is idempotent and a half-done grow
//! is finished on the next boot: the table step does nothing when the table already ends at
//! the disk's end; the kernel is told when its partition size differs from the table's; the
//! filesystem is grown when it is smaller than its partition. Limits: 512-byte logical
//! sectors; only DATA as the last partition grows; the MBR path is unit-tested on files
//! (sfdisk) but not yet booted on a Raspberry Pi image.
//!
//! Measured under QEMU TCG (qemu-arm64, `tests/tests/qemu_node_api.rs`): STATE created
//! (8 MiB template written, mounted, grown to 64 MiB) in 0.33 s; DATA grown from 256 to
//! 512 MiB (GPT, BLKPG, online resize) in 0.11 s; on later boots both stages take 0.05 s.

use basalt_bootloader::gpt_grow::{self, GptError};
use basalt_bootloader::mbr_grow::{self, MbrGrowError};
use rustix::fd::AsFd;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How much of a partition decides whether it is blank.
pub const BLANK_PROBE: usize = 4096;
/// `BLKPG` (`_IO(0x12, 105)`).
const BLKPG: u32 = 0x1269;
/// `BLKPG_RESIZE_PARTITION`.
const BLKPG_RESIZE_PARTITION: i32 = 3;
/// `EXT4_IOC_RESIZE_FS` (`_IOW('f', 16, __u64)`).
const EXT4_IOC_RESIZE_FS: u32 = 0x4008_6610;

/// A storage step that failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Reading or writing a device or file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The device or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The partition holds data that is neither blank nor ext4.
    #[error(
        "{} holds data that is not an ext4 filesystem: not formatting it (it may hold the machine's configuration); reset or rewrite it to start over",
        path.display()
    )]
    NotBlank {
        /// The partition.
        path: PathBuf,
    },
    /// The template is not an ext4 image, or does not fit.
    #[error("template {} for {}: {reason}", template.display(), path.display())]
    Template {
        /// The template file.
        template: PathBuf,
        /// The partition.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The GPT cannot be grown.
    #[error(transparent)]
    Gpt(#[from] GptError),
    /// The MBR cannot be grown.
    #[error(transparent)]
    Mbr(#[from] MbrGrowError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The fields of an ext4 superblock that growing needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Super {
    /// Block size in bytes.
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
}

impl Ext4Super {
    /// The filesystem's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * self.block_size
    }
}

/// Parses the superblock in `sb` (the 1024 bytes at offset 1024 of the filesystem).
pub fn parse_ext4_super(sb: &[u8]) -> Option<Ext4Super> {
    let u32_at = |at: usize| u32::from_le_bytes(sb[at..at + 4].try_into().unwrap_or([0; 4]));
    if sb.len() < 0x154 || sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    let log = u32_at(0x18);
    if log > 6 {
        return None;
    }
    let incompat_64bit = u32_at(0x60) & 0x80 != 0;
    let hi = if incompat_64bit {
        u64::from(u32_at(0x150))
    } else {
        0
    };
    Some(Ext4Super {
        block_size: 1024 << log,
        blocks: (hi << 32) | u64::from(u32_at(0x04)),
    })
}

/// What a partition holds, judged from its first [`BLANK_PROBE`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// An ext4 superblock.
    Ext4(Ext4Super),
    /// Only `0x00` or only `0xFF` bytes.
    Blank,
    /// Something else.
    Unknown,
}

/// Classifies a partition from its first bytes.
pub fn probe(first: &[u8]) -> Content {
    if let Some(sb) = first.get(1024..2048).and_then(parse_ext4_super) {
        return Content::Ext4(sb);
    }
    if first.iter().all(|&b| b == 0) || first.iter().all(|&b| b == 0xff) {
        Content::Blank
    } else {
        Content::Unknown
    }
}

/// Reads the first [`BLANK_PROBE`] bytes of `path` and classifies them.
pub fn probe_device(path: &Path) -> Result<Content, StorageError> {
    let mut first = vec![0u8; BLANK_PROBE];
    File::open(path)
        .and_then(|f| f.read_exact_at(&mut first, 0))
        .map_err(io_err("reading", path))?;
    Ok(probe(&first))
}

/// Size of a file or block device in bytes.
pub fn device_size(path: &Path) -> Result<u64, StorageError> {
    File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .map_err(io_err("sizing", path))
}

/// Writes the ext4 image `template` at the start of the partition `part` (superblock block
/// last, see the module documentation) and returns its superblock. Refuses a partition that
/// is not blank, and a template that is not ext4 or larger than the partition.
pub fn create_from_template(part: &Path, template: &Path) -> Result<Ext4Super, StorageError> {
    match probe_device(part)? {
        Content::Blank => {}
        Content::Ext4(_) | Content::Unknown => {
            return Err(StorageError::NotBlank {
                path: part.to_path_buf(),
            });
        }
    }
    let bad = |reason: String| StorageError::Template {
        template: template.to_path_buf(),
        path: part.to_path_buf(),
        reason,
    };
    let image = std::fs::read(template).map_err(io_err("reading", template))?;
    let sb = image
        .get(1024..2048)
        .and_then(parse_ext4_super)
        .ok_or_else(|| bad("no ext4 superblock".into()))?;
    let size = device_size(part)?;
    if image.len() as u64 > size || image.len() < BLANK_PROBE {
        return Err(bad(format!(
            "{} bytes do not fit a partition of {size} bytes",
            image.len()
        )));
    }
    let dev = OpenOptions::new()
        .write(true)
        .open(part)
        .map_err(io_err("opening", part))?;
    dev.write_all_at(&image[BLANK_PROBE..], BLANK_PROBE as u64)
        .and_then(|()| dev.sync_all())
        .map_err(io_err("writing the template to", part))?;
    dev.write_all_at(&image[..BLANK_PROBE], 0)
        .and_then(|()| dev.sync_all())
        .map_err(io_err("writing the superblock to", part))?;
    Ok(sb)
}

/// Grows DATA in the partition table of `disk` when the disk has room after it: on a GPT
/// ([`gpt_grow`]) the backup table moves to the disk's end and DATA (the last partition,
/// by name) is extended; on an MBR ([`mbr_grow`]) partition `mbr_number` is extended when it
/// is the last one. Returns DATA's new size in bytes when the table was rewritten (`Some(0)`
/// for a GPT whose backup moved but whose DATA did not grow), `None` when there was nothing
/// to do.
pub fn grow_table(disk: &Path, mbr_number: u32) -> Result<Option<u64>, StorageError> {
    let size = device_size(disk)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io_err("opening", disk))?;
    let mut head = vec![0u8; size.min(1 << 20) as usize];
    f.read_exact_at(&mut head, 0)
        .map_err(io_err("reading the partition table of", disk))?;
    let name = disk.display().to_string();
    let Some(len) = gpt_grow::primary_len(&head).filter(|&l| l <= head.len()) else {
        if head.len() < 512 || head[510..512] != [0x55, 0xaa] {
            return Ok(None);
        }
        let read = |offset: u64| {
            let mut s = vec![0u8; 512];
            f.read_exact_at(&mut s, offset).map(|()| s)
        };
        let Some(plan) = mbr_grow::grow_last(read, size, mbr_number, &name)? else {
            return Ok(None);
        };
        for w in &plan.writes {
            f.write_all_at(&w.sector, w.offset)
                .and_then(|()| f.sync_all())
                .map_err(io_err("writing the MBR/EBR of", disk))?;
        }
        return Ok(Some(plan.size));
    };
    let before = head.clone();
    let backup = gpt_grow::relocate(&mut head, size, Some("DATA"), &name)?;
    if head == before {
        return Ok(None);
    }
    // Backup first: until the primary is rewritten it still points to the old backup.
    f.write_all_at(&backup.entries, backup.entries_offset)
        .and_then(|()| f.write_all_at(&backup.header, backup.header_offset))
        .and_then(|()| f.sync_all())
        .map_err(io_err("writing the backup GPT of", disk))?;
    f.write_all_at(&head[..len], 0)
        .and_then(|()| f.sync_all())
        .map_err(io_err("writing the primary GPT of", disk))?;
    Ok(Some(backup.grown.map_or(0, |(_, s)| s)))
}

/// The side effects the kernel must do: told about a partition's new size, and growing a
/// mounted filesystem.
pub trait StorageOps {
    /// `BLKPG_RESIZE_PARTITION` on `disk`: partition `partn` spans `length` bytes from
    /// `start` (the start cannot change).
    fn resize_partition(&self, disk: &Path, partn: u32, start: u64, length: u64) -> io::Result<()>;
    /// `EXT4_IOC_RESIZE_FS` on the ext4 mounted at `mount`: grow it to `blocks` blocks.
    fn resize_ext4(&self, mount: &Path, blocks: u64) -> io::Result<()>;
}

/// [`StorageOps`] with the Linux ioctls.
pub struct LinuxStorage;

#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

impl StorageOps for LinuxStorage {
    fn resize_partition(&self, disk: &Path, partn: u32, start: u64, length: u64) -> io::Result<()> {
        let f = File::open(disk)?;
        let mut part = BlkpgPartition {
            start: i64::try_from(start).map_err(io::Error::other)?,
            length: i64::try_from(length).map_err(io::Error::other)?,
            pno: i32::try_from(partn).map_err(io::Error::other)?,
            devname: [0; 64],
            volname: [0; 64],
        };
        let mut arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as i32,
            data: &raw mut part,
        };
        // SAFETY: `arg` and the partition it points to live until the call returns and
        // have the kernel's `struct blkpg_ioctl_arg` / `struct blkpg_partition` layout.
        unsafe { super::sys::ioctl_ptr(f.as_fd(), BLKPG, (&raw mut arg).cast()) }?;
        Ok(())
    }

    fn resize_ext4(&self, mount: &Path, blocks: u64) -> io::Result<()> {
        let dir = File::open(mount)?;
        let mut n = blocks;
        // SAFETY: the command reads one u64, which lives until the call returns.
        unsafe { super::sys::ioctl_ptr(dir.as_fd(), EXT4_IOC_RESIZE_FS, (&raw mut n).cast()) }?;
        Ok(())
    }
}

/// Grows the ext4 on `part` (mounted at `mount`) to fill the partition. Returns the sizes
/// before and after in bytes, or `None` when it already fills it (less than one block left).
pub fn grow_mounted_ext4(
    ops: &dyn StorageOps,
    part: &Path,
    mount: &Path,
) -> Result<Option<(u64, u64)>, StorageError> {
    let mut sb = vec![0u8; 1024];
    File::open(part)
        .and_then(|f| f.read_exact_at(&mut sb, 1024))
        .map_err(io_err("reading the superblock of", part))?;
    let Some(fs) = parse_ext4_super(&sb) else {
        return Err(StorageError::NotBlank {
            path: part.to_path_buf(),
        });
    };
    let target = device_size(part)? / fs.block_size;
    if target <= fs.blocks {
        return Ok(None);
    }
    ops.resize_ext4(mount, target)
        .map_err(io_err("growing the ext4 mounted at", mount))?;
    Ok(Some((fs.bytes(), target * fs.block_size)))
}

/// Size in MiB with one decimal, for console lines.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::process::Command;

    fn mkfs(path: &Path, size: u64, label: &str) {
        File::create(path).unwrap().set_len(size).unwrap();
        let o = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", label])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
    }

    fn e2fsck_clean(path: &Path) -> String {
        let o = Command::new("e2fsck")
            .arg("-fn")
            .arg(path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        text
    }

    #[test]
    fn probe_tells_blank_ext4_and_other_data_apart() {
        assert_eq!(probe(&[0u8; BLANK_PROBE]), Content::Blank);
        assert_eq!(probe(&[0xffu8; BLANK_PROBE]), Content::Blank);
        let mut junk = [0u8; BLANK_PROBE];
        junk[3000] = 1;
        assert_eq!(probe(&junk), Content::Unknown);
        let dir = tempfile::tempdir().unwrap();
        let fs = dir.path().join("fs");
        mkfs(&fs, 16 << 20, "STATE");
        assert_eq!(
            probe_device(&fs).unwrap(),
            Content::Ext4(Ext4Super {
                block_size: 4096,
                blocks: 4096
            })
        );
    }

    #[test]
    fn template_is_written_only_to_a_blank_partition() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("template");
        mkfs(&template, 8 << 20, "STATE");
        let part = dir.path().join("part");
        File::create(&part).unwrap().set_len(32 << 20).unwrap();
        // Leftovers past the template must not matter.
        File::options()
            .write(true)
            .open(&part)
            .unwrap()
            .write_all_at(&[0x5a; 4096], 20 << 20)
            .unwrap();
        let sb = create_from_template(&part, &template).unwrap();
        assert_eq!(sb.bytes(), 8 << 20);
        e2fsck_clean(&part);
        let label = Command::new("dumpe2fs")
            .arg("-h")
            .arg(&part)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("Filesystem volume name:   STATE"));
        // Now it holds a filesystem: never again.
        let e = create_from_template(&part, &template).unwrap_err();
        assert!(matches!(e, StorageError::NotBlank { .. }), "{e}");
        // Neither blank nor ext4: refused, untouched.
        let other = dir.path().join("other");
        std::fs::write(&other, vec![7u8; 16 << 20]).unwrap();
        let e = create_from_template(&other, &template).unwrap_err();
        assert!(e.to_string().contains("not formatting it"), "{e}");
        assert!(std::fs::read(&other).unwrap().iter().all(|&b| b == 7));
        // A template larger than the partition.
        let small = dir.path().join("small");
        File::create(&small).unwrap().set_len(4 << 20).unwrap();
        let e = create_from_template(&small, &template).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    /// Partitions `disk` with the sfdisk `script` (the reference tool).
    fn sfdisk(disk: &std::path::Path, script: &[u8]) {
        use std::io::Write;
        let mut c = Command::new("sfdisk")
            .arg("-q")
            .arg(disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(script).unwrap();
        assert!(c.wait().unwrap().success());
    }

    #[test]
    fn gpt_grows_once_and_stays_valid() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        File::create(&disk).unwrap().set_len(32 << 20).unwrap();
        sfdisk(
            &disk,
            b"label: gpt\nsize=4MiB, name=BOOT\nsize=8MiB, name=STATE\nname=DATA\n",
        );
        // Same size: nothing to do, nothing written.
        let before = std::fs::read(&disk).unwrap();
        assert_eq!(grow_table(&disk, 3).unwrap(), None);
        assert_eq!(std::fs::read(&disk).unwrap(), before);
        // 96 MiB more: DATA ends at the last whole MiB before the backup entries.
        File::options()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        let grown = grow_table(&disk, 3).unwrap().unwrap();
        assert_eq!(grown, (128 - 13 - 1) << 20);
        let v = Command::new("sgdisk")
            .arg("-v")
            .arg(&disk)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "{text}");
        assert_eq!(grow_table(&disk, 3).unwrap(), None);
        // No table: left alone.
        let blank = dir.path().join("blank");
        File::create(&blank).unwrap().set_len(4 << 20).unwrap();
        assert_eq!(grow_table(&blank, 3).unwrap(), None);
        // An MBR: the last logical partition grows.
        let mbr = dir.path().join("mbr");
        File::create(&mbr).unwrap().set_len(32 << 20).unwrap();
        sfdisk(
            &mbr,
            b"label: dos\nsize=4MiB, type=c\ntype=f\nsize=4MiB\nsize=8MiB\n",
        );
        File::options()
            .write(true)
            .open(&mbr)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        assert_eq!(grow_table(&mbr, 5).unwrap(), None, "5 is not last");
        let grown = grow_table(&mbr, 6).unwrap().unwrap();
        let o = Command::new("sfdisk").arg("-V").arg(&mbr).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        let o = Command::new("sfdisk").arg("-d").arg(&mbr).output().unwrap();
        let dump = String::from_utf8_lossy(&o.stdout).replace(' ', "");
        assert!(
            dump.contains(&format!("mbr6:start=22528,size={},", grown / 512)),
            "{dump}"
        );
        assert_eq!(22528 * 512 + grown, 64 << 20);
        assert_eq!(grow_table(&mbr, 6).unwrap(), None);
    }

    #[derive(Default)]
    struct Recorder(RefCell<Vec<(PathBuf, u64)>>);

    impl StorageOps for Recorder {
        fn resize_partition(&self, _: &Path, _: u32, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn resize_ext4(&self, mount: &Path, blocks: u64) -> io::Result<()> {
            self.0.borrow_mut().push((mount.to_path_buf(), blocks));
            Ok(())
        }
    }

    #[test]
    fn ext4_is_grown_to_the_partition_only_when_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("part");
        mkfs(&part, 8 << 20, "DATA");
        File::options()
            .write(true)
            .open(&part)
            .unwrap()
            .set_len((40 << 20) + 1000)
            .unwrap();
        let ops = Recorder::default();
        let mount = Path::new("/var/lib/basalt-data");
        let r = grow_mounted_ext4(&ops, &part, mount).unwrap();
        assert_eq!(r, Some((8 << 20, 40 << 20)));
        assert_eq!(*ops.0.borrow(), [(mount.to_path_buf(), 10240)]);
        let full = dir.path().join("full");
        mkfs(&full, 8 << 20, "DATA");
        assert_eq!(grow_mounted_ext4(&ops, &full, mount).unwrap(), None);
        assert_eq!(ops.0.borrow().len(), 1);
    }
}
