//! Reaping orphans as PID 1.
//!
//! Processes whose parent died are re-parented to PID 1; when they exit they stay zombies
//! until PID 1 waits for them. machined cannot simply `wait(-1)`: that would steal the exit
//! status of its own children, which tokio waits for by pid (the supervisor needs those
//! statuses). So the reaper scans `/proc` for zombies whose parent is this process and reaps
//! only those that were already zombies at the previous scan (a child machined waits for is
//! reaped by its waiter at once, so only abandoned orphans stay zombies that long). It
//! scans on every SIGCHLD and at least every [`SCAN_INTERVAL`].
//!
//! Limits: an orphan is reaped one to two scans after it exits.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// The longest time between two scans.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(2);

/// The pids of zombie children of `parent` listed in `proc` (a `/proc`-like directory).
pub fn zombie_children(proc: &Path, parent: u32) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(proc) else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after
        // its last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
        if state == Some("Z") && ppid == Some(parent) {
            out.insert(pid);
        }
    }
    out
}

/// Reaps abandoned zombie children forever (run it only as PID 1).
pub async fn reap_orphans() {
    let me = std::process::id();
    let mut seen = BTreeSet::new();
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).ok();
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                let _ = tokio::time::timeout(SCAN_INTERVAL, s.recv()).await;
            }
            None => tokio::time::sleep(SCAN_INTERVAL).await,
        }
        let now = zombie_children(Path::new("/proc"), me);
        for pid in now.intersection(&seen) {
            if let Some(p) = rustix::process::Pid::from_raw(*pid as i32) {
                let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
            }
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_zombie_children_in_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (pid, stat) in [
            ("10", "10 (sh) Z 1 10 10 0"),
            ("11", "11 (weird ) Z name) Z 1 11"),
            ("12", "12 (sleep) S 1 12"),
            ("13", "13 (other) Z 7 13"),
        ] {
            std::fs::create_dir(dir.path().join(pid)).unwrap();
            std::fs::write(dir.path().join(pid).join("stat"), stat).unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        let z: Vec<u32> = zombie_children(dir.path(), 1).into_iter().collect();
        assert_eq!(z, [10, 11]);
    }

    #[test]
    fn a_real_zombie_child_is_found() {
        let child = std::process::Command::new("/bin/true").spawn().unwrap();
        let pid = child.id();
        let me = std::process::id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !zombie_children(Path::new("/proc"), me).contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "no zombie {pid}");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(child);
    }
}
