//! Loop devices over disk image files, detached when dropped (also when an assertion
//! fails), for the reference tools that want a block device (`dumpe2fs`, `e2fsck`) and for
//! `basalt-flash`, which writes only to block devices.

use std::path::Path;
use std::process::Command;

/// An attached loop device (`/dev/loopN`).
#[derive(Debug)]
pub struct LoopDevice(pub String);

impl LoopDevice {
    /// A read-only loop device over `size` bytes of `file` from `offset` (one partition).
    pub fn partition_read_only(file: &Path, offset: u64, size: u64) -> LoopDevice {
        Self::losetup(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only", "-o"])
                .arg(offset.to_string())
                .arg("--sizelimit")
                .arg(size.to_string())
                .arg(file),
        )
    }

    /// A writable loop device over the whole of `file` (a disk image).
    pub fn whole_disk(file: &Path) -> LoopDevice {
        Self::losetup(Command::new("losetup").args(["--find", "--show"]).arg(file))
    }

    fn losetup(cmd: &mut Command) -> LoopDevice {
        let o = cmd.output().expect("losetup runs (util-linux)");
        assert!(
            o.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        LoopDevice(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}
