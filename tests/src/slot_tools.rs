//! Test-only tools that make bad slots and damaged disks, for the rollback and power-cut
//! tests (issue 6, tests c, d and f).
//!
//! - [`build_static`]: a tiny static program for a node's architecture from a C source
//!   under `tests/testdata/` (e.g. a "machined" that exits at once): aarch64 with the cross
//!   gcc that `scripts/setup-host` installs, x86_64 with the host's gcc and glibc's `libc.a`;
//! - [`slot_without_rootfs`]: a copy of a built slot image whose `rootfs.img` is deleted,
//!   i.e. a slot whose kernel and initramfs boot but whose root cannot be found;
//! - [`sign_slot`]: a signed update bundle for any slot image, with basalt-image's bundle
//!   writer (the same code as `basalt-image build`), so the node accepts the bad slot;
//! - [`sd_card_copy`], [`write_slot`], [`open_fat`]: a disk image as a QEMU SD card (padded
//!   to a power of two), a slot image written over a partition, and a partition's FAT by
//!   label or number (MBR disks, e.g. the Raspberry Pi's, have no labels);
//! - [`flip_rootfs_byte`]: flips one byte inside the squashfs of a slot partition's
//!   `rootfs.img` on a disk image file, through the FAT filesystem of that partition.
//!
//! The slot shape is the same on U-Boot and UEFI boards (a FAT filesystem with the kernel,
//! initramfs and `rootfs.img`); on UEFI boards the activation also copies the slot's kernel
//! and initramfs onto the ESP, so a slot without `rootfs.img` still starts its kernel and
//! fails at the root, and a flipped byte in `rootfs.img` is only seen by dm-verity.
//!
//! None of this is a production path: basalt-image has no flag that makes a broken slot.

use basalt_boards::Board;
use basalt_bootloader::partition_table::PartitionTable;
use basalt_image::bundle::{BundleMeta, BundleWriter, SigningKey, VerifiedManifest};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

/// The name of the root filesystem inside a slot.
pub const SLOT_ROOTFS: &str = basalt_image::compose::SLOT_ROOTFS;

/// Compiles `source` (C, under the repository) into a static executable `out` for `arch`
/// (`aarch64`: `aarch64-linux-gnu-gcc`; `x86_64`: the host's `gcc`) with `-static -Os`;
/// panics with the compiler's output on failure.
pub fn build_static(arch: &str, source: &Path, out: &Path) {
    let gcc = match arch {
        "aarch64" => "aarch64-linux-gnu-gcc",
        "x86_64" => "gcc",
        other => panic!("no C compiler for {other}"),
    };
    let o = Command::new(gcc)
        .args(["-static", "-Os", "-Wall", "-o"])
        .arg(out)
        .arg(source)
        .output()
        .unwrap_or_else(|e| panic!("{gcc} does not run ({e}): run scripts/setup-host"));
    assert!(
        o.status.success(),
        "compiling {} with {gcc}: {}{}",
        source.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A `Read + Write + Seek` window onto `len` bytes at `start` of a file (one partition of
/// a disk image, or a whole slot image), for fatfs.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    /// The window of `len` bytes at `start` of `path`, opened read-write.
    pub fn open(path: &Path, start: u64, len: u64) -> io::Result<Window> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Window {
            file,
            start,
            len,
            pos: 0,
        })
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
            SeekFrom::End(d) => i128::from(self.len) + i128::from(d),
        };
        if pos < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// Which partition of a disk: by GPT label, or by number (MBR disks have no labels).
#[derive(Debug, Clone, Copy)]
pub enum PartitionRef<'a> {
    /// The GPT partition name, e.g. `SYSTEM-B`.
    Label(&'a str),
    /// The partition number (1-based), as the kernel and U-Boot count on MBR.
    Number(u32),
}

/// Start and size in bytes of partition `which` on the disk image `disk`.
pub fn partition_extent(disk: &Path, which: PartitionRef) -> (u64, u64) {
    let name = disk.display().to_string();
    let table = PartitionTable::read(
        &mut File::open(disk).unwrap_or_else(|e| panic!("{name}: {e}")),
        &name,
    )
    .unwrap_or_else(|e| panic!("partition table of {name}: {e}"));
    let part = match which {
        PartitionRef::Label(label) => table.by_label(label),
        PartitionRef::Number(n) => table.by_number(n),
    }
    .unwrap_or_else(|| panic!("no partition {which:?} on {name}"));
    (part.start, part.size)
}

/// The FAT filesystem of the partition labelled `label` on the disk image `disk`.
pub fn open_partition_fat(disk: &Path, label: &str) -> fatfs::FileSystem<Window> {
    open_fat(disk, PartitionRef::Label(label))
}

/// The FAT filesystem of partition `which` on the disk image `disk`.
pub fn open_fat(disk: &Path, which: PartitionRef) -> fatfs::FileSystem<Window> {
    let (start, size) = partition_extent(disk, which);
    let window = Window::open(disk, start, size).unwrap();
    fatfs::FileSystem::new(window, fatfs::FsOptions::new())
        .unwrap_or_else(|e| panic!("{which:?} on {} is not FAT: {e}", disk.display()))
}

/// Copies the slot image `slot` to `out` (sparse: all-zero MiB runs stay holes) and deletes
/// `rootfs.img` from the copy's FAT filesystem.
pub fn slot_without_rootfs(slot: &Path, out: &Path) {
    sparse_copy(slot, out);
    let len = std::fs::metadata(out).unwrap().len();
    let fs = fatfs::FileSystem::new(Window::open(out, 0, len).unwrap(), fatfs::FsOptions::new())
        .unwrap_or_else(|e| panic!("{} is not FAT: {e}", out.display()));
    fs.root_dir()
        .remove(SLOT_ROOTFS)
        .unwrap_or_else(|e| panic!("removing {SLOT_ROOTFS} from {}: {e}", out.display()));
    fs.unmount().unwrap();
}

/// Signs `slot` as a bundle of `board` (its name and architecture) at `version` with `key`
/// into `out`, carrying `verity_root_hash` (hex) in the manifest, as `basalt-image build`
/// does.
pub fn sign_slot(
    slot: &Path,
    board: &Board,
    version: &str,
    verity_root_hash: &str,
    key: &SigningKey,
    out: &Path,
) -> VerifiedManifest {
    let mut root = [0u8; 32];
    for (i, b) in root.iter_mut().enumerate() {
        *b = u8::from_str_radix(&verity_root_hash[2 * i..2 * i + 2], 16)
            .unwrap_or_else(|e| panic!("root hash {verity_root_hash}: {e}"));
    }
    let meta = BundleMeta::new(
        board.name.as_str(),
        version,
        board.arch.as_str(),
        1_700_000_000,
        root,
    );
    BundleWriter::write(slot, &meta, key, out)
        .unwrap_or_else(|e| panic!("signing {}: {e}", slot.display()))
}

/// Flips one byte in the middle of the squashfs data of `rootfs.img` in the partition
/// `label` (SYSTEM-A or SYSTEM-B) of `disk`, in place; returns the byte's offset in the file.
pub fn flip_rootfs_byte(disk: &Path, label: &str) -> u64 {
    let fs = open_partition_fat(disk, label);
    let mut f = fs
        .root_dir()
        .open_file(SLOT_ROOTFS)
        .unwrap_or_else(|e| panic!("{SLOT_ROOTFS} in {label}: {e}"));
    let mut sb = [0u8; 96];
    f.read_exact(&mut sb).unwrap();
    assert_eq!(
        &sb[..4],
        b"hsqs",
        "{SLOT_ROOTFS} in {label} starts with a squashfs"
    );
    let bytes_used = u64::from_le_bytes(sb[40..48].try_into().unwrap());
    let at = bytes_used / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.flush().unwrap();
    drop(f);
    fs.unmount().unwrap();
    at
}

/// Copies `from` to `to` leaving all-zero MiB chunks as holes.
pub fn sparse_copy(from: &Path, to: &Path) {
    let mut src = File::open(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let len = src.metadata().unwrap().len();
    let mut dst = File::create(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = buf.len().min((len - off) as usize);
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(off)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        off += n as u64;
    }
    dst.set_len(len).unwrap();
}

/// A copy of the disk image `disk` at `out` as an SD card for QEMU: sparse, grown with zeros
/// to the next power of two (QEMU's SD card model refuses other sizes).
pub fn sd_card_copy(disk: &Path, out: &Path) {
    sparse_copy(disk, out);
    let len = std::fs::metadata(out).unwrap().len();
    File::options()
        .write(true)
        .open(out)
        .and_then(|f| f.set_len(len.next_power_of_two()))
        .unwrap_or_else(|e| panic!("padding {}: {e}", out.display()));
}

/// Writes the slot image `slot` over the start of partition `which` of `disk`, every byte
/// (as an update writes a slot), and syncs.
pub fn write_slot(disk: &Path, which: PartitionRef, slot: &Path) {
    let (start, size) = partition_extent(disk, which);
    let len = std::fs::metadata(slot).unwrap().len();
    assert!(
        len <= size,
        "{} ({len} bytes) does not fit partition {which:?} ({size} bytes)",
        slot.display()
    );
    let mut dst = File::options().write(true).open(disk).unwrap();
    dst.seek(SeekFrom::Start(start)).unwrap();
    io::copy(&mut File::open(slot).unwrap(), &mut dst)
        .unwrap_or_else(|e| panic!("writing {} to {}: {e}", slot.display(), disk.display()));
    dst.sync_all().unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_reads_and_writes_only_its_range() {
        let p = std::env::temp_dir().join(format!("basalt-window-test-{}", std::process::id()));
        std::fs::write(&p, [0u8; 32]).unwrap();
        let mut w = Window::open(&p, 8, 8).unwrap();
        w.write_all(&[1; 8]).unwrap();
        assert_eq!(w.write(&[2; 4]).unwrap(), 0, "nothing past the end");
        w.seek(SeekFrom::End(-2)).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(w.read(&mut b).unwrap(), 2);
        let all = std::fs::read(&p).unwrap();
        assert_eq!(&all[..8], &[0; 8]);
        assert_eq!(&all[8..16], &[1; 8]);
        assert_eq!(&all[16..], &[0; 16]);
        assert!(w.seek(SeekFrom::Current(-100)).is_err());
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn sd_card_copy_pads_to_a_power_of_two() {
        let dir = std::env::temp_dir().join(format!("basalt-sd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (disk, sd) = (dir.join("disk.img"), dir.join("sd.img"));
        let mut data = vec![0u8; (3 << 20) + 5];
        data[(2 << 20) + 7] = 0xa5;
        std::fs::write(&disk, &data).unwrap();
        sd_card_copy(&disk, &sd);
        let copy = std::fs::read(&sd).unwrap();
        assert_eq!(copy.len(), 4 << 20);
        assert_eq!(&copy[..data.len()], &data[..]);
        assert!(copy[data.len()..].iter().all(|b| *b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
