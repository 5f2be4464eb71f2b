//! Read-only views of the machine for the API: Stats, Processes, Mounts, Disks.
//!
//! CPU, memory, load, processes, filesystem usage and network counters come from
//! `sysinfo`; CPU percentages are measured between two calls (the first call reports 0).
//! The mount table is read from `/proc/self/mounts` (sysinfo does not report mount options
//! or pseudo filesystems) with sizes from sysinfo where it knows them, and block devices
//! from `/sys/block` (sysinfo lists mounted filesystems only, not disks).
//!
//! All functions block (they read /proc and /sys); call them from a blocking task.

use basalt_proto::machine::v1 as pb;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};
use sysinfo::{Disks, Networks, ProcessesToUpdate, System};

/// A failed observation.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// sysinfo could not read the system.
    #[error("sysinfo: {0}")]
    Sysinfo(String),
    /// A /proc or /sys file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Keeps the sysinfo state between calls (needed for CPU usage deltas).
pub struct Observer {
    system: Mutex<Option<System>>,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer {
    /// An observer that samples lazily on the first call.
    pub fn new() -> Self {
        Self {
            system: Mutex::new(None),
        }
    }

    fn with_system<T>(&self, f: impl FnOnce(&mut System) -> T) -> Result<T, ObserveError> {
        let mut guard = self.system.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            *guard = Some(System::new().map_err(|e| ObserveError::Sysinfo(e.to_string()))?);
        }
        match guard.as_mut() {
            Some(sys) => Ok(f(sys)),
            None => Err(ObserveError::Sysinfo("no system".into())),
        }
    }

    /// CPU, memory, load, uptime, filesystem usage and network counters.
    pub fn stats(&self) -> Result<pb::StatsResponse, ObserveError> {
        let (cpu, memory) = self.with_system(|sys| {
            sys.refresh_cpu_usage();
            sys.refresh_memory();
            let cpus = sys.cpus();
            let cpu = pb::CpuStats {
                count: cpus.len() as u32,
                usage_percent: sys.global_cpu_usage(),
                per_cpu_percent: cpus.iter().map(|c| c.usage()).collect(),
            };
            let memory = pb::MemoryStats {
                total_bytes: sys.total_memory(),
                used_bytes: sys.used_memory(),
                available_bytes: sys.available_memory(),
                swap_total_bytes: sys.total_swap(),
                swap_used_bytes: sys.used_swap(),
            };
            (cpu, memory)
        })?;
        let load = System::load_average()
            .map(|l| pb::LoadAverage {
                one: l.one,
                five: l.five,
                fifteen: l.fifteen,
            })
            .ok();
        let disks = Disks::new_with_refreshed_list()
            .map(|d| {
                d.iter()
                    .map(|d| pb::DiskUsage {
                        mount_point: d.mount_point().display().to_string(),
                        device: d.name().to_string_lossy().into_owned(),
                        filesystem: d.file_system().to_string_lossy().into_owned(),
                        total_bytes: d.total_space(),
                        available_bytes: d.available_space(),
                        read_only: d.is_read_only(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut network: Vec<pb::NetworkInterfaceStats> = Networks::new_with_refreshed_list()
            .map(|n| {
                n.iter()
                    .map(|(name, data)| pb::NetworkInterfaceStats {
                        name: name.to_string_lossy().into_owned(),
                        rx_bytes: data.total_received(),
                        tx_bytes: data.total_transmitted(),
                        rx_packets: data.total_packets_received(),
                        tx_packets: data.total_packets_transmitted(),
                        rx_errors: data.total_errors_on_received(),
                        tx_errors: data.total_errors_on_transmitted(),
                        mac_address: data.mac_address().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        network.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pb::StatsResponse {
            cpu: Some(cpu),
            memory: Some(memory),
            load,
            uptime_seconds: System::uptime().unwrap_or(0),
            disks,
            network,
        })
    }

    /// The running processes, sorted by pid.
    pub fn processes(&self) -> Result<pb::ProcessesResponse, ObserveError> {
        self.with_system(|sys| {
            sys.refresh_processes(ProcessesToUpdate::All, true);
            let mut processes: Vec<pb::ProcessInfo> = sys
                .processes()
                .values()
                .map(|p| pb::ProcessInfo {
                    pid: p.pid().as_u32(),
                    parent_pid: p.parent().map(|p| p.as_u32()).unwrap_or(0),
                    name: p.name().to_string_lossy().into_owned(),
                    command: p
                        .cmd()
                        .iter()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect(),
                    state: p.status().to_string(),
                    cpu_percent: p.cpu_usage(),
                    resident_bytes: p.memory(),
                    virtual_bytes: p.virtual_memory(),
                    started: Some(crate::timefmt::to_timestamp(
                        UNIX_EPOCH + Duration::from_secs(p.start_time()),
                    )),
                    uid: p.user_id().map(|u| **u),
                })
                .collect();
            processes.sort_by_key(|p| p.pid);
            pb::ProcessesResponse { processes }
        })
    }
}

/// Decodes the octal escapes (`\040` for a space) of `/proc/self/mounts` fields.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses the text of `/proc/self/mounts`.
pub fn parse_mounts(text: &str) -> Vec<pb::MountInfo> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let source = unescape_mount_field(f.next()?);
            let mount_point = unescape_mount_field(f.next()?);
            let filesystem = f.next()?.to_string();
            let options = f.next()?.split(',').map(str::to_string).collect();
            Some(pb::MountInfo {
                source,
                mount_point,
                filesystem,
                options,
                total_bytes: 0,
                available_bytes: 0,
            })
        })
        .collect()
}

/// The mount table, with sizes where sysinfo knows them.
pub fn mounts() -> Result<pb::MountsResponse, ObserveError> {
    let text =
        std::fs::read_to_string("/proc/self/mounts").map_err(|source| ObserveError::Read {
            path: "/proc/self/mounts".into(),
            source,
        })?;
    let mut mounts = parse_mounts(&text);
    if let Ok(disks) = Disks::new_with_refreshed_list() {
        for m in &mut mounts {
            if let Some(d) = disks
                .iter()
                .find(|d| d.mount_point() == Path::new(&m.mount_point))
            {
                m.total_bytes = d.total_space();
                m.available_bytes = d.available_space();
            }
        }
    }
    Ok(pb::MountsResponse { mounts })
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The whole-disk block devices under `sys_block` (normally `/sys/block`).
pub fn disks_in(sys_block: &Path) -> Result<pb::DisksResponse, ObserveError> {
    let entries = std::fs::read_dir(sys_block).map_err(|source| ObserveError::Read {
        path: sys_block.display().to_string(),
        source,
    })?;
    let mut disks = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        let is_virtual = ["loop", "ram", "zram", "dm-", "md", "nbd"]
            .iter()
            .any(|p| name.starts_with(p));
        if is_virtual || !dir.join("device").exists() {
            continue;
        }
        let sectors: u64 = read_trimmed(&dir.join("size")).parse().unwrap_or(0);
        let serial = match read_trimmed(&dir.join("device/serial")) {
            s if s.is_empty() => read_trimmed(&dir.join("serial")),
            s => s,
        };
        disks.push(pb::DiskInfo {
            device_path: format!("/dev/{name}"),
            size_bytes: sectors * 512,
            model: read_trimmed(&dir.join("device/model")),
            serial,
            removable: read_trimmed(&dir.join("removable")) == "1",
            read_only: read_trimmed(&dir.join("ro")) == "1",
            rotational: read_trimmed(&dir.join("queue/rotational")) == "1",
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pb::DisksResponse { disks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mount_table_with_escapes() {
        let text = "/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb1 /mnt/my\\040disk vfat ro 0 0\n";
        let m = parse_mounts(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, "/mnt/my disk");
        assert_eq!(m[0].options, ["rw", "relatime"]);
    }

    #[test]
    fn lists_whole_disks_only() {
        let dir = tempfile::tempdir().unwrap();
        for (name, real) in [("mmcblk0", true), ("loop0", true), ("virt", false)] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(d.join("queue")).unwrap();
            if real {
                std::fs::create_dir_all(d.join("device")).unwrap();
                std::fs::write(d.join("device/model"), "SD16G\n").unwrap();
            }
            std::fs::write(d.join("size"), "2048\n").unwrap();
            std::fs::write(d.join("removable"), "1\n").unwrap();
        }
        let disks = disks_in(dir.path()).unwrap().disks;
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "mmcblk0");
        assert_eq!(
            (disks[0].size_bytes, disks[0].removable),
            (1024 * 1024, true)
        );
        assert_eq!(disks[0].model, "SD16G");
    }

    #[test]
    fn stats_and_processes_see_this_process() {
        let o = Observer::new();
        let stats = o.stats().unwrap();
        assert!(stats.memory.unwrap().total_bytes > 0);
        let me = std::process::id();
        assert!(o.processes().unwrap().processes.iter().any(|p| p.pid == me));
    }
}
