//! The node's [`HostActions`]: the real thing, as PID 1.
//!
//! - hostname: `sethostname(2)`;
//! - sysctl: a write to `/proc/sys/<key with dots as slashes>`;
//! - kernel module: `finit_module(2)` of the module and its dependencies (from
//!   `modules.dep` of the running kernel in the verified root, deepest first; a module that
//!   is already loaded counts as loaded);
//! - reboot and power-off: orderly, on a background thread after a short delay so the
//!   API's reply leaves first: `sync`, every writable Basalt mount (STATE, DATA, BOOT)
//!   remounted read-only, `sync` again, then `reboot(2)`. A filesystem that cannot be
//!   remounted (busy) is still synced; the journal (ext4) or the atomic renames (FAT env)
//!   cover the rest.
//! - wipe (Reset): the contents of the STATE or DATA mount removed ([`crate::wipe`]).

use crate::early_boot::modules::{FinitModule, ModuleLoader, kernel_release, modules_dir};
use crate::host::{HostAction, HostActions, HostError, HostValue};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Delay between the API's reply and the reboot or power-off: long enough for the reply to
/// leave a slow node (500 ms lost an Upgrade reply under QEMU TCG on a loaded host, so the
/// client saw a transport error instead of "rebooting into the new slot").
pub const POWER_DELAY: Duration = Duration::from_secs(2);

/// The host actions of a node.
#[derive(Debug)]
pub struct LinuxHost {
    /// Where the verified root is mounted (`/system`), for kernel modules.
    system_root: PathBuf,
    /// Mounts to make read-only before a reboot, in order.
    writable_mounts: Vec<PathBuf>,
    /// Where STATE is mounted, for Reset.
    state_dir: Option<PathBuf>,
    /// Where DATA is mounted, for Reset.
    data_dir: Option<PathBuf>,
}

impl LinuxHost {
    /// A host whose modules come from `system_root` and whose `writable_mounts` are
    /// remounted read-only before a reboot or power-off.
    pub fn new(system_root: &Path, writable_mounts: Vec<PathBuf>) -> Self {
        Self {
            system_root: system_root.to_path_buf(),
            writable_mounts,
            state_dir: None,
            data_dir: None,
        }
    }

    /// The mounts of STATE and DATA, which Reset empties.
    pub fn with_wipe_targets(mut self, state_dir: &Path, data_dir: &Path) -> Self {
        self.state_dir = Some(state_dir.to_path_buf());
        self.data_dir = Some(data_dir.to_path_buf());
        self
    }

    fn load_module(&self, name: &str, parameters: &[String]) -> Result<(), String> {
        let release = kernel_release();
        let dir = modules_dir(&self.system_root, &release).ok_or_else(|| {
            format!(
                "no modules for kernel {release} under {}",
                self.system_root.display()
            )
        })?;
        let dep_text = std::fs::read_to_string(dir.join("modules.dep"))
            .map_err(|e| format!("{}/modules.dep: {e}", dir.display()))?;
        let order = load_order(&dep_text, name)
            .ok_or_else(|| format!("module {name} is not in {}/modules.dep", dir.display()))?;
        let params = std::ffi::CString::new(parameters.join(" "))
            .map_err(|_| format!("parameters of module {name} contain a NUL byte"))?;
        let last = order.len().saturating_sub(1);
        for (i, rel) in order.into_iter().enumerate() {
            // Parameters belong to the named module, not to its dependencies.
            let loaded = if i == last {
                std::fs::File::open(dir.join(&rel)).and_then(|file| {
                    rustix::system::finit_module(&file, &params, 0).map_err(Into::into)
                })
            } else {
                FinitModule.load(&dir.join(&rel))
            };
            match loaded {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {}
                Err(e) => return Err(format!("{rel}: {e}")),
            }
        }
        Ok(())
    }

    fn power(&self, restart: bool) {
        let mounts = self.writable_mounts.clone();
        std::thread::spawn(move || {
            std::thread::sleep(POWER_DELAY);
            power_now(&mounts, restart);
        });
    }
}

/// Syncs, remounts `mounts` read-only and reboots or powers off. Returns only if the
/// reboot system call fails.
pub fn power_now(mounts: &[PathBuf], restart: bool) {
    rustix::fs::sync();
    for m in mounts {
        let flags = rustix::mount::MountFlags::RDONLY;
        if let Err(e) = rustix::mount::mount_remount(m.as_path(), flags, c"") {
            eprintln!("machined: remounting {} read-only: {e}", m.display());
        }
    }
    rustix::fs::sync();
    let cmd = if restart {
        rustix::system::RebootCommand::Restart
    } else {
        rustix::system::RebootCommand::PowerOff
    };
    if let Err(e) = rustix::system::reboot(cmd) {
        eprintln!("machined: reboot(2) failed: {e}");
    }
}

/// Normalises a module name: `-` and `_` are the same to the kernel.
fn module_key(name: &str) -> String {
    name.trim_end_matches(".ko")
        .trim_end_matches(".ko.xz")
        .replace('-', "_")
}

/// The files to load for `name`, dependencies first, from `modules.dep` text.
pub fn load_order(modules_dep: &str, name: &str) -> Option<Vec<String>> {
    let want = module_key(name);
    for line in modules_dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        let stem = file.split(".ko").next().unwrap_or(file);
        if module_key(stem) != want {
            continue;
        }
        // modules.dep lists the full closure, nearest first; load the deepest first.
        let mut order: Vec<String> = deps.split_whitespace().rev().map(str::to_string).collect();
        order.push(path.trim().to_string());
        return Some(order);
    }
    None
}

impl HostActions for LinuxHost {
    fn perform(&self, action: HostAction) -> Result<(), HostError> {
        let name = action.name().to_string();
        let fail = |message: String| HostError::Failed {
            action: name.clone(),
            message,
        };
        match action {
            HostAction::SetHostname { hostname } => {
                rustix::system::sethostname(hostname.as_bytes())
                    .map_err(|e| fail(format!("sethostname {hostname:?}: {e}")))
            }
            HostAction::SetSysctl { key, value } => {
                let path = sysctl_path(&key).map_err(fail)?;
                std::fs::write(&path, value.as_bytes())
                    .map_err(|e| fail(format!("{}: {e}", path.display())))
            }
            HostAction::LoadModule { name, parameters } => {
                self.load_module(&name, &parameters).map_err(fail)
            }
            HostAction::WriteFile {
                path,
                mode,
                append,
                content,
            } => crate::host_files::write(Path::new("/"), &path, &content, mode, append)
                .map(|_| ())
                .map_err(|e| fail(e.to_string())),
            HostAction::StepClock { offset_ns } => step_clock(offset_ns).map_err(fail),
            HostAction::Reboot => {
                self.power(true);
                Ok(())
            }
            HostAction::Shutdown => {
                self.power(false);
                Ok(())
            }
            HostAction::Wipe { partition } => {
                let dir = match partition.as_str() {
                    "STATE" => self.state_dir.as_ref(),
                    "DATA" => self.data_dir.as_ref(),
                    _ => None,
                }
                .ok_or_else(|| fail(format!("no mounted {partition} partition to wipe")))?;
                let wiped = crate::wipe::empty_dir(dir).map_err(|e| fail(e.to_string()))?;
                if !wiped.skipped_mounts.is_empty() {
                    eprintln!(
                        "machined: wiping {partition}: left mounts alone: {:?}",
                        wiped.skipped_mounts
                    );
                }
                Ok(())
            }
        }
    }

    fn is_simulated(&self) -> bool {
        false
    }

    fn read(&self, value: &HostValue) -> Result<Option<String>, HostError> {
        let fail = |message: String| HostError::Failed {
            action: "read".into(),
            message,
        };
        let optional = |path: &Path| match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text.trim_end_matches('\n').to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(format!("{}: {e}", path.display()))),
        };
        match value {
            HostValue::Hostname => optional(Path::new("/proc/sys/kernel/hostname")),
            HostValue::Sysctl(key) => optional(&sysctl_path(key).map_err(fail)?),
            // Built-in modules have a /sys/module entry too (when they have parameters);
            // a loadable one has it once loaded.
            HostValue::Module(name) => Ok(Path::new("/sys/module")
                .join(name.replace('-', "_"))
                .exists()
                .then(|| "loaded".to_string())),
            HostValue::File(path) | HostValue::FileMode(path) => {
                crate::host::read_file_value(Path::new("/"), value, path)
            }
        }
    }
}

/// Adds `offset_ns` to the real-time clock.
fn step_clock(offset_ns: i64) -> Result<(), String> {
    use rustix::time::{ClockId, Timespec};
    let now = rustix::time::clock_gettime(ClockId::Realtime);
    let total =
        i128::from(now.tv_sec) * 1_000_000_000 + i128::from(now.tv_nsec) + i128::from(offset_ns);
    let new = Timespec {
        tv_sec: i64::try_from(total.div_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
        tv_nsec: i64::try_from(total.rem_euclid(1_000_000_000)).map_err(|e| e.to_string())?,
    };
    rustix::time::clock_settime(ClockId::Realtime, new)
        .map_err(|e| format!("clock_settime by {offset_ns} ns: {e}"))
}

/// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`; keys with `..`, `/` or
/// empty parts are refused.
pub fn sysctl_path(key: &str) -> Result<PathBuf, String> {
    if key.is_empty() || key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..") {
        return Err(format!("{key:?} is not a sysctl key"));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_order_from_modules_dep() {
        let dep = "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
                   kernel/drivers/md/dm-mod.ko:\n\
                   kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n";
        assert_eq!(
            load_order(dep, "dm_verity").unwrap(),
            [
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-verity.ko"
            ]
        );
        assert_eq!(
            load_order(dep, "dm-mod").unwrap(),
            ["kernel/drivers/md/dm-mod.ko"]
        );
        assert_eq!(load_order(dep, "ext4"), None);
    }

    #[test]
    fn sysctl_paths() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").unwrap(),
            Path::new("/proc/sys/net/ipv4/ip_forward")
        );
        assert!(sysctl_path("../etc").is_err());
        assert!(sysctl_path("a..b").is_err());
        assert!(sysctl_path("kernel/x").is_err());
        assert!(sysctl_path("").is_err());
    }
}
