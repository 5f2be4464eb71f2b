//! Ending what a test started: containerd, its shims, their containers and mounts.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
/// The processes whose command line names `dir` (a containerd and its shims started with
/// their socket and configuration below `dir`).
fn processes_naming(dir: &Path) -> Vec<(u32, String)> {
    let needle = dir.display().to_string();
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&needle) {
            out.push((pid, text));
        }
    }
    out
}

/// The parent pid of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Stops everything a containerd rooted below `dir` left running, however its machined
/// ended: each shim's container (its init first: the kernel then ends the rest of the
/// container's pid namespace), the shims, containerd, and the container root file systems
/// the shims mounted below `dir`. For tests and benchmarks, in a `Drop` so that it also runs
/// when they fail.
pub fn kill_containerd_under(dir: &Path) {
    let kill = |pid: u32| {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    };
    let owners = processes_naming(dir);
    let shims: Vec<u32> = owners
        .iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim"))
        .map(|(pid, _)| *pid)
        .collect();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
            && parent_of(pid).is_some_and(|parent| shims.contains(&parent))
        {
            kill(pid);
        }
    }
    for (pid, _) in &owners {
        kill(*pid);
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = dir.display().to_string();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| p.starts_with(&needle))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

/// Runs [`kill_containerd_under`] for its folder when dropped.
pub struct ContainerdCleanup(pub PathBuf);

impl Drop for ContainerdCleanup {
    fn drop(&mut self) {
        kill_containerd_under(&self.0);
    }
}
