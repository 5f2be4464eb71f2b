//! A file as a block device without the loop driver: device-mapper `linear` targets over
//! the file's extents on its partition.
//!
//! The slot's `rootfs.img` lives in the slot's FAT filesystem. Debian builds the loop
//! driver as a module and the board's early modules do not include it; device-mapper
//! (`dm-mod`, needed for dm-verity anyway) has the `linear` target built in. So machined
//! asks the filesystem where the file's clusters are (`FIBMAP`, which vfat implements; it
//! needs `CAP_SYS_RAWIO`, which PID 1 has), merges adjacent clusters into extents and maps
//! each extent with one `linear` target onto the partition. The slot filesystem is
//! mounted read-only and never written while booted, so the extents cannot move.
//!
//! A mounted partition is claimed exclusively by its filesystem, and device-mapper claims
//! the devices under its targets exclusively too, so the two cannot share the partition
//! directly. Early boot therefore mounts the slot FAT through an identity `linear` device
//! over the whole partition (`basalt-slot`); all device-mapper devices share one claim (as
//! logical volumes share their physical volume), so `basalt-rootfs` can then map the file's
//! extents from the same partition. The identity map makes the sector numbers `FIBMAP`
//! returns for the filesystem's device valid on the partition.
//!
//! One `FIBMAP` per cluster (`statfs` reports the cluster size as `f_bsize` on vfat):
//! 21 000 calls for the 82 MiB qemu-arm64 root with 4 KiB clusters, 1.7 s under QEMU TCG
//! (where every system call is slow; natively a syscall costs about a microsecond). A wrong map cannot go
//! unnoticed: dm-verity above it checks every block against the root hash.

use super::dm::Target;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// `FIBMAP`: `_IO(0x00, 1)`; the argument is an `int` block number, replaced by the
/// filesystem block number.
const FIBMAP: u32 = 1;
/// `FIGETBSZ`: `_IO(0x00, 2)`; the filesystem block size into an `int`.
const FIGETBSZ: u32 = 2;
/// Sector size of device-mapper tables.
const SECTOR: u64 = 512;

/// A run of the file that is contiguous on the device, in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the device.
    pub physical: u64,
    /// Length.
    pub length: u64,
}

/// Where a file is on its block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    /// The filesystem's device number.
    pub major: u32,
    /// The filesystem's device number.
    pub minor: u32,
    /// File size in bytes.
    pub size: u64,
    /// The extents, in file order, covering the whole file.
    pub extents: Vec<Extent>,
}

impl FileMap {
    /// `linear` targets mapping the file onto its filesystem's device, one per extent.
    pub fn linear_targets(&self) -> Vec<Target> {
        linear_targets(&self.extents, &format!("{}:{}", self.major, self.minor))
    }
}

/// Merges chunk positions (`(logical, physical)` sector offsets of consecutive chunks of
/// `chunk` sectors, the last one cut to `total`) into extents.
pub fn merge(chunks: impl IntoIterator<Item = (u64, u64)>, chunk: u64, total: u64) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for (logical, physical) in chunks {
        let length = chunk.min(total.saturating_sub(logical));
        if length == 0 {
            continue;
        }
        if let Some(last) = out.last_mut()
            && last.logical + last.length == logical
            && last.physical + last.length == physical
        {
            last.length += length;
            continue;
        }
        out.push(Extent {
            logical,
            physical,
            length,
        });
    }
    out
}

/// `<logical> <length> linear <dev> <physical>` for every extent.
pub fn linear_targets(extents: &[Extent], dev: &str) -> Vec<Target> {
    extents
        .iter()
        .map(|e| Target {
            start: e.logical,
            length: e.length,
            kind: "linear".to_string(),
            params: format!("{dev} {}", e.physical),
        })
        .collect()
}

/// Maps `path` with `FIBMAP`. The file size must be a multiple of 512 bytes and every
/// block must be allocated (FAT files have no holes).
pub fn map_file(path: &Path) -> io::Result<FileMap> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let size = meta.len();
    if size == 0 || !size.is_multiple_of(SECTOR) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: size {size} is not a positive multiple of 512",
                path.display()
            ),
        ));
    }
    let mut block_size: i32 = 0;
    // SAFETY: FIGETBSZ writes one int through the pointer, which outlives the call.
    unsafe { super::sys::ioctl_ptr(&file, FIGETBSZ, (&raw mut block_size).cast()) }
        .map_err(|e| io::Error::new(e.kind(), format!("FIGETBSZ {}: {e}", path.display())))?;
    let block_size = u64::try_from(block_size).unwrap_or(0);
    if block_size < SECTOR || !block_size.is_multiple_of(SECTOR) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: filesystem block size {block_size}", path.display()),
        ));
    }
    // Clusters are contiguous: ask once per cluster when the filesystem says how big they are.
    let cluster = rustix::fs::fstatfs(&file)
        .ok()
        .map(|s| s.f_bsize as u64)
        .filter(|c| *c >= block_size && c.is_multiple_of(block_size))
        .unwrap_or(block_size);
    let blocks_per_chunk = cluster / block_size;
    let chunks = size.div_ceil(cluster);
    let mut positions = Vec::with_capacity(usize::try_from(chunks).unwrap_or(0));
    for i in 0..chunks {
        let logical_block = i * blocks_per_chunk;
        let mut block = i32::try_from(logical_block).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: too large for FIBMAP", path.display()),
            )
        })?;
        // SAFETY: FIBMAP reads and writes one int through the pointer, which outlives the call.
        unsafe { super::sys::ioctl_ptr(&file, FIBMAP, (&raw mut block).cast()) }
            .map_err(|e| io::Error::new(e.kind(), format!("FIBMAP {}: {e}", path.display())))?;
        if block <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: block {logical_block} is not allocated", path.display()),
            ));
        }
        let sectors_per_block = block_size / SECTOR;
        positions.push((
            logical_block * sectors_per_block,
            block as u64 * sectors_per_block,
        ));
    }
    let dev = meta.dev();
    Ok(FileMap {
        major: rustix::fs::major(dev),
        minor: rustix::fs::minor(dev),
        size,
        extents: merge(positions, cluster / SECTOR, size / SECTOR),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_contiguous_chunks() {
        // 4 KiB clusters (8 sectors), a 19 KiB file in two runs, the last cluster partly used
        let chunks = [(0, 1000), (8, 1008), (16, 1016), (24, 5000), (32, 5008)];
        let e = merge(chunks, 8, 38);
        assert_eq!(
            e,
            [
                Extent {
                    logical: 0,
                    physical: 1000,
                    length: 24
                },
                Extent {
                    logical: 24,
                    physical: 5000,
                    length: 14
                },
            ]
        );
        let t = linear_targets(&e, "254:2");
        assert_eq!(t[0].line(), "0 24 linear 254:2 1000");
        assert_eq!(t[1].line(), "24 14 linear 254:2 5000");
        // out of order clusters are separate extents even when adjacent backwards
        let e = merge([(0, 16), (8, 8)], 8, 16);
        assert_eq!(e.len(), 2);
        assert!(merge([], 8, 0).is_empty());
    }

    #[test]
    fn refuses_odd_sizes() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("odd");
        std::fs::write(&f, [0u8; 100]).unwrap();
        assert!(
            map_file(&f)
                .unwrap_err()
                .to_string()
                .contains("multiple of 512")
        );
    }
}
