//! Repair for directories created by `fatfs` 0.3.6 (the current crates.io release).
//!
//! Its `create_dir` writes a long-name (LFN) entry before each of the `.` and `..` entries
//! of a new directory, so they land in slots 1 and 3 instead of 0 and 1
//! (rafalh/rust-fatfs#117, fixed upstream after 0.3.6). `fsck.vfat` reports and "repairs"
//! that by deleting the directory's contents. After `fatfs` created a directory, we move the
//! two dot entries to slots 0 and 1 and mark the two stray LFN entries deleted, which is the
//! layout Linux and mkfs/mtools produce. It also points `..` of a directory in the root at
//! cluster 0 as the FAT specification requires (fatfs writes the FAT32 root cluster there).

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::fat::FileSlice;

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const DELETED: u8 = 0xe5;

struct Geometry {
    bytes_per_sector: u64,
    sectors_per_cluster: u64,
    fat_start: u64,
    root_start: u64,
    root_len: u64,
    data_start: u64,
    clusters: u32,
    fat_bits: u8,
    root_cluster: u32,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Geometry {
    fn read(disk: &mut FileSlice) -> io::Result<Self> {
        let mut boot = [0u8; 512];
        disk.seek(SeekFrom::Start(0))?;
        disk.read_exact(&mut boot)?;
        let bytes_per_sector = le16(&boot, 11);
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = le16(&boot, 14);
        let fats = u64::from(boot[16]);
        let root_entries = le16(&boot, 17);
        let total = match le16(&boot, 19) {
            0 => le32(&boot, 32),
            n => n,
        };
        let fat_sectors = match le16(&boot, 22) {
            0 => le32(&boot, 36),
            n => n,
        };
        if bytes_per_sector == 0 || sectors_per_cluster == 0 {
            return Err(invalid("boot sector has a zero sector or cluster size"));
        }
        let root_sectors = (root_entries * ENTRY as u64).div_ceil(bytes_per_sector);
        let first_data = reserved + fats * fat_sectors + root_sectors;
        let clusters = total.saturating_sub(first_data) / sectors_per_cluster;
        let fat_bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        Ok(Geometry {
            bytes_per_sector,
            sectors_per_cluster,
            fat_start: reserved * bytes_per_sector,
            root_start: (reserved + fats * fat_sectors) * bytes_per_sector,
            root_len: root_sectors * bytes_per_sector,
            data_start: first_data * bytes_per_sector,
            clusters: u32::try_from(clusters).map_err(|_| invalid("too many clusters"))?,
            fat_bits,
            root_cluster: u32::try_from(le32(&boot, 44)).unwrap_or(0),
        })
    }

    fn cluster_size(&self) -> u64 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    fn cluster_offset(&self, cluster: u32) -> io::Result<u64> {
        if cluster < 2 || cluster >= self.clusters + 2 {
            return Err(invalid("cluster number out of range"));
        }
        Ok(self.data_start + u64::from(cluster - 2) * self.cluster_size())
    }

    fn next_cluster(&self, disk: &mut FileSlice, cluster: u32) -> io::Result<Option<u32>> {
        let c = u64::from(cluster);
        let (offset, width) = match self.fat_bits {
            12 => (c + c / 2, 2),
            16 => (c * 2, 2),
            _ => (c * 4, 4),
        };
        let mut raw = [0u8; 4];
        disk.seek(SeekFrom::Start(self.fat_start + offset))?;
        disk.read_exact(&mut raw[..width])?;
        let value = u32::from_le_bytes(raw);
        let (next, end) = match self.fat_bits {
            12 if cluster % 2 == 1 => ((value >> 4) & 0xfff, 0xff8),
            12 => (value & 0xfff, 0xff8),
            16 => (value & 0xffff, 0xfff8),
            _ => (value & 0x0fff_ffff, 0x0fff_fff8),
        };
        Ok((next >= 2 && next < end).then_some(next))
    }

    /// Byte ranges of a directory: the fixed root of FAT12/16, or a cluster chain.
    fn dir_extents(&self, disk: &mut FileSlice, first: Option<u32>) -> io::Result<Vec<(u64, u64)>> {
        let mut cluster = match first {
            None if self.fat_bits != 32 => return Ok(vec![(self.root_start, self.root_len)]),
            None => self.root_cluster,
            Some(c) => c,
        };
        let mut extents = Vec::new();
        loop {
            extents.push((self.cluster_offset(cluster)?, self.cluster_size()));
            if extents.len() > self.clusters as usize {
                return Err(invalid("directory cluster chain loops"));
            }
            match self.next_cluster(disk, cluster)? {
                Some(next) => cluster = next,
                None => return Ok(extents),
            }
        }
    }
}

/// The 11-byte directory form of a short name as fatfs reports it ("LOADER", "BASALT~1.CON").
fn raw_short_name(short: &[u8]) -> [u8; 11] {
    let mut raw = [b' '; 11];
    let (base, ext) = match short.iter().position(|b| *b == b'.') {
        Some(dot) => (&short[..dot], &short[dot + 1..]),
        None => (short, &short[..0]),
    };
    for (slot, byte) in raw[..8].iter_mut().zip(base) {
        *slot = *byte;
    }
    for (slot, byte) in raw[8..].iter_mut().zip(ext) {
        *slot = *byte;
    }
    if raw[0] == DELETED {
        raw[0] = 0x05;
    }
    raw
}

/// Finds the first cluster of the subdirectory with short name `short` in a directory.
fn find_subdir(
    geometry: &Geometry,
    disk: &mut FileSlice,
    parent: Option<u32>,
    short: &[u8],
) -> io::Result<u32> {
    let wanted = raw_short_name(short);
    for (start, len) in geometry.dir_extents(disk, parent)? {
        let mut data = vec![0u8; usize::try_from(len).map_err(|_| invalid("directory too large"))?];
        disk.seek(SeekFrom::Start(start))?;
        disk.read_exact(&mut data)?;
        for entry in data.chunks_exact(ENTRY) {
            if entry[0] == 0 {
                break;
            }
            if entry[0] != DELETED
                && entry[11] != ATTR_LFN
                && entry[11] & 0x10 != 0
                && entry[..11] == wanted
            {
                let cluster = (le16(entry, 20) << 16) | le16(entry, 26);
                return u32::try_from(cluster).map_err(|_| invalid("bad cluster"));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "directory entry not found",
    ))
}

/// Moves `.`/`..` of the directory reached by the short names `path` to slots 0 and 1 if
/// fatfs put long-name entries in front of them; leaves a correct directory alone.
pub(crate) fn fix_dot_entries(disk: &mut FileSlice, path: &[Vec<u8>]) -> io::Result<()> {
    let geometry = Geometry::read(disk)?;
    let mut cluster = None;
    for short in path {
        cluster = Some(find_subdir(&geometry, disk, cluster, short)?);
    }
    let Some(cluster) = cluster else {
        return Ok(());
    };
    let offset = geometry.cluster_offset(cluster)?;
    let mut head = [0u8; 4 * ENTRY];
    if geometry.cluster_size() < head.len() as u64 {
        return Ok(());
    }
    disk.seek(SeekFrom::Start(offset))?;
    disk.read_exact(&mut head)?;
    let is_dot = |e: &[u8], name: &[u8; 11]| e[..11] == *name && e[11] & 0x10 != 0;
    let mut fixed = head;
    let slot = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
    if slot(0)[11] == ATTR_LFN
        && is_dot(slot(1), b".          ")
        && slot(2)[11] == ATTR_LFN
        && is_dot(slot(3), b"..         ")
    {
        fixed[..ENTRY].copy_from_slice(slot(1));
        fixed[ENTRY..2 * ENTRY].copy_from_slice(slot(3));
        fixed[2 * ENTRY..3 * ENTRY].copy_from_slice(slot(0));
        fixed[3 * ENTRY..].copy_from_slice(slot(2));
        fixed[2 * ENTRY] = DELETED;
        fixed[3 * ENTRY] = DELETED;
    }
    // `..` of a directory in the root names cluster 0, also on FAT32 where the root has a
    // real cluster (fatfs writes the root's cluster there).
    let dotdot = &mut fixed[ENTRY..2 * ENTRY];
    if path.len() == 1 && is_dot(dotdot, b"..         ") {
        dotdot[20..22].fill(0);
        dotdot[26..28].fill(0);
    }
    if fixed == head {
        return Ok(());
    }
    disk.seek(SeekFrom::Start(offset))?;
    disk.write_all(&fixed)?;
    disk.flush()
}

#[cfg(test)]
mod tests {
    use super::raw_short_name;

    #[test]
    fn short_names_in_directory_form() {
        assert_eq!(&raw_short_name(b"LOADER"), b"LOADER     ");
        assert_eq!(&raw_short_name(b"BASALT~1.CON"), b"BASALT~1CON");
        assert_eq!(&raw_short_name(b"A"), b"A          ");
    }
}
