//! Partition layout planning: where each partition of a Basalt disk starts and ends.
//!
//! Partitions start at 1 MiB and are aligned to 1 MiB (erase-block friendly on SD cards and
//! eMMC). A GPT disk reserves 1 MiB at the end for the backup table. On MBR disks with more
//! than four partitions, the fourth primary entry is an extended partition holding the rest
//! as logical partitions (numbered 5, 6, … as Linux does), each preceded by a 1 MiB gap for
//! its extended boot record.

/// Alignment and gap unit.
pub const MIB: u64 = 1 << 20;

/// Partition table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableType {
    /// GUID partition table (labels, type GUIDs).
    Gpt,
    /// DOS/MBR partition table (the Raspberry Pi 3 boot ROM needs it).
    Mbr,
}

/// What a partition holds, which decides its type GUID or MBR type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionKind {
    /// BOOT: FAT with firmware, U-Boot and boot script, or the EFI system partition.
    Boot,
    /// SYSTEM-A / SYSTEM-B.
    System,
    /// STATE or DATA: a Linux filesystem.
    LinuxData,
}

impl PartitionKind {
    /// GPT partition type GUID (text form).
    ///
    /// BOOT is typed as an EFI system partition on every GPT board: UEFI firmware needs it,
    /// and U-Boot's distro boot scans partitions of that type for `boot.scr` first.
    pub fn gpt_type(self) -> &'static str {
        match self {
            PartitionKind::Boot => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            PartitionKind::System | PartitionKind::LinuxData => {
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
            }
        }
    }

    /// MBR partition type byte: FAT32 (LBA) for FAT partitions, Linux otherwise.
    pub fn mbr_type(self, fat: bool) -> u8 {
        if fat { 0x0C } else { 0x83 }
    }
}

/// One partition as the board asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRequest {
    /// Label (GPT name; on MBR only used in messages and the manifest).
    pub label: String,
    /// Size in bytes (a multiple of 1 MiB).
    pub size: u64,
    /// What it holds.
    pub kind: PartitionKind,
    /// Whether it holds a FAT filesystem (the MBR type byte depends on it).
    pub fat: bool,
}

/// One partition placed on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// The request it satisfies.
    pub request: PartitionRequest,
    /// Partition number as Linux counts it.
    pub number: u32,
    /// Offset of the first byte.
    pub start: u64,
}

impl PlacedPartition {
    /// Offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.start + self.request.size
    }
}

/// A planned disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// Table type.
    pub table: TableType,
    /// The partitions in on-disk order.
    pub partitions: Vec<PlacedPartition>,
    /// Total image size in bytes.
    pub size: u64,
    /// MBR only: start and size of the extended partition, when there is one.
    pub extended: Option<(u64, u64)>,
}

impl DiskPlan {
    /// The partition labelled `label`.
    pub fn by_label(&self, label: &str) -> Option<&PlacedPartition> {
        self.partitions.iter().find(|p| p.request.label == label)
    }
}

/// A layout that cannot be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// No partitions were asked for.
    #[error("the partition layout is empty")]
    Empty,
    /// A size that is zero or not a multiple of 1 MiB.
    #[error("partition {label} has size {size} bytes: sizes must be non-zero multiples of 1 MiB")]
    BadSize {
        /// The partition.
        label: String,
        /// Its size.
        size: u64,
    },
    /// More partitions than the table can hold.
    #[error("{count} partitions do not fit a {table} table (at most {max})")]
    TooMany {
        /// Partitions asked for.
        count: usize,
        /// Table type name.
        table: &'static str,
        /// Maximum.
        max: usize,
    },
    /// The same label twice.
    #[error("partition label {0} is used twice")]
    DuplicateLabel(String),
}

/// Places `requests` on a disk with a `table` partition table.
pub fn plan(table: TableType, requests: &[PartitionRequest]) -> Result<DiskPlan, LayoutError> {
    if requests.is_empty() {
        return Err(LayoutError::Empty);
    }
    for (i, r) in requests.iter().enumerate() {
        if r.size == 0 || r.size % MIB != 0 {
            return Err(LayoutError::BadSize {
                label: r.label.clone(),
                size: r.size,
            });
        }
        if requests[..i].iter().any(|o| o.label == r.label) {
            return Err(LayoutError::DuplicateLabel(r.label.clone()));
        }
    }
    let max = match table {
        TableType::Gpt => 128,
        TableType::Mbr => 3 + 60,
    };
    if requests.len() > max {
        return Err(LayoutError::TooMany {
            count: requests.len(),
            table: match table {
                TableType::Gpt => "GPT",
                TableType::Mbr => "MBR",
            },
            max,
        });
    }
    let mut partitions = Vec::new();
    let mut offset = MIB;
    let mut extended = None;
    let logical = table == TableType::Mbr && requests.len() > 4;
    for (i, r) in requests.iter().enumerate() {
        let number = if logical && i >= 3 {
            if i == 3 {
                extended = Some((offset, 0));
            }
            offset += MIB; // room for this logical partition's EBR
            5 + (i as u32 - 3)
        } else {
            i as u32 + 1
        };
        partitions.push(PlacedPartition {
            request: r.clone(),
            number,
            start: offset,
        });
        offset += r.size;
    }
    if let Some((start, _)) = extended {
        extended = Some((start, offset - start));
    }
    let size = match table {
        TableType::Gpt => offset + MIB,
        TableType::Mbr => offset,
    };
    Ok(DiskPlan {
        table,
        partitions,
        size,
        extended,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(label: &str, mib: u64, kind: PartitionKind) -> PartitionRequest {
        PartitionRequest {
            label: label.into(),
            size: mib * MIB,
            kind,
            fat: kind != PartitionKind::LinuxData,
        }
    }

    fn basalt() -> Vec<PartitionRequest> {
        vec![
            req("BOOT", 64, PartitionKind::Boot),
            req("SYSTEM-A", 256, PartitionKind::System),
            req("SYSTEM-B", 256, PartitionKind::System),
            req("STATE", 32, PartitionKind::LinuxData),
            req("DATA", 64, PartitionKind::LinuxData),
        ]
    }

    #[test]
    fn gpt_plan_is_aligned_and_leaves_room_for_backup() {
        let plan = plan(TableType::Gpt, &basalt()).unwrap();
        assert_eq!(plan.partitions[0].start, MIB);
        assert!(plan.partitions.iter().all(|p| p.start % MIB == 0));
        let numbers: Vec<u32> = plan.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5]);
        assert_eq!(plan.size, (1 + 64 + 256 + 256 + 32 + 64 + 1) * MIB);
        assert!(plan.extended.is_none());
    }

    #[test]
    fn mbr_plan_uses_logical_partitions_after_three() {
        let plan = plan(TableType::Mbr, &basalt()).unwrap();
        let numbers: Vec<u32> = plan.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 5, 6]);
        let (ext_start, ext_size) = plan.extended.unwrap();
        assert_eq!(ext_start, (1 + 64 + 256 + 256) * MIB);
        assert_eq!(plan.by_label("STATE").unwrap().start, ext_start + MIB);
        assert_eq!(ext_start + ext_size, plan.size);
    }

    #[test]
    fn bad_layouts_are_named() {
        let mut r = basalt();
        r[1].size = 1000;
        assert_eq!(
            plan(TableType::Gpt, &r).unwrap_err().to_string(),
            "partition SYSTEM-A has size 1000 bytes: sizes must be non-zero multiples of 1 MiB"
        );
        let mut r = basalt();
        r[2].label = "SYSTEM-A".into();
        assert_eq!(
            plan(TableType::Gpt, &r),
            Err(LayoutError::DuplicateLabel("SYSTEM-A".into()))
        );
        assert_eq!(plan(TableType::Gpt, &[]), Err(LayoutError::Empty));
    }
}
