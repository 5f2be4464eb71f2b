//! Finding the Basalt partitions: block devices from `/sys/class/block/*/uevent`.
//!
//! The kernel puts the GPT partition name in a partition's uevent as `PARTNAME=`; Basalt
//! labels its partitions BOOT, SYSTEM-A, SYSTEM-B, STATE and DATA (DESIGN §3). The disk of
//! the booted slot is the one holding a partition named `SYSTEM-<slot>`; the other
//! partitions are taken from that same disk only, so a second Basalt disk (a USB stick
//! with an image on it) is never half-used. Two disks both holding `SYSTEM-<slot>` is an
//! error: machined cannot tell which one the bootloader read.
//!
//! MBR disks (the Raspberry Pi 3) carry no partition names. When no disk has any
//! `PARTNAME`, the layout `basalt-image` writes is used by number: the first five data
//! partitions in number order (the MBR extended container, which shows as a 1 KiB
//! partition, is skipped) are BOOT, SYSTEM-A, SYSTEM-B, STATE and DATA; exactly one disk
//! may have that many partitions.
//!
//! Devices appear asynchronously after the disk driver loads, so [`wait_for_partitions`]
//! polls for a bounded time.

use basalt_bootloader::Slot;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Partition labels, in layout order.
pub const LABELS: [&str; 5] = ["BOOT", "SYSTEM-A", "SYSTEM-B", "STATE", "DATA"];

/// The fields of a block device's `uevent` file machined uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uevent {
    /// `MAJOR`.
    pub major: Option<u32>,
    /// `MINOR`.
    pub minor: Option<u32>,
    /// `DEVNAME` (the node name under `/dev`).
    pub devname: Option<String>,
    /// `DEVTYPE`: `disk` or `partition`.
    pub devtype: Option<String>,
    /// `PARTN`: the partition number.
    pub partn: Option<u32>,
    /// `PARTNAME`: the GPT partition name.
    pub partname: Option<String>,
}

/// Parses a `uevent` file (`KEY=value` lines).
pub fn parse_uevent(text: &str) -> Uevent {
    let mut u = Uevent::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "MAJOR" => u.major = value.parse().ok(),
            "MINOR" => u.minor = value.parse().ok(),
            "DEVNAME" => u.devname = Some(value.to_string()),
            "DEVTYPE" => u.devtype = Some(value.to_string()),
            "PARTN" => u.partn = value.parse().ok(),
            "PARTNAME" => u.partname = Some(value.to_string()),
            _ => {}
        }
    }
    u
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vda2`.
    pub name: String,
    /// The disk a partition belongs to (`vda`); `None` for a whole disk.
    pub disk: Option<String>,
    /// Partition number.
    pub partn: Option<u32>,
    /// GPT partition name.
    pub partname: Option<String>,
    /// Device number.
    pub major: u32,
    /// Device number.
    pub minor: u32,
    /// Size in 512-byte sectors.
    pub sectors: u64,
}

impl BlockDevice {
    /// The device node (devtmpfs names it after the kernel name).
    pub fn node(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// `major:minor`, as device-mapper tables accept it.
    pub fn dev_string(&self) -> String {
        format!("{}:{}", self.major, self.minor)
    }
}

/// Lists the block devices present now.
pub trait BlockDevices {
    /// Every block device (disks and partitions) whose device node exists.
    fn scan(&self) -> io::Result<Vec<BlockDevice>>;
}

/// `/sys/class/block` of the running system, with nodes in `/dev`.
#[derive(Debug, Clone)]
pub struct Sysfs {
    /// Usually `/sys/class/block`.
    pub class_dir: PathBuf,
    /// Usually `/dev`.
    pub dev_dir: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self {
            class_dir: PathBuf::from("/sys/class/block"),
            dev_dir: PathBuf::from("/dev"),
        }
    }
}

impl BlockDevices for Sysfs {
    fn scan(&self) -> io::Result<Vec<BlockDevice>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.class_dir)? {
            let entry = entry?;
            let dir = entry.path();
            let Ok(text) = std::fs::read_to_string(dir.join("uevent")) else {
                continue;
            };
            let u = parse_uevent(&text);
            let (Some(major), Some(minor)) = (u.major, u.minor) else {
                continue;
            };
            let name = u
                .devname
                .clone()
                .unwrap_or_else(|| entry.file_name().to_string_lossy().into_owned());
            if !self.dev_dir.join(&name).exists() {
                continue;
            }
            // A partition's sysfs folder sits inside its disk's: .../block/vda/vda2.
            let disk = if u.devtype.as_deref() == Some("partition") {
                std::fs::canonicalize(&dir).ok().and_then(|p| {
                    p.parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                })
            } else {
                None
            };
            let sectors = std::fs::read_to_string(dir.join("size"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            out.push(BlockDevice {
                name,
                disk,
                partn: u.partn,
                partname: u.partname,
                major,
                minor,
                sectors,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// The Basalt partitions of the boot disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitions {
    /// The disk, e.g. `vda`.
    pub disk: String,
    /// BOOT (FAT: boot script, U-Boot env).
    pub boot: BlockDevice,
    /// The booted slot's SYSTEM partition.
    pub slot: BlockDevice,
    /// The other slot's SYSTEM partition, when the disk has one.
    pub other_slot: Option<BlockDevice>,
    /// STATE (ext4).
    pub state: BlockDevice,
    /// DATA (ext4).
    pub data: BlockDevice,
    /// Found by GPT name (`true`) or by number (`false`, MBR).
    pub by_name: bool,
}

/// Why the partitions were not found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// No disk has the booted slot's partition.
    #[error("no partition named {0} (block devices: {1})")]
    NoSlot(&'static str, String),
    /// Several disks have it.
    #[error("partitions named {label} on several disks ({disks}): remove the other Basalt disk")]
    Ambiguous {
        /// The label.
        label: &'static str,
        /// The disks.
        disks: String,
    },
    /// The boot disk lacks a partition.
    #[error("disk {disk} has no partition named {label}")]
    Missing {
        /// The disk.
        disk: String,
        /// The label.
        label: &'static str,
    },
    /// A label appears twice on the boot disk.
    #[error("disk {disk} has several partitions named {label}")]
    Duplicate {
        /// The disk.
        disk: String,
        /// The label.
        label: &'static str,
    },
}

fn names(devs: &[BlockDevice]) -> String {
    if devs.is_empty() {
        return "none".to_string();
    }
    devs.iter()
        .map(|d| match &d.partname {
            Some(p) => format!("{}={p}", d.name),
            None => d.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Finds the Basalt partitions for `slot` among `devs` (see the module documentation).
pub fn find_partitions(devs: &[BlockDevice], slot: Slot) -> Result<Partitions, BlockError> {
    let parts: Vec<&BlockDevice> = devs.iter().filter(|d| d.disk.is_some()).collect();
    if parts.iter().all(|d| d.partname.is_none()) {
        return by_number(devs, &parts, slot);
    }
    let slot_label = slot.partition_label();
    let mut disks: Vec<&str> = parts
        .iter()
        .filter(|d| d.partname.as_deref() == Some(slot_label))
        .filter_map(|d| d.disk.as_deref())
        .collect();
    disks.dedup();
    let disk = match disks.as_slice() {
        [] => return Err(BlockError::NoSlot(slot_label, names(devs))),
        [one] => one.to_string(),
        many => {
            return Err(BlockError::Ambiguous {
                label: slot_label,
                disks: many.join(", "),
            });
        }
    };
    let on_disk: Vec<&BlockDevice> = parts
        .iter()
        .copied()
        .filter(|d| d.disk.as_deref() == Some(disk.as_str()))
        .collect();
    let find = |label: &'static str| -> Result<Option<BlockDevice>, BlockError> {
        let mut hits = on_disk
            .iter()
            .filter(|d| d.partname.as_deref() == Some(label));
        match (hits.next(), hits.next()) {
            (None, _) => Ok(None),
            (Some(d), None) => Ok(Some((*d).clone())),
            (Some(_), Some(_)) => Err(BlockError::Duplicate {
                disk: disk.clone(),
                label,
            }),
        }
    };
    let need = |label: &'static str| -> Result<BlockDevice, BlockError> {
        find(label)?.ok_or_else(|| BlockError::Missing {
            disk: disk.clone(),
            label,
        })
    };
    Ok(Partitions {
        boot: need("BOOT")?,
        slot: need(slot_label)?,
        other_slot: find(slot.other().partition_label())?,
        state: need("STATE")?,
        data: need("DATA")?,
        disk,
        by_name: true,
    })
}

fn by_number(
    devs: &[BlockDevice],
    parts: &[&BlockDevice],
    slot: Slot,
) -> Result<Partitions, BlockError> {
    let mut disks: Vec<&str> = parts.iter().filter_map(|d| d.disk.as_deref()).collect();
    disks.sort();
    disks.dedup();
    let mut candidates = Vec::new();
    for disk in disks {
        let mut data: Vec<&BlockDevice> = parts
            .iter()
            .copied()
            .filter(|d| d.disk.as_deref() == Some(disk) && d.partn.is_some() && d.sectors > 2)
            .collect();
        data.sort_by_key(|d| d.partn);
        if data.len() >= LABELS.len() {
            candidates.push((disk, data));
        }
    }
    let slot_label = slot.partition_label();
    match candidates.len() {
        0 => Err(BlockError::NoSlot(slot_label, names(devs))),
        1 => {
            let (disk, data) = candidates.remove(0);
            let (booted, other) = match slot {
                Slot::A => (data[1], data[2]),
                Slot::B => (data[2], data[1]),
            };
            Ok(Partitions {
                disk: disk.to_string(),
                boot: data[0].clone(),
                slot: booted.clone(),
                other_slot: Some(other.clone()),
                state: data[3].clone(),
                data: data[4].clone(),
                by_name: false,
            })
        }
        _ => Err(BlockError::Ambiguous {
            label: slot_label,
            disks: candidates
                .iter()
                .map(|(d, _)| *d)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Scans until the partitions for `slot` are found or `timeout` passes; returns the last
/// error then.
pub fn wait_for_partitions(
    devices: &dyn BlockDevices,
    slot: Slot,
    timeout: Duration,
    poll: Duration,
) -> anyhow::Result<Partitions> {
    let start = Instant::now();
    loop {
        let result = devices
            .scan()
            .map_err(anyhow::Error::from)
            .and_then(|devs| find_partitions(&devs, slot).map_err(anyhow::Error::from));
        match result {
            Ok(p) => return Ok(p),
            Err(e) if start.elapsed() >= timeout => {
                return Err(e.context(format!("waiting {timeout:?} for the Basalt partitions")));
            }
            Err(_) => std::thread::sleep(poll),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn part(name: &str, disk: &str, n: u32, label: Option<&str>) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            disk: Some(disk.into()),
            partn: Some(n),
            partname: label.map(str::to_string),
            major: 254,
            minor: n,
            sectors: 1 << 20,
        }
    }

    fn disk(name: &str) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            disk: None,
            partn: None,
            partname: None,
            major: 254,
            minor: 0,
            sectors: 1 << 22,
        }
    }

    fn basalt_disk(d: &str) -> Vec<BlockDevice> {
        let mut v = vec![disk(d)];
        for (i, l) in LABELS.iter().enumerate() {
            v.push(part(&format!("{d}{}", i + 1), d, i as u32 + 1, Some(l)));
        }
        v
    }

    #[test]
    fn uevent_fields() {
        let u = parse_uevent(
            "MAJOR=254\nMINOR=2\nDEVNAME=vda2\nDEVTYPE=partition\nDISKSEQ=1\nPARTN=2\nPARTNAME=SYSTEM-A\n",
        );
        assert_eq!(u.major, Some(254));
        assert_eq!(u.minor, Some(2));
        assert_eq!(u.devname.as_deref(), Some("vda2"));
        assert_eq!(u.devtype.as_deref(), Some("partition"));
        assert_eq!(u.partn, Some(2));
        assert_eq!(u.partname.as_deref(), Some("SYSTEM-A"));
        let disk = parse_uevent("MAJOR=254\nMINOR=0\nDEVNAME=vda\nDEVTYPE=disk\n");
        assert_eq!(disk.partname, None);
        assert_eq!(parse_uevent("garbage\n"), Uevent::default());
    }

    #[test]
    fn by_label_on_one_disk() {
        let p = find_partitions(&basalt_disk("vda"), Slot::B).unwrap();
        assert_eq!(p.disk, "vda");
        assert_eq!(p.boot.name, "vda1");
        assert_eq!(p.slot.name, "vda3");
        assert_eq!(p.other_slot.unwrap().name, "vda2");
        assert_eq!(p.state.name, "vda4");
        assert_eq!(p.data.name, "vda5");
        assert!(p.by_name);
        assert_eq!(p.slot.dev_string(), "254:3");
        assert_eq!(p.slot.node(), Path::new("/dev/vda3"));
    }

    #[test]
    fn other_disks_are_ignored_unless_ambiguous() {
        let mut devs = basalt_disk("vda");
        devs.push(disk("sda"));
        devs.push(part("sda1", "sda", 1, Some("STATE")));
        let p = find_partitions(&devs, Slot::A).unwrap();
        assert_eq!(p.state.name, "vda4", "STATE comes from the boot disk");
        devs.extend(basalt_disk("vdb"));
        assert_eq!(
            find_partitions(&devs, Slot::A),
            Err(BlockError::Ambiguous {
                label: "SYSTEM-A",
                disks: "vda, vdb".into()
            })
        );
    }

    #[test]
    fn missing_and_duplicate_labels() {
        let devs: Vec<_> = basalt_disk("vda")
            .into_iter()
            .filter(|d| d.partname.as_deref() != Some("DATA"))
            .collect();
        assert_eq!(
            find_partitions(&devs, Slot::A),
            Err(BlockError::Missing {
                disk: "vda".into(),
                label: "DATA"
            })
        );
        let mut devs = basalt_disk("vda");
        devs.push(part("vda6", "vda", 6, Some("STATE")));
        assert!(matches!(
            find_partitions(&devs, Slot::A),
            Err(BlockError::Duplicate { label: "STATE", .. })
        ));
        let err = find_partitions(&[disk("vda")], Slot::A).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no partition named SYSTEM-A (block devices: vda)"
        );
    }

    #[test]
    fn mbr_by_number_skips_the_extended_container() {
        let mut devs = vec![disk("mmcblk0")];
        for n in 1..=6u32 {
            let mut p = part(&format!("mmcblk0p{n}"), "mmcblk0", n, None);
            if n == 4 {
                p.sectors = 2;
            }
            devs.push(p);
        }
        let p = find_partitions(&devs, Slot::A).unwrap();
        assert!(!p.by_name);
        assert_eq!(p.boot.name, "mmcblk0p1");
        assert_eq!(p.slot.name, "mmcblk0p2");
        assert_eq!(p.state.name, "mmcblk0p5");
        assert_eq!(p.data.name, "mmcblk0p6");
        let b = find_partitions(&devs, Slot::B).unwrap();
        assert_eq!(b.slot.name, "mmcblk0p3");
        // a second disk with enough partitions: cannot tell
        for n in 1..=5u32 {
            devs.push(part(&format!("sda{n}"), "sda", n, None));
        }
        assert!(matches!(
            find_partitions(&devs, Slot::A),
            Err(BlockError::Ambiguous { .. })
        ));
    }

    struct Appearing {
        scans: Mutex<u32>,
    }

    impl BlockDevices for Appearing {
        fn scan(&self) -> io::Result<Vec<BlockDevice>> {
            let mut n = self.scans.lock().unwrap();
            *n += 1;
            Ok(if *n < 3 {
                vec![disk("vda")]
            } else {
                basalt_disk("vda")
            })
        }
    }

    #[test]
    fn waits_for_devices_then_times_out() {
        let dev = Appearing {
            scans: Mutex::new(0),
        };
        let p = wait_for_partitions(&dev, Slot::A, Duration::from_secs(5), Duration::ZERO).unwrap();
        assert_eq!(p.slot.name, "vda2");
        assert_eq!(*dev.scans.lock().unwrap(), 3);

        struct Never;
        impl BlockDevices for Never {
            fn scan(&self) -> io::Result<Vec<BlockDevice>> {
                Ok(Vec::new())
            }
        }
        let err = wait_for_partitions(
            &Never,
            Slot::A,
            Duration::from_millis(30),
            Duration::from_millis(5),
        )
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("waiting 30ms for the Basalt partitions: no partition named SYSTEM-A"),
            "{text}"
        );
    }
}
