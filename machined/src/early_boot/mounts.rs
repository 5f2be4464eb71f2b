//! Mounts: the API filesystems first, then the slot, the root, STATE, DATA and BOOT.
//!
//! [`Mounter`] is the one side effect; [`LinuxMounter`] creates the mount point and calls
//! `mount(2)`. What is mounted where, with which flags, is plain data ([`MountSpec`]) so
//! that the plan can be tested without root.

use std::io;
use std::path::{Path, PathBuf};

/// Mount flags machined uses (a small subset of `MS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// `MS_RDONLY`.
    pub read_only: bool,
    /// `MS_NOSUID`.
    pub nosuid: bool,
    /// `MS_NODEV`.
    pub nodev: bool,
    /// `MS_NOEXEC`.
    pub noexec: bool,
    /// `MS_DIRSYNC`: directory changes (create, rename, delete) are written before the
    /// call returns. On FAT it also orders a rename: the new entry, complete, before the old
    /// one is removed.
    pub dirsync: bool,
}

impl Flags {
    /// nosuid, nodev, noexec: for filesystems that hold no programs or devices.
    pub const DATA_ONLY: Flags = Flags {
        read_only: false,
        nosuid: true,
        nodev: true,
        noexec: true,
        dirsync: false,
    };

    /// The same, read-only.
    pub const fn read_only(self) -> Flags {
        Flags {
            read_only: true,
            ..self
        }
    }

    /// The same, with directory changes written synchronously.
    pub const fn dirsync(self) -> Flags {
        Flags {
            dirsync: true,
            ..self
        }
    }

    fn to_rustix(self) -> rustix::mount::MountFlags {
        use rustix::mount::MountFlags as M;
        let mut f = M::empty();
        if self.read_only {
            f |= M::RDONLY;
        }
        if self.nosuid {
            f |= M::NOSUID;
        }
        if self.nodev {
            f |= M::NODEV;
        }
        if self.noexec {
            f |= M::NOEXEC;
        }
        if self.dirsync {
            f |= M::DIRSYNC;
        }
        f
    }
}

/// One mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Device or pseudo-filesystem name.
    pub source: String,
    /// Mount point (created if missing).
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// Flags.
    pub flags: Flags,
    /// Filesystem options (`data` of `mount(2)`).
    pub data: Option<String>,
}

impl MountSpec {
    /// A mount of `source` on `target`.
    pub fn new(
        source: impl Into<String>,
        target: impl Into<PathBuf>,
        fstype: &str,
        flags: Flags,
        data: Option<&str>,
    ) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            fstype: fstype.to_string(),
            flags,
            data: data.map(str::to_string),
        }
    }
}

/// A failed mount, naming what was mounted where.
#[derive(Debug, thiserror::Error)]
#[error("mounting {source_name} ({fstype}) on {}: {error}", target.display())]
pub struct MountError {
    /// Device or pseudo-filesystem.
    pub source_name: String,
    /// Mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// The cause.
    #[source]
    pub error: io::Error,
}

/// Performs mounts.
pub trait Mounter {
    /// Creates `spec.target` if needed and mounts `spec` on it.
    fn mount(&self, spec: &MountSpec) -> io::Result<()>;
}

/// `mount(2)` on the running system.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxMounter;

impl Mounter for LinuxMounter {
    fn mount(&self, spec: &MountSpec) -> io::Result<()> {
        std::fs::create_dir_all(&spec.target)?;
        let data = spec
            .data
            .as_deref()
            .map(std::ffi::CString::new)
            .transpose()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in mount options"))?;
        rustix::mount::mount(
            spec.source.as_str(),
            spec.target.as_path(),
            spec.fstype.as_str(),
            spec.flags.to_rustix(),
            data.as_deref(),
        )?;
        Ok(())
    }
}

/// Mounts `spec`, naming it in the error.
pub fn mount(m: &dyn Mounter, spec: &MountSpec) -> Result<(), MountError> {
    m.mount(spec).map_err(|error| MountError {
        source_name: spec.source.clone(),
        target: spec.target.clone(),
        fstype: spec.fstype.clone(),
        error,
    })
}

/// The filesystems every later step needs: `/proc`, `/sys`, `/dev` (devtmpfs: the kernel
/// creates the device nodes, there is no udev), `/run` and `/tmp` (tmpfs).
pub fn api_filesystems(root: &Path) -> Vec<MountSpec> {
    let kernel = Flags::DATA_ONLY;
    vec![
        MountSpec::new("proc", root.join("proc"), "proc", kernel, None),
        MountSpec::new("sysfs", root.join("sys"), "sysfs", kernel, None),
        // The unified cgroup hierarchy: containerd and runc put each container in a cgroup
        // of its own (memory and CPU limits) below it.
        MountSpec::new(
            "cgroup2",
            root.join("sys/fs/cgroup"),
            "cgroup2",
            kernel,
            Some("nsdelegate"),
        ),
        MountSpec::new(
            "devtmpfs",
            root.join("dev"),
            "devtmpfs",
            Flags {
                nosuid: true,
                noexec: true,
                ..Flags::default()
            },
            Some("mode=0755"),
        ),
        MountSpec::new(
            "tmpfs",
            root.join("run"),
            "tmpfs",
            Flags {
                noexec: false,
                ..kernel
            },
            Some("mode=0755"),
        ),
        MountSpec::new(
            "tmpfs",
            root.join("tmp"),
            "tmpfs",
            Flags {
                noexec: false,
                ..kernel
            },
            Some("mode=1777"),
        ),
    ]
}

/// Mounts every spec in order; stops at the first failure.
pub fn mount_all(m: &dyn Mounter, specs: &[MountSpec]) -> Result<(), MountError> {
    for spec in specs {
        mount(m, spec)?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records mounts; fails those whose target is in `fail`.
    #[derive(Default)]
    pub(crate) struct FakeMounter {
        pub done: Mutex<Vec<MountSpec>>,
        pub fail: Vec<PathBuf>,
    }

    impl Mounter for FakeMounter {
        fn mount(&self, spec: &MountSpec) -> io::Result<()> {
            if self.fail.contains(&spec.target) {
                return Err(io::Error::from_raw_os_error(19)); // ENODEV
            }
            self.done.lock().unwrap().push(spec.clone());
            Ok(())
        }
    }

    #[test]
    fn api_filesystems_in_order() {
        let m = FakeMounter::default();
        mount_all(&m, &api_filesystems(Path::new("/"))).unwrap();
        let done = m.done.lock().unwrap();
        let targets: Vec<_> = done
            .iter()
            .map(|s| s.target.display().to_string())
            .collect();
        assert_eq!(
            targets,
            ["/proc", "/sys", "/sys/fs/cgroup", "/dev", "/run", "/tmp"]
        );
        assert_eq!(done[2].fstype, "cgroup2");
        assert_eq!(done[3].fstype, "devtmpfs");
        assert!(!done[3].flags.nodev, "/dev must allow device nodes");
        assert_eq!(done[5].data.as_deref(), Some("mode=1777"));
        assert!(done.iter().all(|s| s.flags.nosuid && !s.flags.read_only));
    }

    #[test]
    fn failure_names_the_mount() {
        let m = FakeMounter {
            fail: vec![PathBuf::from("/x/sys")],
            ..Default::default()
        };
        let err = mount_all(&m, &api_filesystems(Path::new("/x"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("mounting sysfs (sysfs) on /x/sys: "),
            "{text}"
        );
        assert_eq!(m.done.lock().unwrap().len(), 1);
    }

    #[test]
    fn flags_map_to_ms_bits() {
        use rustix::mount::MountFlags as M;
        assert_eq!(
            Flags::DATA_ONLY.read_only().to_rustix(),
            M::RDONLY | M::NOSUID | M::NODEV | M::NOEXEC
        );
        assert_eq!(Flags::default().to_rustix(), M::empty());
    }
}
