//! Growing the last partition of an MBR disk (Raspberry Pi 3 boards) to the disk's end.
//!
//! The MBR twin of [`crate::gpt_grow`], used by machined on first boot. Pure: it reads
//! sectors through a callback and returns the sectors to write, in an order that keeps the
//! table valid after a power cut at any point: the extended container in the MBR first (a
//! larger container around the same logical partitions is valid), then the link entry in the
//! previous EBR that describes the last logical partition's extent, then the last logical
//! partition's own entry. A primary last partition is one MBR write. Running it again after
//! a cut finishes the job; on a table already grown it returns `None`.
//!
//! The new end is the disk's last whole MiB (partitioning tools align to 1 MiB), capped at
//! what 32-bit sector fields hold. 512-byte sectors; the partition to grow is named by the
//! number Linux gives it (1–4 primary, 5… logical); only the partition ending last grows.

use std::io;

const SECTOR: u64 = 512;
/// 1 MiB in sectors.
const MIB_SECTORS: u64 = 2048;
/// Logical partitions followed at most (a loop in the EBR chain is an error).
const MAX_LOGICAL: u32 = 128;

/// A table that cannot be grown.
#[derive(Debug, thiserror::Error)]
pub enum MbrGrowError {
    /// Reading a sector failed.
    #[error("{name}: reading the sector at byte {offset}: {source}")]
    Read {
        /// The disk.
        name: String,
        /// Where.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The MBR or an EBR is not valid.
    #[error("{name}: {reason}")]
    Invalid {
        /// The disk.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// One sector to write back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectorWrite {
    /// Byte offset on the disk.
    pub offset: u64,
    /// The whole sector.
    pub sector: Vec<u8>,
}

/// What [`grow_last`] decided: the writes, in order, and the partition's new size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrGrow {
    /// Sectors to write, in this order, each flushed before the next.
    pub writes: Vec<SectorWrite>,
    /// The partition's new size in bytes.
    pub size: u64,
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        b[at..at + 4].try_into().unwrap_or([0; 4]),
    ))
}

fn is_extended(kind: u8) -> bool {
    matches!(kind, 0x05 | 0x0f | 0x85)
}

/// Where a partition's entry lives and what it says (absolute sectors).
struct Entry {
    number: u32,
    sector: u64,
    slot: usize,
    start: u64,
    size: u64,
    /// For a logical partition: the previous EBR's link entry (sector, slot) and this EBR.
    link: Option<(u64, usize, u64)>,
}

/// Grows partition `number` of the MBR disk of `dev_size` bytes to the disk's last whole
/// MiB when it is the partition ending last. `read(offset)` returns the 512-byte sector at
/// byte `offset`. `None`: nothing to do (not last, or already grown).
pub fn grow_last(
    mut read: impl FnMut(u64) -> io::Result<Vec<u8>>,
    dev_size: u64,
    number: u32,
    name: &str,
) -> Result<Option<MbrGrow>, MbrGrowError> {
    let bad = |reason: String| MbrGrowError::Invalid {
        name: name.to_string(),
        reason,
    };
    let mut sector = |lba: u64| -> Result<Vec<u8>, MbrGrowError> {
        let s = read(lba * SECTOR).map_err(|source| MbrGrowError::Read {
            name: name.to_string(),
            offset: lba * SECTOR,
            source,
        })?;
        if s.len() != SECTOR as usize || s[510..512] != [0x55, 0xaa] {
            return Err(bad(format!("no boot signature in the sector at LBA {lba}")));
        }
        Ok(s)
    };
    let mbr = sector(0)?;
    let entry = |s: &[u8], i: usize| {
        let o = 446 + 16 * i;
        (s[o + 4], u32_at(s, o + 8), u32_at(s, o + 12))
    };
    if (0..4).any(|i| entry(&mbr, i).0 == 0xee) {
        return Err(bad("a GPT protective MBR: use gpt_grow".into()));
    }
    let mut parts = Vec::new();
    let mut extended = None;
    for i in 0..4 {
        let (kind, lba, size) = entry(&mbr, i);
        if kind == 0 || size == 0 {
            continue;
        }
        if is_extended(kind) {
            extended = Some((i, lba));
            continue;
        }
        parts.push(Entry {
            number: i as u32 + 1,
            sector: 0,
            slot: i,
            start: lba,
            size,
            link: None,
        });
    }
    if let Some((_, ext_start)) = extended {
        let mut ebr = ext_start;
        let mut link = None;
        for n in 5..5 + MAX_LOGICAL {
            let s = sector(ebr)?;
            let (kind, lba, size) = entry(&s, 0);
            if kind != 0 && size != 0 {
                parts.push(Entry {
                    number: n,
                    sector: ebr,
                    slot: 0,
                    start: ebr + lba,
                    size,
                    link,
                });
            }
            let (next_kind, next, _) = entry(&s, 1);
            if !is_extended(next_kind) || next == 0 {
                break;
            }
            link = Some((ebr, 1, ext_start + next));
            ebr = ext_start + next;
            if n + 1 == 5 + MAX_LOGICAL {
                return Err(bad("the EBR chain does not end".into()));
            }
        }
    }
    let Some(last) = parts.iter().max_by_key(|p| p.start + p.size) else {
        return Ok(None);
    };
    if last.number != number {
        return Ok(None);
    }
    let new_end = (dev_size / SECTOR / MIB_SECTORS * MIB_SECTORS).min(u64::from(u32::MAX));
    if new_end <= last.start + last.size {
        return Ok(None);
    }
    let set_size = |s: &mut Vec<u8>, slot: usize, size: u64| {
        let o = 446 + 16 * slot + 12;
        s[o..o + 4].copy_from_slice(&(size as u32).to_le_bytes());
    };
    let mut writes = Vec::new();
    match (extended, last.link, last.sector) {
        (Some((ext_slot, ext_start)), link, ebr) if ebr != 0 => {
            let mut m = mbr.clone();
            set_size(&mut m, ext_slot, new_end - ext_start);
            writes.push((0, m));
            if let Some((prev, slot, this)) = link {
                let mut s = sector(prev)?;
                set_size(&mut s, slot, new_end - this);
                writes.push((prev, s));
            }
            let mut s = sector(ebr)?;
            set_size(&mut s, 0, new_end - last.start);
            writes.push((ebr, s));
        }
        _ => {
            let mut m = mbr.clone();
            set_size(&mut m, last.slot, new_end - last.start);
            writes.push((0, m));
        }
    }
    Ok(Some(MbrGrow {
        writes: writes
            .into_iter()
            .map(|(lba, sector)| SectorWrite {
                offset: lba * SECTOR,
                sector,
            })
            .collect(),
        size: (new_end - last.start) * SECTOR,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    fn sfdisk(path: &Path, script: &str) {
        use std::io::Write;
        let mut c = Command::new("sfdisk")
            .arg("-q")
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(c.wait().unwrap().success());
    }

    fn apply(path: &Path, dev: u64, number: u32) -> Option<u64> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        f.set_len(dev).unwrap();
        let read = |o: u64| {
            let mut s = vec![0u8; 512];
            f.read_exact_at(&mut s, o).map(|()| s)
        };
        let g = grow_last(read, dev, number, "disk").unwrap()?;
        for w in &g.writes {
            f.write_all_at(&w.sector, w.offset).unwrap();
        }
        Some(g.size)
    }

    fn sfdisk_json(path: &Path) -> serde_json::Value {
        let o = Command::new("sfdisk").arg("-J").arg(path).output().unwrap();
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn verify(path: &Path) {
        let o = Command::new("sfdisk").arg("-V").arg(path).output().unwrap();
        assert!(o.status.success(), "{o:?}");
    }

    #[test]
    fn last_logical_partition_grows_like_the_rpi3_layout() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        // BOOT, SYSTEM-A, SYSTEM-B, then STATE (5) and DATA (6) in the extended container.
        sfdisk(
            &disk,
            "label: dos\nsize=4MiB, type=c\nsize=8MiB\nsize=8MiB\ntype=f\nsize=8MiB\nsize=16MiB\n",
        );
        verify(&disk);
        assert_eq!(apply(&disk, 64 << 20, 5), None, "STATE is not last");
        let size = apply(&disk, 256 << 20, 6).unwrap();
        verify(&disk);
        let json = sfdisk_json(&disk);
        let parts = json["partitiontable"]["partitions"].as_array().unwrap();
        let data = &parts[5];
        assert_eq!(
            data["node"].as_str().unwrap(),
            format!("{}6", disk.display())
        );
        let end = data["start"].as_u64().unwrap() + data["size"].as_u64().unwrap();
        assert_eq!(end, 256 * 2048, "{json}");
        assert_eq!(size, data["size"].as_u64().unwrap() * 512);
        let ext = &parts[3];
        assert_eq!(
            ext["start"].as_u64().unwrap() + ext["size"].as_u64().unwrap(),
            256 * 2048
        );
        // Done: nothing more.
        assert_eq!(apply(&disk, 256 << 20, 6), None);
    }

    #[test]
    fn last_primary_partition_grows_and_gpt_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        sfdisk(&disk, "label: dos\nsize=4MiB, type=c\nsize=8MiB\n");
        let size = apply(&disk, 100 << 20, 2).unwrap();
        assert_eq!(size, (100 - 5) << 20);
        verify(&disk);
        let gpt = dir.path().join("gpt");
        std::fs::File::create(&gpt)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        sfdisk(&gpt, "label: gpt\nsize=4MiB\n");
        let f = std::fs::File::open(&gpt).unwrap();
        let read = |o: u64| {
            let mut s = vec![0u8; 512];
            f.read_exact_at(&mut s, o).map(|()| s)
        };
        let e = grow_last(read, 64 << 20, 1, "gpt").unwrap_err();
        assert!(e.to_string().contains("gpt_grow"), "{e}");
    }
}
