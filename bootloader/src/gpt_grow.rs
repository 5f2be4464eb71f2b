//! Moving a GPT's backup table to the end of a larger disk, optionally growing the
//! partition labelled DATA to fill the space.
//!
//! Shared by basalt-flash (`--grow-data`: edits the image's held-back first MiB before it
//! is written) and machined (first boot on a card or disk larger than the image). Pure: it
//! edits the primary header and entries in `head` (the disk's first bytes, at least up to
//! the end of the primary entries, see [`primary_len`]) and returns the backup entries and
//! header to write at the disk's end. Writing them is the caller's job, in this order, so
//! that the table is valid after any power cut: backup entries and header first (the old
//! backup at the old end is still there, the primary still points to it), flush, then the
//! primary (which now points to the new backup), flush. A cut between the two leaves the
//! old table intact, and running [`relocate`] again finishes the job; on a table that
//! already ends at the disk's end with DATA grown, [`relocate`] changes nothing in `head`
//! (callers use that to skip the writes).
//!
//! 512-byte logical sectors are assumed (what the image builder writes). The DATA
//! filesystem itself is not resized here: machined grows it (online) after the table.

/// A GPT that cannot be relocated.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The first MiB holds no valid GPT.
    #[error("{name}: {reason}")]
    Invalid {
        /// The image.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

const SECTOR: u64 = 512;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn entry_name(e: &[u8]) -> String {
    let units: Vec<u16> = e[56..128]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// How many bytes from the disk's start hold the protective MBR, the primary header and
/// the primary entries of the GPT in `head` (what [`relocate`] edits and a caller writes
/// back), or `None` if `head` holds no GPT header at LBA 1.
pub fn primary_len(head: &[u8]) -> Option<usize> {
    let h = SECTOR as usize;
    if head.len() < 2 * h || &head[h..h + 8] != b"EFI PART" {
        return None;
    }
    let entries_lba = u64_at(head, h + 72) as usize;
    let bytes = u32_at(head, h + 80) as usize * u32_at(head, h + 84) as usize;
    Some(entries_lba * h + bytes.div_ceil(h) * h)
}

/// The result of [`relocate`]: bytes to write at the end of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Device offset of the backup entries.
    pub entries_offset: u64,
    /// The backup entries.
    pub entries: Vec<u8>,
    /// Device offset of the backup header.
    pub header_offset: u64,
    /// The backup header sector.
    pub header: Vec<u8>,
    /// The partition grown and its new size in bytes, if any.
    pub grown: Option<(String, u64)>,
}

/// Edits the GPT in `head` (the image's first bytes, at least up to the end of the primary
/// entries) for a device of `dev_size` bytes, growing the last partition if it is labelled
/// `grow_label`.
pub fn relocate(
    head: &mut [u8],
    dev_size: u64,
    grow_label: Option<&str>,
    name: &str,
) -> Result<Backup, GptError> {
    let bad = |reason: &str| GptError::Invalid {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let h = SECTOR as usize;
    if head.len() < 2 * h || &head[h..h + 8] != b"EFI PART" {
        return Err(bad("no GPT header at LBA 1"));
    }
    let hsize = u32_at(head, h + 12) as usize;
    let entries_lba = u64_at(head, h + 72);
    let count = u32_at(head, h + 80) as usize;
    let esize = u32_at(head, h + 84) as usize;
    if !(92..=512).contains(&hsize) || esize < 128 || count == 0 || count > 1024 {
        return Err(bad("GPT header fields out of range"));
    }
    let ebytes = count * esize;
    let estart = (entries_lba * SECTOR) as usize;
    if estart + ebytes > head.len() {
        return Err(bad("GPT entries lie beyond the first MiB"));
    }
    let dev_lbas = dev_size / SECTOR;
    let esectors = (ebytes as u64).div_ceil(SECTOR);
    let used_end = (0..count)
        .map(|i| estart + i * esize)
        .filter(|&o| head[o..o + 16].iter().any(|&b| b != 0))
        .map(|o| u64_at(head, o + 40))
        .max()
        .unwrap_or(0);
    if dev_lbas < esectors + 3 || dev_lbas - esectors - 2 < used_end {
        return Err(bad(&format!(
            "a disk of {dev_size} bytes is smaller than the table (last partition ends at LBA {used_end})"
        )));
    }
    let alt = dev_lbas - 1;
    let last_usable = alt - esectors - 1;
    let mut grown = None;
    if let Some(label) = grow_label {
        // The partition ending last.
        let last = (0..count)
            .map(|i| estart + i * esize)
            .filter(|&o| head[o..o + 16].iter().any(|&b| b != 0))
            .max_by_key(|&o| u64_at(head, o + 40));
        if let Some(o) = last
            && entry_name(&head[o..o + esize]) == label
            && u64_at(head, o + 40) < last_usable
        {
            // Keep the end 1 MiB aligned, as partitioning tools do.
            let end = ((last_usable + 1) / 2048) * 2048 - 1;
            let first = u64_at(head, o + 32);
            if end > u64_at(head, o + 40) {
                head[o + 40..o + 48].copy_from_slice(&end.to_le_bytes());
                grown = Some((label.to_string(), (end - first + 1) * SECTOR));
            }
        }
    }
    let entries = head[estart..estart + ebytes].to_vec();
    let ecrc = crc32fast::hash(&entries);
    head[h + 88..h + 92].copy_from_slice(&ecrc.to_le_bytes());
    head[h + 32..h + 40].copy_from_slice(&alt.to_le_bytes());
    head[h + 48..h + 56].copy_from_slice(&last_usable.to_le_bytes());
    head[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&head[h..h + hsize]);
    head[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    // Protective MBR: the 0xEE partition covers the disk (capped at 2^32-1 sectors).
    if head[510..512] == [0x55, 0xaa] && head[446 + 4] == 0xee {
        let n = u32::try_from(dev_lbas - 1).unwrap_or(u32::MAX);
        head[446 + 12..446 + 16].copy_from_slice(&n.to_le_bytes());
    }
    let mut header = head[h..h + h].to_vec();
    header[24..32].copy_from_slice(&alt.to_le_bytes());
    header[32..40].copy_from_slice(&1u64.to_le_bytes());
    let backup_entries_lba = alt - esectors;
    header[72..80].copy_from_slice(&backup_entries_lba.to_le_bytes());
    header[16..20].fill(0);
    let crc = crc32fast::hash(&header[..hsize]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
    Ok(Backup {
        entries_offset: backup_entries_lba * SECTOR,
        entries,
        header_offset: alt * SECTOR,
        header,
        grown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::process::Command;

    /// A 16 MiB GPT disk file made by sfdisk (BOOT, DATA last).
    fn sfdisk_disk(dir: &std::path::Path) -> std::path::PathBuf {
        let img = dir.join("img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let out = Command::new("sfdisk")
            .arg("-q")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(b"label: gpt\nsize=4MiB, name=BOOT\nname=DATA\n")?;
                c.wait()
            })
            .unwrap();
        assert!(out.success());
        img
    }

    fn sgdisk_ok(path: &std::path::Path) {
        let v = Command::new("sgdisk").arg("-v").arg(path).output().unwrap();
        let text = String::from_utf8_lossy(&v.stdout);
        assert!(text.contains("No problems found"), "{text}");
    }

    #[test]
    fn relocated_table_is_valid_for_sgdisk_and_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let img = sfdisk_disk(dir.path());
        let mut head = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        assert_eq!(primary_len(&head), Some(34 * 512));
        let dev = 64u64 << 20;
        let b = relocate(&mut head, dev, Some("DATA"), "img").unwrap();
        let (label, size) = b.grown.clone().unwrap();
        assert_eq!(label, "DATA");
        assert!(size > 50 << 20);
        // The disk file grown in place, written in the power-safe order.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(dev).unwrap();
        f.write_all_at(&b.entries, b.entries_offset).unwrap();
        f.write_all_at(&b.header, b.header_offset).unwrap();
        f.write_all_at(&head[..34 * 512], 0).unwrap();
        drop(f);
        sgdisk_ok(&img);
        let dump = Command::new("sfdisk").arg("-J").arg(&img).output().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
        let t = &json["partitiontable"];
        assert_eq!(t["lastlba"], 131038, "{json}");
        let data = &t["partitions"][1];
        assert_eq!(data["name"], "DATA");
        // 1 MiB aligned end: the last whole MiB before the backup entries.
        assert_eq!(
            data["start"].as_u64().unwrap() + data["size"].as_u64().unwrap(),
            (131038 + 1) / 2048 * 2048
        );
        assert_eq!(size, data["size"].as_u64().unwrap() * 512);

        // Again on the grown disk: nothing changes.
        let mut again = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        let before = again.clone();
        let b2 = relocate(&mut again, dev, Some("DATA"), "img").unwrap();
        assert_eq!(again, before);
        assert_eq!(b2.grown, None);
        assert_eq!(b2.header_offset, b.header_offset);
    }

    #[test]
    fn half_done_relocation_is_finished_by_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let img = sfdisk_disk(dir.path());
        let dev = 48u64 << 20;
        let mut head = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        let b = relocate(&mut head, dev, Some("DATA"), "img").unwrap();
        // Power cut after the backup, before the primary: the old table is intact.
        let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
        f.set_len(dev).unwrap();
        f.write_all_at(&b.entries, b.entries_offset).unwrap();
        f.write_all_at(&b.header, b.header_offset).unwrap();
        let head = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        let mut next = head.clone();
        let b2 = relocate(&mut next, dev, Some("DATA"), "img").unwrap();
        assert_ne!(next, head, "the second run still has work to do");
        assert_eq!(b2, b);
        f.write_all_at(&next[..primary_len(&next).unwrap()], 0)
            .unwrap();
        drop(f);
        sgdisk_ok(&img);
    }

    #[test]
    fn refuses_a_disk_smaller_than_the_table_and_a_foreign_last_partition() {
        let dir = tempfile::tempdir().unwrap();
        let img = sfdisk_disk(dir.path());
        let mut head = std::fs::read(&img).unwrap()[..1 << 20].to_vec();
        let e = relocate(&mut head, 8 << 20, Some("DATA"), "img").unwrap_err();
        assert!(e.to_string().contains("smaller than the table"), "{e}");
        // The last partition is not DATA: the backup moves, nothing grows.
        let b = relocate(&mut head, 64 << 20, Some("STATE"), "img").unwrap();
        assert_eq!(b.grown, None);
        assert_eq!(primary_len(&[0u8; 1024]), None);
    }
}
