//! Helpers for the loop-device tests: synthetic GPT images, loop devices that are detached
//! even when a test fails, and the binary under test.

#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const MIB: u64 = 1 << 20;

/// A loop device detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `file` (with partition scanning).
    pub fn attach(file: &Path) -> Loop {
        Loop::attach_with(file, &[])
    }

    /// Attaches `file` with extra `losetup` flags (`-r`: read-only).
    pub fn attach_with(file: &Path, flags: &[&str]) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show", "-P"])
            .args(flags)
            .arg(file)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Unmounts on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-o", opts])
            .arg(dev)
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount {} failed", dev.display());
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A sparse file of `size` bytes filled with `byte` (0 leaves it sparse).
pub fn blank(path: &Path, size: u64, byte: u8) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    if byte != 0 {
        let chunk = vec![byte; MIB as usize];
        let mut off = 0;
        while off < size {
            let n = (size - off).min(MIB) as usize;
            f.write_all_at(&chunk[..n], off).unwrap();
            off += n as u64;
        }
    }
}

/// Partition ranges of the synthetic image.
pub struct Layout {
    pub boot: (u64, u64),
    pub system_a: (u64, u64),
    pub system_b: (u64, u64),
    pub state: (u64, u64),
    pub data: (u64, u64),
}

pub fn sfdisk(path: &Path, script: &str) {
    let mut c = Command::new("sfdisk")
        .arg("-q")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success());
}

/// A Basalt-shaped GPT image of `size_mib` MiB: BOOT (FAT), SYSTEM-A, SYSTEM-B, STATE
/// (empty ext4) and DATA, with random data in a few ranges and holes elsewhere.
pub fn make_image(path: &Path, size_mib: u64) -> Layout {
    blank(path, size_mib * MIB, 0);
    sfdisk(
        path,
        "label: gpt\nsize=8MiB, name=BOOT\nsize=8MiB, name=SYSTEM-A\nsize=8MiB, name=SYSTEM-B\nsize=8MiB, name=STATE\nname=DATA\n",
    );
    let mut f = std::fs::File::open(path).unwrap();
    let t = basalt_bootloader::partition_table::PartitionTable::read(&mut f, "img").unwrap();
    let r = |l: &str| {
        let p = t.by_label(l).unwrap();
        (p.start, p.size)
    };
    let layout = Layout {
        boot: r("BOOT"),
        system_a: r("SYSTEM-A"),
        system_b: r("SYSTEM-B"),
        state: r("STATE"),
        data: r("DATA"),
    };
    basalt_bootloader::systemd_boot::format_fat(path, layout.boot.0, layout.boot.1, None, "BOOT")
        .unwrap();
    // STATE: an empty ext4 with a known UUID, written at its offset.
    let dir = path.parent().unwrap();
    let st = dir.join("state.part");
    blank(&st, layout.state.1, 0);
    let out = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-L",
            "STATE",
            "-U",
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        ])
        .arg(&st)
        .output()
        .unwrap();
    assert!(out.status.success());
    copy_sparse(&st, path, layout.state.0);
    std::fs::remove_file(&st).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&noise(1, 3 * MIB as usize + 12288), layout.system_a.0)
        .unwrap();
    f.write_all_at(&noise(2, 40960), layout.data.0 + 5 * MIB)
        .unwrap();
    f.write_all_at(&noise(3, 4096), layout.data.0 + layout.data.1 - 3 * MIB)
        .unwrap();
    layout
}

/// Copies the mapped extents of `src` into `dst` at `offset`.
pub fn copy_sparse(src: &Path, dst: &Path, offset: u64) {
    let s = std::fs::File::open(src).unwrap();
    let d = std::fs::OpenOptions::new().write(true).open(dst).unwrap();
    for e in basalt_image::bmap::mapped_extents(&s, src).unwrap() {
        let mut buf = vec![0u8; (e.end - e.start) as usize];
        s.read_exact_at(&mut buf, e.start).unwrap();
        d.write_all_at(&buf, offset + e.start).unwrap();
    }
}

/// Runs basalt-flash with `args`.
pub fn flash(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_basalt-flash"))
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "basalt-flash {args:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn read_range(path: &Path, offset: u64, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Whether two files have equal bytes in `0..len`.
pub fn same(a: &Path, b: &Path, len: u64) -> bool {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(8 * MIB);
        if read_range(a, off, n) != read_range(b, off, n) {
            eprintln!(
                "{} and {} differ in {off}..{}",
                a.display(),
                b.display(),
                off + n
            );
            return false;
        }
        off += n;
    }
    true
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
