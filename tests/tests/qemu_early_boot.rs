//! machined's early boot as PID 1, on the real qemu-arm64 image under QEMU (TCG).
//!
//! Builds the static aarch64 machined (`scripts/build-node aarch64`, incremental after the
//! first build), composes the qemu-arm64 disk image around it with `basalt-image` (pinned
//! Debian kernel and U-Boot from cache/debs), and boots it the way a board boots: Debian's
//! qemu_arm64 U-Boot runs boot.scr from BOOT, which boots slot A with `basalt.slot=A
//! basalt.roothash=…`; machined runs as `/init`.
//!
//! - `early_boot_reaches_the_daemon`: every stage line appears in order, then the summary
//!   line with the image's root hash and version, then the daemon hand-over; PID 1 stays up.
//!   The board as shipped has no loop driver: the root image is mapped by its extents.
//! - `early_boot_uses_the_loop_driver_when_loaded`: the same with `loop` added to the
//!   board's early modules: the root image is on a loop device.
//! - `corrupted_root_resets_the_board`: one byte flipped in the middle of the squashfs in
//!   SYSTEM-A's `rootfs.img`: dm-verity reports the corrupted block during the full read,
//!   `panic_on_corruption` panics the kernel, `panic=10` resets, and QEMU (`-no-reboot`)
//!   exits; the summary line never appears.
//!
//! Each image is built once per run into `$CARGO_TARGET_TMPDIR/qemu-early-boot/<variant>`
//! (replaced on the next run); the corruption test uses a sparse copy of the default one. QEMU runs
//! under a guard that kills it on drop, also when an assertion fails; every boot has a hard
//! timeout, and its console is saved next to the image (`*.console.log`).
//!
//! Needs: qemu-system-aarch64, /usr/lib/u-boot/qemu_arm64/u-boot.bin, the cross toolchain
//! of scripts/build-node and the pinned inputs in cache/debs (all from scripts/setup-host).

use basalt_boards::Board;
use basalt_bootloader::partition_table::PartitionTable;
use basalt_tests::{
    Ending, Fixture, Qemu, build_image, find_from, node_machined, require_qemu_arm64,
};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

const VERSION: &str = "0.9.1-early-boot";
/// Hard limit for one boot (U-Boot, kernel, early boot; or the panic and its 10 s delay).
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

/// The stage lines, in the order machined prints them.
const STAGES: [&str; 12] = [
    "api-filesystems",
    "cmdline",
    "modules",
    "partitions",
    "slot",
    "verity",
    "verify",
    "root",
    "system-links",
    "state",
    "data",
    "boot",
];

/// The qemu-arm64 image around the node machined, built once per run.
fn image() -> &'static Fixture {
    static IMAGE: OnceLock<Fixture> = OnceLock::new();
    IMAGE.get_or_init(|| image_with_modules("default", &[]))
}

/// The same board with the loop driver among the early modules.
fn image_with_loop() -> &'static Fixture {
    static IMAGE: OnceLock<Fixture> = OnceLock::new();
    IMAGE.get_or_init(|| image_with_modules("loop", &["loop"]))
}

/// The qemu-arm64 image with `extra_modules` appended to the board's early modules, in
/// `$CARGO_TARGET_TMPDIR/qemu-early-boot/<name>`.
fn image_with_modules(name: &str, extra_modules: &[&str]) -> Fixture {
    require_qemu_arm64();
    let mut board = Board::load("qemu-arm64").expect("the qemu-arm64 board");
    board
        .kernel
        .early_modules
        .extend(extra_modules.iter().map(|m| m.to_string()));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("qemu-early-boot")
        .join(name);
    build_image(&dir, board, VERSION, &node_machined(), None)
}

fn stage_line(name: &str) -> String {
    format!("[basalt] stage: {name} (")
}

const DAEMON_LINES: [&str; 1] = ["API listening on"];

/// Boots `fx`'s disk and checks the whole early boot: the stages in order, the summary,
/// the hand-over to the daemon, and PID 1 staying up. Returns the console.
fn assert_boots(fx: &Fixture, log: &str) -> String {
    let mut qemu = Qemu::boot_arm64(&fx.output.disk_image, &fx.dir.join(log), None);
    let ending = qemu.wait(BOOT_TIMEOUT, |c| {
        DAEMON_LINES.iter().any(|l| c.contains(l)) || c.contains("FATAL")
    });
    let console = qemu.console();
    let Some(Ending::Condition(took)) = ending else {
        panic!("no daemon hand-over within {BOOT_TIMEOUT:?} ({ending:?}); console:\n{console}");
    };
    // PID 1 must stay up after the hand-over: no "Attempted to kill init", no reset.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        qemu.is_running(),
        "QEMU exited after the hand-over:\n{}",
        qemu.console()
    );
    let console = qemu.console();
    assert!(!console.contains("FATAL"), "{console}");
    assert!(!console.contains("FAILED"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
    assert!(
        console.contains("basalt.slot=A"),
        "U-Boot did not boot slot A:\n{console}"
    );

    let mut at = 0;
    for name in STAGES {
        at = find_from(&console, &stage_line(name), at)
            .unwrap_or_else(|| panic!("stage {name} missing or out of order:\n{console}"));
    }
    let summary = format!(
        "[basalt] booted slot A, verity root {}, version {VERSION}",
        fx.output.root_hash
    );
    at = find_from(&console, &summary, at)
        .unwrap_or_else(|| panic!("summary line missing after the stages:\n{console}"));
    assert!(
        DAEMON_LINES
            .iter()
            .any(|l| find_from(&console, l, at).is_some()),
        "{console}"
    );
    assert!(
        console.contains(" 0 failed"),
        "an early module failed:\n{console}"
    );
    assert!(
        console.contains(" 1 panic_on_corruption"),
        "the verity table lacks panic_on_corruption:\n{console}"
    );
    let excerpt: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("[basalt]") || l.contains("Run /init"))
        .collect();
    eprintln!(
        "{log}: booted in {:.1} s (QEMU start to hand-over):\n{}",
        took.as_secs_f64(),
        excerpt.join("\n")
    );
    console
}

#[test]
fn early_boot_reaches_the_daemon() {
    let console = assert_boots(image(), "default.console.log");
    // Debian's loop driver is a module the board does not load: the root image is mapped
    // from its extents on the slot partition.
    assert!(
        console.contains("(no loop driver)"),
        "expected the extents path:\n{console}"
    );
}

#[test]
fn early_boot_uses_the_loop_driver_when_loaded() {
    let console = assert_boots(image_with_loop(), "loop.console.log");
    assert!(
        console.contains("/run/basalt/slot/rootfs.img on /dev/loop0"),
        "expected the loop path:\n{console}"
    );
}

/// A `Read + Write + Seek` window onto `len` bytes at `start` of a file (one partition of a
/// disk image), for fatfs.
struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if pos < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// Copies `from` to `to` leaving all-zero MiB chunks as holes.
fn sparse_copy(from: &Path, to: &Path) {
    let mut src = File::open(from).unwrap();
    let len = src.metadata().unwrap().len();
    let mut dst = File::create(to).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let n = buf.len().min((len - off) as usize);
        src.read_exact(&mut buf[..n]).unwrap();
        if buf[..n].iter().any(|b| *b != 0) {
            dst.seek(SeekFrom::Start(off)).unwrap();
            dst.write_all(&buf[..n]).unwrap();
        }
        off += n as u64;
    }
    dst.set_len(len).unwrap();
}

/// Flips one byte in the middle of the squashfs of SYSTEM-A's `rootfs.img` (through the
/// FAT filesystem, in place); returns its offset in the file.
fn corrupt_rootfs(disk: &Path) -> u64 {
    let table = PartitionTable::read(&mut File::open(disk).unwrap(), "disk.img").unwrap();
    let slot = table.by_label("SYSTEM-A").expect("SYSTEM-A");
    let window = Window {
        file: std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(disk)
            .unwrap(),
        start: slot.start,
        len: slot.size,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(window, fatfs::FsOptions::new()).expect("SYSTEM-A is FAT");
    let mut f = fs
        .root_dir()
        .open_file("rootfs.img")
        .expect("rootfs.img in SYSTEM-A");
    let mut sb = [0u8; 96];
    f.read_exact(&mut sb).unwrap();
    assert_eq!(&sb[..4], b"hsqs", "rootfs.img starts with a squashfs");
    let bytes_used = u64::from_le_bytes(sb[40..48].try_into().unwrap());
    let at = bytes_used / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0xff;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.flush().unwrap();
    drop(f);
    fs.unmount().unwrap();
    at
}

#[test]
fn corrupted_root_resets_the_board() {
    let fx = image();
    let disk = fx.dir.join("corrupt-disk.img");
    sparse_copy(&fx.output.disk_image, &disk);
    let at = corrupt_rootfs(&disk);
    let mut qemu = Qemu::boot_arm64(&disk, &fx.dir.join("corrupt.console.log"), None);
    let ending = qemu.wait(BOOT_TIMEOUT, |_| false);
    let console = qemu.console();
    let Some(Ending::Exited(status, took)) = ending else {
        panic!("QEMU did not reset within {BOOT_TIMEOUT:?} ({ending:?}); console:\n{console}");
    };
    eprintln!(
        "byte {at} of rootfs.img flipped; QEMU exited ({status}) after {:.1} s",
        took.as_secs_f64()
    );
    let _ = std::fs::remove_file(&disk);
    // The boot got as far as mapping the root, then the full read hit the bad block.
    assert!(
        console.contains(&stage_line("verity")),
        "the verity device was not set up:\n{console}"
    );
    assert!(
        console.contains("is corrupted"),
        "no dm-verity corruption report:\n{console}"
    );
    assert!(
        console.contains("Kernel panic") && console.contains("dm-verity device corrupted"),
        "no panic_on_corruption panic:\n{console}"
    );
    assert!(
        !console.contains(&stage_line("verify")) && !console.contains("[basalt] booted slot"),
        "the corrupted root was accepted:\n{console}"
    );
    assert!(
        console.contains("Rebooting in 10 seconds"),
        "the panic did not reset the board (panic=10):\n{console}"
    );
}
