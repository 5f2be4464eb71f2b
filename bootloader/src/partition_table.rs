//! A read-only partition table reader (GPT and MBR) for disk images and block devices.
//!
//! The recovery tool, the flashing tool and machined find the BOOT partition (where the
//! U-Boot env or the ESP lives) and the slot partitions through this reader. It checks
//! the GPT header and entry-array CRCs and falls back to the backup GPT at the end of the
//! disk when the primary is damaged. MBR tables have no labels: callers map partition
//! numbers to roles (the board data says which).
//!
//! Limits: 512-byte logical sectors only (SD cards, eMMC, image files); MBR extended
//! partitions are followed one chain deep per logical partition, as Linux numbers them (5, 6, …).

use std::io::{self, Read, Seek, SeekFrom};

const SECTOR: u64 = 512;
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
const MBR_PROTECTIVE: u8 = 0xEE;

/// Failure to read a partition table.
#[derive(Debug, thiserror::Error)]
pub enum PartitionTableError {
    /// Reading the disk failed.
    #[error("failed to read partition table of {disk}: {source}")]
    Io {
        /// The disk (path) being read.
        disk: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Neither a valid GPT nor an MBR.
    #[error("{disk} has no valid partition table: {reason}")]
    Invalid {
        /// The disk (path) being read.
        disk: String,
        /// What is wrong.
        reason: String,
    },
    /// No partition with the label or number asked for.
    #[error("{disk} has no partition {wanted}")]
    NotFound {
        /// The disk (path) being read.
        disk: String,
        /// Label or number.
        wanted: String,
    },
}

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR partition table.
    Mbr,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Number as Linux counts it (1-based; MBR logical partitions from 5).
    pub number: u32,
    /// GPT partition name; `None` on MBR.
    pub label: Option<String>,
    /// Offset of the first byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT type GUID (as text) or MBR type byte (as `0xNN`).
    pub type_id: String,
}

/// A disk's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// GPT or MBR.
    pub kind: TableKind,
    /// The partitions, by number.
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// Reads the table of `disk` (an image file or a block device); `name` is used in errors.
    pub fn read<D: Read + Seek>(disk: &mut D, name: &str) -> Result<Self, PartitionTableError> {
        let io_err = |source| PartitionTableError::Io {
            disk: name.to_string(),
            source,
        };
        let invalid = |reason: String| PartitionTableError::Invalid {
            disk: name.to_string(),
            reason,
        };
        let mbr = read_at(disk, 0, SECTOR as usize).map_err(io_err)?;
        if mbr[510] != 0x55 || mbr[511] != 0xAA {
            return Err(invalid("no boot signature 0x55AA in sector 0".into()));
        }
        let entries = mbr_entries(&mbr);
        if entries.iter().any(|e| e.kind == MBR_PROTECTIVE) {
            let disk_len = disk.seek(SeekFrom::End(0)).map_err(io_err)?;
            let primary = read_gpt(disk, 1).map_err(io_err)?;
            let gpt = match primary {
                Ok(p) => p,
                Err(primary_problem) => {
                    let last = disk_len / SECTOR - 1;
                    read_gpt(disk, last).map_err(io_err)?.map_err(|backup| {
                        invalid(format!(
                            "primary GPT: {primary_problem}; backup GPT: {backup}"
                        ))
                    })?
                }
            };
            return Ok(PartitionTable {
                kind: TableKind::Gpt,
                partitions: gpt,
            });
        }
        let mut partitions = Vec::new();
        let mut extended = None;
        for (i, e) in entries.iter().enumerate() {
            if e.kind == 0 || e.sectors == 0 {
                continue;
            }
            if matches!(e.kind, 0x05 | 0x0F | 0x85) {
                extended = Some(u64::from(e.lba));
            }
            partitions.push(Partition {
                number: i as u32 + 1,
                label: None,
                start: u64::from(e.lba) * SECTOR,
                size: u64::from(e.sectors) * SECTOR,
                type_id: format!("0x{:02x}", e.kind),
            });
        }
        if let Some(ext_base) = extended {
            let mut ebr_lba = ext_base;
            let mut number = 5;
            for _ in 0..128 {
                let ebr = read_at(disk, ebr_lba * SECTOR, SECTOR as usize).map_err(io_err)?;
                if ebr[510] != 0x55 || ebr[511] != 0xAA {
                    return Err(invalid(format!("bad EBR signature at sector {ebr_lba}")));
                }
                let [logical, next, ..] = mbr_entries(&ebr);
                if logical.kind != 0 && logical.sectors != 0 {
                    partitions.push(Partition {
                        number,
                        label: None,
                        start: (ebr_lba + u64::from(logical.lba)) * SECTOR,
                        size: u64::from(logical.sectors) * SECTOR,
                        type_id: format!("0x{:02x}", logical.kind),
                    });
                    number += 1;
                }
                if next.kind == 0 || next.lba == 0 {
                    break;
                }
                ebr_lba = ext_base + u64::from(next.lba);
            }
        }
        Ok(PartitionTable {
            kind: TableKind::Mbr,
            partitions,
        })
    }

    /// The partition labelled `label` (GPT only).
    pub fn by_label(&self, label: &str) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.label.as_deref() == Some(label))
    }

    /// The partition numbered `number`.
    pub fn by_number(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }
}

#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    kind: u8,
    lba: u32,
    sectors: u32,
}

fn mbr_entries(sector: &[u8]) -> [MbrEntry; 4] {
    std::array::from_fn(|i| {
        let e = &sector[446 + i * 16..446 + (i + 1) * 16];
        MbrEntry {
            kind: e[4],
            lba: le32(&e[8..12]),
            sectors: le32(&e[12..16]),
        }
    })
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn read_at<D: Read + Seek>(disk: &mut D, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    disk.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    disk.read_exact(&mut buf)?;
    Ok(buf)
}

/// Reads the GPT whose header is at `lba`. The outer error is I/O; the inner one says why
/// the table is invalid.
fn read_gpt<D: Read + Seek>(disk: &mut D, lba: u64) -> io::Result<Result<Vec<Partition>, String>> {
    let header = read_at(disk, lba * SECTOR, SECTOR as usize)?;
    if &header[0..8] != GPT_SIGNATURE {
        return Ok(Err(format!("no GPT signature at sector {lba}")));
    }
    let header_size = le32(&header[12..16]) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Ok(Err(format!("GPT header size {header_size} is invalid")));
    }
    let mut check = header[..header_size].to_vec();
    check[16..20].fill(0);
    if crc32fast::hash(&check) != le32(&header[16..20]) {
        return Ok(Err(format!("GPT header CRC mismatch at sector {lba}")));
    }
    let entries_lba = le64(&header[72..80]);
    let count = le32(&header[80..84]) as usize;
    let entry_size = le32(&header[84..88]) as usize;
    if !(128..=4096).contains(&entry_size) || count > 16384 {
        return Ok(Err(format!(
            "GPT entry array {count}x{entry_size} is invalid"
        )));
    }
    let array = read_at(disk, entries_lba * SECTOR, count * entry_size)?;
    if crc32fast::hash(&array) != le32(&header[88..92]) {
        return Ok(Err("GPT entry array CRC mismatch".into()));
    }
    let mut partitions = Vec::new();
    for (i, e) in array.chunks(entry_size).enumerate() {
        if e[..16].iter().all(|b| *b == 0) {
            continue;
        }
        let first = le64(&e[32..40]);
        let last = le64(&e[40..48]);
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            label: Some(String::from_utf16_lossy(&name)),
            start: first * SECTOR,
            size: (last.saturating_sub(first) + 1) * SECTOR,
            type_id: guid_text(&e[..16]),
        });
    }
    Ok(Ok(partitions))
}

/// A GPT GUID in its textual form (mixed-endian as the spec stores it).
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        le32(&b[0..4]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sfdisk(script: &str, size_mib: u64) -> tempfile::NamedTempFile {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(size_mib << 20).unwrap();
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(img.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk not found: run scripts/setup-host");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sfdisk failed");
        img
    }

    #[test]
    fn reads_gpt_written_by_sfdisk() {
        let img = sfdisk(
            "label: gpt\n\
             start=2048, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=BOOT\n\
             size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=SYSTEM-A\n\
             size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=SYSTEM-B\n",
            32,
        );
        let table = PartitionTable::read(&mut img.reopen().unwrap(), "test.img").unwrap();
        assert_eq!(table.kind, TableKind::Gpt);
        let boot = table.by_label("BOOT").unwrap();
        assert_eq!(
            (boot.number, boot.start, boot.size),
            (1, 2048 * 512, 8192 * 512)
        );
        assert_eq!(boot.type_id, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        let b = table.by_label("SYSTEM-B").unwrap();
        assert_eq!(b.number, 3);
        assert_eq!(b.start, (2048 + 8192 + 16384) * 512);
    }

    #[test]
    fn falls_back_to_backup_gpt() {
        let img = sfdisk("label: gpt\nstart=2048, size=4096, name=BOOT\n", 8);
        // Destroy the primary header.
        let mut f = img.reopen().unwrap();
        use std::io::Write;
        f.seek(SeekFrom::Start(512)).unwrap();
        f.write_all(&[0u8; 512]).unwrap();
        let table = PartitionTable::read(&mut img.reopen().unwrap(), "test.img").unwrap();
        assert_eq!(table.by_label("BOOT").unwrap().start, 2048 * 512);
    }

    #[test]
    fn reads_mbr_with_logical_partitions() {
        let img = sfdisk(
            "label: dos\n\
             start=2048, size=8192, type=c, bootable\n\
             size=8192, type=83\n\
             size=8192, type=83\n\
             type=5\n\
             size=4096, type=83\n\
             size=4096, type=83\n",
            40,
        );
        let table = PartitionTable::read(&mut img.reopen().unwrap(), "pi.img").unwrap();
        assert_eq!(table.kind, TableKind::Mbr);
        let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(table.by_number(1).unwrap().type_id, "0x0c");
        assert_eq!(table.by_number(6).unwrap().size, 4096 * 512);
        assert!(table.by_label("BOOT").is_none());
    }

    #[test]
    fn blank_disk_is_a_clear_error() {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let err = PartitionTable::read(&mut img.reopen().unwrap(), "blank.img").unwrap_err();
        assert!(err.to_string().contains("blank.img"), "{err}");
        assert!(err.to_string().contains("0x55AA"), "{err}");
    }
}
