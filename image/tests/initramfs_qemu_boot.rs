//! End to end on the real Debian arm64 kernel under QEMU (TCG): the qemu-arm64 board's
//! initramfs (zstd and gzip) built from the pinned kernel package, with busybox (pinned
//! `busybox-static`) as `/init`, loads every early module in the order of
//! `basalt-early-modules`, maps the slot root (our squashfs + our dm-verity tree, one virtio
//! disk) through the kernel's dm-verity with our root hash, mounts it and reads it; a
//! corrupted copy on a second disk fails to read.
//!
//! The dm-verity mapping uses a tiny static helper (DM_DEV_CREATE, DM_TABLE_LOAD, resume)
//! built with `aarch64-linux-gnu-gcc`; busybox has no dmsetup. Needs qemu-system-aarch64 and
//! the cross compiler: a missing tool fails with "run scripts/setup-host".

use basalt_boards::Board;
use basalt_image::initramfs::{InitramfsCompression, early_initramfs};
use basalt_image::inputs::{DebCache, Extract, KernelSource, prepare_inputs};
use basalt_image::squashfs::rootfs::slot_rootfs;
use basalt_image::squashfs::{SquashfsCompression, SquashfsOptions, write_squashfs};
use basalt_image::verity::{Salt, append_hash_tree};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const DM_HELPER: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/dm-ioctl.h>

static char buf[16384];

static struct dm_ioctl *init(const char *name) {
    struct dm_ioctl *io = (struct dm_ioctl *)buf;
    memset(buf, 0, sizeof(buf));
    io->version[0] = DM_VERSION_MAJOR;
    io->data_size = sizeof(buf);
    io->data_start = sizeof(struct dm_ioctl);
    strncpy(io->name, name, sizeof(io->name) - 1);
    return io;
}

/* dmverity NAME SECTORS "VERITY PARAMS" */
int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage\n"); return 2; }
    int fd = open("/dev/mapper/control", O_RDWR);
    if (fd < 0) { perror("/dev/mapper/control"); return 1; }
    struct dm_ioctl *io = init(argv[1]);
    if (ioctl(fd, DM_DEV_CREATE, io)) { perror("DM_DEV_CREATE"); return 1; }
    io = init(argv[1]);
    io->target_count = 1;
    io->flags = DM_READONLY_FLAG;
    struct dm_target_spec *t = (struct dm_target_spec *)(buf + sizeof(struct dm_ioctl));
    t->sector_start = 0;
    t->length = strtoull(argv[2], 0, 10);
    strcpy(t->target_type, "verity");
    char *params = (char *)(t + 1);
    strcpy(params, argv[3]);
    t->next = sizeof(*t) + ((strlen(params) + 8) & ~7u);
    if (ioctl(fd, DM_TABLE_LOAD, io)) { perror("DM_TABLE_LOAD"); return 1; }
    io = init(argv[1]);
    if (ioctl(fd, DM_DEV_SUSPEND, io)) { perror("DM_DEV_SUSPEND"); return 1; }
    unsigned minor = (io->dev & 0xff) | ((io->dev >> 12) & 0xfff00);
    printf("dm-%u\n", minor);
    return 0;
}
"#;

fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is not installed: run scripts/setup-host");
}

fn boot(image: &Path, initrd: &Path, disks: &[&Path], timeout: Duration) -> String {
    let mut cmd = Command::new("qemu-system-aarch64");
    cmd.args([
        "-M",
        "virt",
        "-cpu",
        "cortex-a72",
        "-m",
        "1024",
        "-accel",
        "tcg",
    ])
    .args(["-nographic", "-no-reboot", "-kernel"])
    .arg(image)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", "console=ttyAMA0,115200 panic=-1"]);
    for (i, d) in disks.iter().enumerate() {
        cmd.arg("-drive")
            .arg(format!(
                "file={},if=none,format=raw,id=d{i},readonly=on",
                d.display()
            ))
            .args(["-device", &format!("virtio-blk-pci,drive=d{i}")]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-aarch64 runs");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap();
            panic!("QEMU did not power off within {timeout:?}; console:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    reader.join().unwrap()
}

#[test]
fn early_modules_load_and_verity_root_mounts_in_qemu() {
    for tool in ["qemu-system-aarch64", "aarch64-linux-gnu-gcc"] {
        require(tool);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cache = DebCache::from_repo(&root).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let board = Board::load("qemu-arm64").unwrap();
    let inputs = prepare_inputs(&board, &KernelSource::Package, &cache, w)
        .unwrap_or_else(|e| panic!("{e}: run scripts/setup-host"));
    let k = &inputs.kernel;
    let early = k.modules.resolve(&board.kernel.early_modules).unwrap();

    // busybox and the dm helper
    let bb = cache.open("busybox-static", "arm64").unwrap();
    bb.extract(&[Extract::file("busybox", "/bin/busybox", "busybox")], w)
        .unwrap();
    fs::write(w.join("dmverity.c"), DM_HELPER).unwrap();
    let cc = Command::new("aarch64-linux-gnu-gcc")
        .args(["-static", "-O2", "-o"])
        .arg(w.join("dmverity"))
        .arg(w.join("dmverity.c"))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );

    // slot root: the non-early modules plus a marker, squashfs + verity
    let mut tree = slot_rootfs(&k.modules, &early, &inputs.linux_firmware).unwrap();
    tree.add_file("etc/basalt-test", 0o644, b"hello-from-squashfs".to_vec())
        .unwrap();
    let disk = w.join("rootfs.img");
    let opts = SquashfsOptions {
        compression: SquashfsCompression::Zstd,
        level: 3,
        mtime: 1_700_000_000,
        ..SquashfsOptions::default()
    };
    write_squashfs(&tree, &disk, &opts).unwrap();
    let info = append_hash_tree(&disk, Salt::FromContent).unwrap();
    let bad = w.join("rootfs-bad.img");
    let mut bytes = fs::read(&disk).unwrap();
    let at = (info.hash_offset / 2) as usize;
    bytes[at] ^= 0x5a;
    fs::write(&bad, bytes).unwrap();

    let script = format!(
        r#"#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s /bin
export PATH=/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
rel=$(uname -r)
n=0
while read -r m; do
    if insmod "/lib/modules/$rel/$m"; then n=$((n+1)); else echo "BASALT-INSMOD-FAIL $m"; fi
done < "/lib/modules/$rel/basalt-early-modules"
echo "BASALT-MODULES-LOADED $n"
i=0; while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
good=$(/bin/dmverity good {sectors} "{good}") && echo "BASALT-DM-GOOD $good"
mkdir -p /sysroot
if mount -t squashfs -o ro /dev/$good /sysroot; then
    echo "BASALT-MOUNTED $(cat /sysroot/etc/basalt-test)"
    echo "BASALT-MODULES-DEP $(wc -l < /sysroot/lib/modules/$rel/modules.dep)"
fi
dd if=/dev/$good of=/dev/null bs=1M 2>/dev/null && echo BASALT-GOOD-READ-OK
bad=$(/bin/dmverity bad {sectors} "{bad}") && echo "BASALT-DM-BAD $bad"
dd if=/dev/$bad of=/dev/null bs=1M 2>/dev/null || echo BASALT-BAD-READ-FAILED
echo BASALT-DONE
poweroff -f
"#,
        sectors = info.data_sectors(),
        good = info.dm_target_params("/dev/vda"),
        bad = info.dm_target_params("/dev/vdb"),
    );
    let script_path = w.join("init.sh");
    fs::write(&script_path, script).unwrap();

    let mut initramfs = early_initramfs(&script_path, &k.modules, &early).unwrap();
    initramfs
        .add_file_from("bin/busybox", 0o755, &w.join("busybox"))
        .unwrap();
    initramfs
        .add_file_from("bin/dmverity", 0o755, &w.join("dmverity"))
        .unwrap();

    for comp in [InitramfsCompression::Zstd, InitramfsCompression::Gzip] {
        let initrd = w.join(format!("initrd-{comp:?}.img"));
        initramfs.write_file(&initrd, comp, 1_700_000_000).unwrap();
        let out = boot(&k.image, &initrd, &[&disk, &bad], Duration::from_secs(300));
        let has = |s: &str| out.contains(s);
        assert!(
            !has("BASALT-INSMOD-FAIL"),
            "{comp:?}: a module failed:\n{out}"
        );
        assert!(
            has(&format!("BASALT-MODULES-LOADED {}", early.modules.len())),
            "{comp:?}:\n{out}"
        );
        assert!(
            has("BASALT-DM-GOOD dm-0"),
            "{comp:?}: verity mapping:\n{out}"
        );
        assert!(
            has("BASALT-MOUNTED hello-from-squashfs"),
            "{comp:?}: mount:\n{out}"
        );
        assert!(
            has("BASALT-GOOD-READ-OK"),
            "{comp:?}: verified read:\n{out}"
        );
        assert!(has("BASALT-DM-BAD dm-1"), "{comp:?}:\n{out}");
        assert!(
            has("BASALT-BAD-READ-FAILED"),
            "{comp:?}: corruption not detected:\n{out}"
        );
        assert!(has("BASALT-DONE"), "{comp:?}:\n{out}");
        let dep_lines = out
            .lines()
            .find_map(|l| l.split("BASALT-MODULES-DEP ").nth(1))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        assert_eq!(dep_lines, k.modules.len(), "{comp:?}");
    }
}
