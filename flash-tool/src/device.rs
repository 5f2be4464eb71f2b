//! Block device discovery and the safety rules, read from sysfs and `/proc/self/mountinfo`
//! (no udev needed, so it works in minimal containers and initramfs shells).
//!
//! [`Sysfs`] is rooted at a directory (normally `/`) so unit tests can run the rules
//! against a fake tree. The rules ([`check`]) in the order they are applied:
//!
//! 1. the target must be a whole disk (not a partition) and not read-only;
//! 2. it must not hold the source image (the file's `st_dev` lies on it, or it is a loop
//!    device backed by the image file itself) — no override;
//! 3. the disk holding `/`, `/boot` or `/boot/efi` (through device-mapper slaves too), a
//!    disk with any mounted partition or swap, and a non-removable disk whose transport is
//!    not usb, mmc or loop are refused unless the user names exactly that device with
//!    `--force-system-disk DEVICE`;
//! 4. the image must fit — no override.
//!
//! Loop devices count as removable: they are file-backed scratch devices (and what the
//! tests flash); a loop device that holds `/` is still a system disk by rule 3.

use std::collections::BTreeSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A device that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path is not a block device (or cannot be read).
    #[error("{path} is not a block device: {reason}")]
    NotBlock {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A safety rule refused the device.
    #[error("refusing to write {path}: {reason}")]
    Refused {
        /// The device.
        path: PathBuf,
        /// The rule.
        reason: String,
    },
}

/// What is known about one whole-disk block device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    /// Kernel name (`sdb`, `mmcblk0`, `loop3`).
    pub name: String,
    /// `/dev/NAME`.
    pub path: PathBuf,
    /// `major:minor`.
    pub devnum: String,
    /// Size in bytes.
    pub size: u64,
    /// The removable flag.
    pub removable: bool,
    /// Read-only.
    pub read_only: bool,
    /// usb, mmc, loop, nvme, sata, virtio, or other.
    pub transport: String,
    /// Vendor and model, when the kernel knows them.
    pub model: String,
    /// Mount points of the disk and its partitions.
    pub mounts: Vec<String>,
    /// For loop devices: the backing file.
    pub backing_file: Option<PathBuf>,
}

impl DeviceInfo {
    /// Removable media, a usb/mmc transport, or a loop device.
    pub fn is_candidate(&self) -> bool {
        self.removable || matches!(self.transport.as_str(), "usb" | "mmc" | "loop")
    }
}

/// sysfs, procfs and /dev under one root.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs { root: "/".into() }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `major:minor` of a device number.
pub fn devnum_text(dev: u64) -> String {
    format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev))
}

impl Sysfs {
    /// A tree rooted at `root` (tests).
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Mount points by `major:minor`, from mountinfo, plus swap devices by path.
    pub fn mounts(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(text) = read_trim(&self.p("proc/self/mountinfo")) {
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() > 4 {
                    out.push((f[2].to_string(), f[4].to_string()));
                }
            }
        }
        out
    }

    /// Names of the whole disks under `major:minor` (a partition's parent disk, and the
    /// slaves of device-mapper or md devices, recursively).
    pub fn disks_of(&self, devnum: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let link = self.p(&format!("sys/dev/block/{devnum}"));
        if let Ok(dir) = std::fs::canonicalize(&link) {
            self.collect_disks(&dir, &mut out, 0);
        }
        out
    }

    fn collect_disks(&self, dir: &Path, out: &mut BTreeSet<String>, depth: u32) {
        if depth > 8 {
            return;
        }
        let disk_dir = if dir.join("partition").exists() {
            match dir.parent() {
                Some(p) => p.to_path_buf(),
                None => return,
            }
        } else {
            dir.to_path_buf()
        };
        let mut had_slaves = false;
        if let Ok(rd) = std::fs::read_dir(disk_dir.join("slaves")) {
            for e in rd.flatten() {
                if let Ok(t) = std::fs::canonicalize(e.path()) {
                    had_slaves = true;
                    self.collect_disks(&t, out, depth + 1);
                }
            }
        }
        if !had_slaves && let Some(n) = disk_dir.file_name().and_then(|n| n.to_str()) {
            out.insert(n.to_string());
        }
    }

    /// Reads one disk by kernel name.
    pub fn device(&self, name: &str) -> Option<DeviceInfo> {
        let dir = self.p(&format!("sys/block/{name}"));
        let devnum = read_trim(&dir.join("dev"))?;
        let size = read_trim(&dir.join("size"))?.parse::<u64>().ok()? * 512;
        let real = std::fs::canonicalize(&dir).unwrap_or(dir.clone());
        let real_s = real.to_string_lossy();
        let transport = if name.starts_with("loop") {
            "loop"
        } else if real_s.contains("/usb") {
            "usb"
        } else if name.starts_with("mmcblk") || real_s.contains("/mmc") {
            "mmc"
        } else if name.starts_with("nvme") {
            "nvme"
        } else if real_s.contains("/ata") {
            "sata"
        } else if real_s.contains("/virtio") {
            "virtio"
        } else {
            "other"
        };
        let model = [
            read_trim(&dir.join("device/vendor")),
            read_trim(&dir.join("device/model")).or_else(|| read_trim(&dir.join("device/name"))),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        let mut nums = vec![devnum.clone()];
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.path().join("partition").exists()
                    && let Some(d) = read_trim(&e.path().join("dev"))
                {
                    nums.push(d);
                }
            }
        }
        let mut mounts: Vec<String> = self
            .mounts()
            .into_iter()
            .filter(|(d, _)| nums.contains(d))
            .map(|(_, m)| m)
            .collect();
        if let Some(swaps) = read_trim(&self.p("proc/swaps")) {
            for l in swaps.lines().skip(1) {
                let dev = l.split_whitespace().next().unwrap_or("");
                let base = dev.rsplit('/').next().unwrap_or("");
                if base.starts_with(name) {
                    mounts.push(format!("[swap {dev}]"));
                }
            }
        }
        Some(DeviceInfo {
            name: name.to_string(),
            path: PathBuf::from(format!("/dev/{name}")),
            devnum,
            size,
            removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
            read_only: read_trim(&dir.join("ro")).as_deref() == Some("1"),
            transport: transport.to_string(),
            model,
            mounts,
            backing_file: read_trim(&dir.join("loop/backing_file"))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        })
    }

    /// Every disk of non-zero size.
    pub fn list(&self) -> Vec<DeviceInfo> {
        let mut names: Vec<String> = std::fs::read_dir(self.p("sys/block"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .filter_map(|n| self.device(n))
            .filter(|d| d.size > 0)
            .collect()
    }

    /// Disks holding `/`, `/boot` or `/boot/efi`.
    pub fn system_disks(&self) -> BTreeSet<String> {
        self.mounts()
            .into_iter()
            .filter(|(_, m)| matches!(m.as_str(), "/" | "/boot" | "/boot/efi"))
            .flat_map(|(d, _)| self.disks_of(&d))
            .collect()
    }

    /// Resolves a user-given path (`/dev/sdb`, a `/dev/disk/by-id/` link) to a whole disk.
    pub fn resolve(&self, path: &Path) -> Result<DeviceInfo, DeviceError> {
        let not_block = |reason: String| DeviceError::NotBlock {
            path: path.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| not_block(e.to_string()))?;
        if !meta.file_type().is_block_device() {
            return Err(not_block("not a block device".into()));
        }
        let devnum = devnum_text(meta.rdev());
        let sys = std::fs::canonicalize(self.p(&format!("sys/dev/block/{devnum}")))
            .map_err(|e| not_block(format!("no sysfs entry for {devnum}: {e}")))?;
        if sys.join("partition").exists() {
            return Err(DeviceError::Refused {
                path: path.to_path_buf(),
                reason: "it is a partition; name the whole disk".into(),
            });
        }
        let name = sys
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| not_block("no kernel name".into()))?;
        self.device(name)
            .ok_or_else(|| not_block(format!("cannot read /sys/block/{name}")))
    }
}

/// What the safety check needs besides the device.
#[derive(Debug, Default, Clone)]
pub struct SafetyContext {
    /// Disks holding `/`, `/boot`, `/boot/efi`.
    pub system_disks: BTreeSet<String>,
    /// Disks holding the source file.
    pub source_disks: BTreeSet<String>,
    /// The source file, canonical.
    pub source_file: Option<PathBuf>,
    /// Bytes that must fit (image size, when known).
    pub needed: Option<u64>,
    /// Devices the user named with `--force-system-disk`, canonical.
    pub forced: Vec<PathBuf>,
}

impl SafetyContext {
    /// The context for a source file (its disks) on this system.
    pub fn new(
        sys: &Sysfs,
        source: Option<&Path>,
        needed: Option<u64>,
        forced: &[PathBuf],
    ) -> Self {
        let source_file = source.and_then(|p| std::fs::canonicalize(p).ok());
        let source_disks = source
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| sys.disks_of(&devnum_text(m.dev())))
            .unwrap_or_default();
        SafetyContext {
            system_disks: sys.system_disks(),
            source_disks,
            source_file,
            needed,
            forced: forced
                .iter()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
                .collect(),
        }
    }
}

/// Applies the safety rules (module documentation) to `dev`, named `given` by the user.
pub fn check(dev: &DeviceInfo, given: &Path, ctx: &SafetyContext) -> Result<(), DeviceError> {
    let refuse = |reason: String| {
        Err(DeviceError::Refused {
            path: given.to_path_buf(),
            reason,
        })
    };
    if dev.read_only {
        return refuse("the device is read-only".into());
    }
    if ctx.source_disks.contains(&dev.name) {
        return refuse("it holds the source image".into());
    }
    if let (Some(b), Some(s)) = (&dev.backing_file, &ctx.source_file)
        && b == s
    {
        return refuse(format!(
            "it is a loop device backed by the source image {}",
            s.display()
        ));
    }
    let canonical = std::fs::canonicalize(given).unwrap_or_else(|_| given.to_path_buf());
    let forced = ctx.forced.iter().any(|f| *f == canonical || *f == dev.path);
    let why_system = if ctx.system_disks.contains(&dev.name) {
        Some("it holds the running system (/ or /boot)".to_string())
    } else if !dev.mounts.is_empty() {
        Some(format!(
            "it has mounted partitions: {}",
            dev.mounts.join(", ")
        ))
    } else if !dev.is_candidate() {
        Some(format!(
            "it is not removable (transport {}{})",
            dev.transport,
            if dev.model.is_empty() {
                String::new()
            } else {
                format!(", {}", dev.model)
            }
        ))
    } else {
        None
    };
    if let Some(why) = why_system
        && !forced
    {
        return refuse(format!(
            "{why}; if you really mean it, add --force-system-disk {}",
            dev.path.display()
        ));
    }
    if let Some(n) = ctx.needed
        && n > dev.size
    {
        return refuse(format!(
            "the image needs {n} bytes and the device has only {}",
            dev.size
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake() -> (tempfile::TempDir, Sysfs) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        let w = |p: &str, s: &str| {
            let p = r.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w("devices/usb1/block/sdb/dev", "8:16\n");
        w("devices/usb1/block/sdb/size", "2048\n");
        w("devices/usb1/block/sdb/removable", "1\n");
        w("devices/usb1/block/sdb/ro", "0\n");
        w("devices/usb1/block/sdb/device/model", "Card Reader\n");
        w("devices/usb1/block/sdb/sdb1/dev", "8:17\n");
        w("devices/usb1/block/sdb/sdb1/partition", "1\n");
        w("devices/pci/ata1/block/sda/dev", "8:0\n");
        w("devices/pci/ata1/block/sda/size", "4096\n");
        w("devices/pci/ata1/block/sda/removable", "0\n");
        w("devices/pci/ata1/block/sda/sda2/dev", "8:2\n");
        w("devices/pci/ata1/block/sda/sda2/partition", "2\n");
        w(
            "proc/self/mountinfo",
            "20 1 8:2 / / rw - ext4 /dev/sda2 rw\n",
        );
        std::fs::create_dir_all(r.join("sys/block")).unwrap();
        std::fs::create_dir_all(r.join("sys/dev/block")).unwrap();
        for (name, dir) in [
            ("sdb", "devices/usb1/block/sdb"),
            ("sda", "devices/pci/ata1/block/sda"),
        ] {
            std::os::unix::fs::symlink(r.join(dir), r.join("sys/block").join(name)).unwrap();
        }
        for (num, dir) in [
            ("8:16", "devices/usb1/block/sdb"),
            ("8:17", "devices/usb1/block/sdb/sdb1"),
            ("8:0", "devices/pci/ata1/block/sda"),
            ("8:2", "devices/pci/ata1/block/sda/sda2"),
        ] {
            std::os::unix::fs::symlink(r.join(dir), r.join("sys/dev/block").join(num)).unwrap();
        }
        let s = Sysfs::at(r);
        (t, s)
    }

    #[test]
    fn lists_and_classifies_disks() {
        let (_t, s) = fake();
        let l = s.list();
        assert_eq!(l.len(), 2);
        let sdb = l.iter().find(|d| d.name == "sdb").unwrap();
        assert_eq!(sdb.transport, "usb");
        assert_eq!(sdb.size, 1 << 20);
        assert!(sdb.is_candidate());
        let sda = l.iter().find(|d| d.name == "sda").unwrap();
        assert_eq!(sda.mounts, vec!["/".to_string()]);
        assert_eq!(s.system_disks(), BTreeSet::from(["sda".to_string()]));
    }

    #[test]
    fn rules_refuse_and_force_overrides() {
        let (_t, s) = fake();
        let sda = s.device("sda").unwrap();
        let sdb = s.device("sdb").unwrap();
        let mut ctx = SafetyContext {
            system_disks: s.system_disks(),
            ..Default::default()
        };
        let e = check(&sda, Path::new("/dev/sda"), &ctx).unwrap_err();
        assert!(e.to_string().contains("running system"), "{e}");
        check(&sdb, Path::new("/dev/sdb"), &ctx).unwrap();
        ctx.needed = Some(2 << 20);
        let e = check(&sdb, Path::new("/dev/sdb"), &ctx).unwrap_err();
        assert!(e.to_string().contains("needs"), "{e}");
        ctx.needed = None;
        ctx.forced = vec!["/dev/sda".into()];
        check(&sda, Path::new("/dev/sda"), &ctx).unwrap();
        ctx.source_disks.insert("sdb".into());
        let e = check(&sdb, Path::new("/dev/sdb"), &ctx).unwrap_err();
        assert!(e.to_string().contains("source image"), "{e}");
    }
}
