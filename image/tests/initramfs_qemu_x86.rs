//! The x86_64 boards' early modules on the real Debian amd64 kernel under QEMU (q35, OVMF,
//! TCG): a static C `/init` loads every module of `basalt-early-modules` with
//! `finit_module(2)`, as machined does, and reports each failure. Needs
//! qemu-system-x86_64, OVMF and gcc: a missing tool fails with "run scripts/setup-host".

use basalt_boards::Board;
use basalt_image::initramfs::{InitramfsCompression, early_initramfs};
use basalt_image::inputs::{DebCache, KernelSource, prepare_inputs};
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const INIT_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

int main(void) {
    struct utsname u;
    char path[1024], line[512];
    int loaded = 0;
    mount("proc", "/proc", "proc", 0, 0);
    uname(&u);
    snprintf(path, sizeof path, "/lib/modules/%s/basalt-early-modules", u.release);
    FILE *list = fopen(path, "r");
    if (!list) { printf("BASALT-NO-LIST %s %m\n", path); fflush(stdout); reboot(RB_POWER_OFF); }
    while (fgets(line, sizeof line, list)) {
        line[strcspn(line, "\n")] = 0;
        snprintf(path, sizeof path, "/lib/modules/%s/%s", u.release, line);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || syscall(SYS_finit_module, fd, "", 0) != 0)
            printf("BASALT-INSMOD-FAIL %s: %m\n", line);
        else
            loaded++;
        if (fd >= 0) close(fd);
    }
    printf("BASALT-MODULES-LOADED %d\n", loaded);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
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

#[test]
fn x86_64_early_modules_load_in_qemu() {
    require("qemu-system-x86_64");
    require("gcc");
    let board = Board::load("qemu-x86_64").unwrap();
    let q = board.qemu.clone().unwrap();
    let (code, vars) = (q.pflash_code.unwrap(), q.pflash_vars.unwrap());
    assert!(
        Path::new(&code).is_file(),
        "{code} missing: run scripts/setup-host"
    );

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cache = DebCache::from_repo(&root).unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let inputs = prepare_inputs(&board, &KernelSource::Package, &cache, w)
        .unwrap_or_else(|e| panic!("{e}: run scripts/setup-host"));
    let k = &inputs.kernel;
    // both x86_64 boards' early modules in one boot
    let mut names = board.kernel.early_modules.clone();
    for m in Board::load("x86_64-uefi").unwrap().kernel.early_modules {
        if !names.contains(&m) {
            names.push(m);
        }
    }
    let early = k.modules.resolve(&names).unwrap();

    fs::write(w.join("init.c"), INIT_C).unwrap();
    let cc = Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(w.join("init"))
        .arg(w.join("init.c"))
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let initrd = w.join("initrd.img");
    early_initramfs(&w.join("init"), &k.modules, &early)
        .unwrap()
        .write_file(&initrd, InitramfsCompression::Zstd, 1_700_000_000)
        .unwrap();
    let vars_copy = w.join("vars.fd");
    fs::copy(&vars, &vars_copy).unwrap();

    // No -cpu: QEMU's default x86 model has neither SSE4.2 nor PCLMUL, and the early list
    // must load on such a CPU too (so no crc32c-intel or crct10dif-pclmul in it).
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            &q.machine,
            "-m",
            "1024",
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-drive",
            &format!("if=pflash,format=raw,readonly=on,file={code}"),
        ])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars_copy.display()))
        .arg("-kernel")
        .arg(&k.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0,115200 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "QEMU did not power off; console:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = reader.join().unwrap();
    assert!(
        !out.contains("BASALT-INSMOD-FAIL"),
        "a module failed:\n{out}"
    );
    assert!(
        out.contains(&format!("BASALT-MODULES-LOADED {}", early.modules.len())),
        "{out}"
    );
}
