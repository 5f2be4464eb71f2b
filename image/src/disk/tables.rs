//! Writes GPT and MBR partition tables for a [`DiskPlan`], reproducibly.
//!
//! We write the tables ourselves rather than through the `gpt` crate because every
//! identifier must be reproducible (the disk and partition GUIDs and the MBR disk signature
//! are derived from a seed: the board name and version) so that two builds from the same
//! inputs are byte-identical; the format is small and checked in tests by `sfdisk` and
//! `sgdisk -v`. The read side is `basalt_bootloader::partition_table`.
//!
//! GPT: protective MBR in LBA 0, header in LBA 1, 128 entries of 128 bytes from LBA 2, and
//! the backup entries and header in the last 33 sectors. MBR: up to three primaries plus an
//! extended partition (type 0x0F) whose logical partitions are chained by EBRs.

use std::io::{self, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use super::layout::{DiskPlan, PartitionKind, TableType};

const SECTOR: u64 = 512;
const GPT_ENTRIES: usize = 128;
const GPT_ENTRY_SIZE: usize = 128;
const GPT_ENTRY_SECTORS: u64 = (GPT_ENTRIES * GPT_ENTRY_SIZE) as u64 / SECTOR;

/// Writes the partition table of `plan` into `disk` (sized `plan.size` already).
pub fn write_table<D: Write + Seek>(disk: &mut D, plan: &DiskPlan, seed: &str) -> io::Result<()> {
    match plan.table {
        TableType::Gpt => write_gpt(disk, plan, seed),
        TableType::Mbr => write_mbr(disk, plan, seed),
    }
}

/// A GUID derived from `seed` and `what`, as the 16 on-disk (mixed-endian) bytes of an
/// RFC 4122 version 4 style GUID.
pub fn derived_guid(seed: &str, what: &str) -> [u8; 16] {
    let digest = Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0])
        .chain_update(what.as_bytes())
        .finalize();
    let mut g = [0u8; 16];
    g.copy_from_slice(&digest[..16]);
    g[7] = (g[7] & 0x0F) | 0x40; // version 4 (time_hi is little-endian on disk)
    g[8] = (g[8] & 0x3F) | 0x80; // variant
    g
}

/// Parses a textual GUID into its on-disk byte order.
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: Vec<u8> = text
        .bytes()
        .filter(|b| *b != b'-')
        .collect::<Vec<u8>>()
        .chunks(2)
        .map(|c| {
            let s = std::str::from_utf8(c).unwrap_or("00");
            u8::from_str_radix(s, 16).unwrap_or(0)
        })
        .collect();
    let mut g = [0u8; 16];
    if hex.len() == 16 {
        g[0..4].copy_from_slice(&[hex[3], hex[2], hex[1], hex[0]]);
        g[4..6].copy_from_slice(&[hex[5], hex[4]]);
        g[6..8].copy_from_slice(&[hex[7], hex[6]]);
        g[8..16].copy_from_slice(&hex[8..16]);
    }
    g
}

fn gpt_entries(plan: &DiskPlan, seed: &str) -> Vec<u8> {
    let mut entries = vec![0u8; GPT_ENTRIES * GPT_ENTRY_SIZE];
    for p in &plan.partitions {
        let e = &mut entries[(p.number as usize - 1) * GPT_ENTRY_SIZE..][..GPT_ENTRY_SIZE];
        e[0..16].copy_from_slice(&guid_bytes(p.request.kind.gpt_type()));
        e[16..32].copy_from_slice(&derived_guid(seed, &p.request.label));
        e[32..40].copy_from_slice(&(p.start / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&(p.end() / SECTOR - 1).to_le_bytes());
        // attributes (48..56) stay 0: never set LegacyBIOSBootable on a slot, or U-Boot's
        // distro boot scans only that partition for boot.scr.
        for (i, unit) in p.request.label.encode_utf16().take(36).enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
        }
    }
    entries
}

fn gpt_header(
    plan: &DiskPlan,
    seed: &str,
    current: u64,
    backup: u64,
    entries_lba: u64,
    entries_crc: u32,
) -> [u8; SECTOR as usize] {
    let last_lba = plan.size / SECTOR - 1;
    let mut h = [0u8; SECTOR as usize];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + GPT_ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&(last_lba - 1 - GPT_ENTRY_SECTORS).to_le_bytes());
    h[56..72].copy_from_slice(&derived_guid(seed, "disk"));
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

fn mbr_entry(boot: bool, kind: u8, lba: u64, sectors: u64) -> [u8; 16] {
    let mut e = [0u8; 16];
    e[0] = if boot { 0x80 } else { 0 };
    // CHS fields set to the "use LBA" maximum, as Linux tools do for large disks.
    e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[4] = kind;
    e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&(lba.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors.min(u64::from(u32::MAX)) as u32).to_le_bytes());
    e
}

fn boot_sector(entries: &[[u8; 16]], signature: Option<[u8; 4]>) -> [u8; SECTOR as usize] {
    let mut s = [0u8; SECTOR as usize];
    if let Some(sig) = signature {
        s[440..444].copy_from_slice(&sig);
    }
    for (i, e) in entries.iter().enumerate() {
        s[446 + 16 * i..462 + 16 * i].copy_from_slice(e);
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

fn write_at<D: Write + Seek>(disk: &mut D, offset: u64, data: &[u8]) -> io::Result<()> {
    disk.seek(SeekFrom::Start(offset))?;
    disk.write_all(data)
}

fn write_gpt<D: Write + Seek>(disk: &mut D, plan: &DiskPlan, seed: &str) -> io::Result<()> {
    let sectors = plan.size / SECTOR;
    let protective = mbr_entry(false, 0xEE, 1, sectors - 1);
    write_at(disk, 0, &boot_sector(&[protective], None))?;
    let entries = gpt_entries(plan, seed);
    let crc = crc32fast::hash(&entries);
    let last = sectors - 1;
    let backup_entries = last - GPT_ENTRY_SECTORS;
    write_at(disk, SECTOR, &gpt_header(plan, seed, 1, last, 2, crc))?;
    write_at(disk, 2 * SECTOR, &entries)?;
    write_at(disk, backup_entries * SECTOR, &entries)?;
    write_at(
        disk,
        last * SECTOR,
        &gpt_header(plan, seed, last, 1, backup_entries, crc),
    )
}

fn mbr_type(kind: PartitionKind, fat: bool) -> u8 {
    kind.mbr_type(fat)
}

fn write_mbr<D: Write + Seek>(disk: &mut D, plan: &DiskPlan, seed: &str) -> io::Result<()> {
    let mut primaries = Vec::new();
    let mut logicals = Vec::new();
    for p in &plan.partitions {
        if p.number <= 4 {
            primaries.push(mbr_entry(
                p.request.kind == PartitionKind::Boot,
                mbr_type(p.request.kind, p.request.fat),
                p.start / SECTOR,
                p.request.size / SECTOR,
            ));
        } else {
            logicals.push(p);
        }
    }
    if let Some((ext_start, ext_size)) = plan.extended {
        primaries.push(mbr_entry(
            false,
            0x0F,
            ext_start / SECTOR,
            ext_size / SECTOR,
        ));
        for (i, p) in logicals.iter().enumerate() {
            let ebr = p.start - super::layout::MIB;
            let mut entries = vec![mbr_entry(
                false,
                mbr_type(p.request.kind, p.request.fat),
                (p.start - ebr) / SECTOR,
                p.request.size / SECTOR,
            )];
            if let Some(next) = logicals.get(i + 1) {
                let next_ebr = next.start - super::layout::MIB;
                entries.push(mbr_entry(
                    false,
                    0x05,
                    (next_ebr - ext_start) / SECTOR,
                    (next.end() - next_ebr) / SECTOR,
                ));
            }
            write_at(disk, ebr, &boot_sector(&entries, None))?;
        }
    }
    let digest = Sha256::digest(format!("{seed}\0mbr").as_bytes());
    let signature = [digest[0], digest[1], digest[2], digest[3]];
    write_at(disk, 0, &boot_sector(&primaries, Some(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::layout::{MIB, PartitionRequest, plan};

    #[test]
    fn guid_text_round_trip_matches_mixed_endian() {
        let g = guid_bytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(&g[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        assert_eq!(&g[8..], &[0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B]);
    }

    #[test]
    fn derived_guids_are_stable_and_distinct() {
        assert_eq!(
            derived_guid("rpi4 1.0", "BOOT"),
            derived_guid("rpi4 1.0", "BOOT")
        );
        assert_ne!(
            derived_guid("rpi4 1.0", "BOOT"),
            derived_guid("rpi4 1.0", "DATA")
        );
        assert_ne!(
            derived_guid("rpi4 1.0", "BOOT"),
            derived_guid("rpi4 1.1", "BOOT")
        );
    }

    #[test]
    fn gpt_and_mbr_tables_read_back() {
        use basalt_bootloader::partition_table::{PartitionTable, TableKind};
        let reqs: Vec<PartitionRequest> = ["BOOT", "SYSTEM-A", "SYSTEM-B", "STATE", "DATA"]
            .iter()
            .map(|l| PartitionRequest {
                label: l.to_string(),
                size: 4 * MIB,
                kind: if *l == "BOOT" {
                    PartitionKind::Boot
                } else {
                    PartitionKind::LinuxData
                },
                fat: *l == "BOOT",
            })
            .collect();
        for table in [TableType::Gpt, TableType::Mbr] {
            let plan = plan(table, &reqs).unwrap();
            let mut disk = io::Cursor::new(vec![0u8; plan.size as usize]);
            write_table(&mut disk, &plan, "test").unwrap();
            let read = PartitionTable::read(&mut disk, "test.img").unwrap();
            assert_eq!(
                read.kind,
                match table {
                    TableType::Gpt => TableKind::Gpt,
                    TableType::Mbr => TableKind::Mbr,
                }
            );
            for p in &plan.partitions {
                let r = read.by_number(p.number).unwrap();
                assert_eq!(
                    (r.start, r.size),
                    (p.start, p.request.size),
                    "{table:?} {p:?}"
                );
                if table == TableType::Gpt {
                    assert_eq!(r.label.as_deref(), Some(p.request.label.as_str()));
                }
            }
        }
    }
}
