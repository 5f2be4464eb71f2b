//! The initramfs writer against GNU cpio, gzip and zstd: `cpio -itv` lists exactly what was
//! written (types, modes, owners, link targets, device numbers), extraction yields identical
//! contents, compressed streams decompress to the same archive, and rebuilds are
//! byte-identical.

use basalt_image::initramfs::{Initramfs, InitramfsCompression};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const MTIME: u32 = 1_700_000_000;

fn run_stdin(tool: &str, args: &[&str], input: &[u8], cwd: &Path) -> Output {
    let mut child = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool} cannot run ({e}): run scripts/setup-host"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sample(dir: &Path) -> Initramfs {
    let bin = dir.join("machined");
    fs::write(
        &bin,
        (0..200_000u32)
            .map(|i| (i * 7 % 256) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let mut fs = Initramfs::with_skeleton();
    fs.add_file_from("/init", 0o755, &bin).unwrap();
    fs.add_file(
        "lib/modules/6.1.0-x/kernel/fs/squashfs/squashfs.ko",
        0o644,
        b"\x7fELF module".to_vec(),
    )
    .unwrap();
    fs.add_file(
        "lib/modules/6.1.0-x/basalt-early-modules",
        0o644,
        b"kernel/fs/squashfs/squashfs.ko\n".to_vec(),
    )
    .unwrap();
    fs.add_file("etc/empty", 0o600, Vec::new()).unwrap();
    fs.add_file("etc/odd", 0o644, b"abc".to_vec()).unwrap();
    fs.add_symlink("bin/sh", "/init").unwrap();
    fs
}

#[test]
fn gnu_cpio_lists_and_extracts_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let fs_ = sample(dir.path());
    let archive = fs_
        .write(Vec::new(), InitramfsCompression::None, MTIME)
        .unwrap();
    assert_eq!(archive.len() % 512, 0);

    // numeric listing: mode, links, uid, gid, size/dev, date, name
    let out = run_stdin("cpio", &["-itvn", "--quiet"], &archive, dir.path());
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = listing.lines().collect();
    // device lines have "major, minor" (two tokens) where others have the size
    let name_of = |l: &str| -> String {
        let t: Vec<&str> = l.split_whitespace().collect();
        (if t[4].ends_with(',') { t[9] } else { t[8] }).to_string()
    };
    let names: Vec<String> = lines.iter().map(|l| name_of(l)).collect();
    let want: Vec<&str> = fs_.paths().collect();
    assert_eq!(names, want);
    let line = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| name_of(l) == name)
            .unwrap()
            .split_whitespace()
            .collect()
    };
    assert_eq!(line("init")[..5], ["-rwxr-xr-x", "1", "0", "0", "200000"]);
    assert_eq!(line("dev")[..4], ["drwxr-xr-x", "2", "0", "0"]);
    assert_eq!(line("tmp")[0], "drwxrwxrwt");
    assert_eq!(
        line("dev/console")[..6],
        ["crw-------", "1", "0", "0", "5,", "1"]
    );
    assert_eq!(
        line("dev/null")[..6],
        ["crw-rw-rw-", "1", "0", "0", "1,", "3"]
    );
    let sh = line("bin/sh");
    assert_eq!(sh[0], "lrwxrwxrwx");
    assert_eq!(sh[sh.len() - 2..], ["->", "/init"]);
    assert_eq!(line("etc/empty")[0], "-rw-------");

    // extraction (as root device nodes are created too)
    let out_dir = dir.path().join("x");
    fs::create_dir(&out_dir).unwrap();
    run_stdin(
        "cpio",
        &["-idm", "--quiet", "--no-absolute-filenames"],
        &archive,
        &out_dir,
    );
    assert_eq!(
        fs::read(out_dir.join("init")).unwrap(),
        fs::read(dir.path().join("machined")).unwrap()
    );
    assert_eq!(
        fs::read(out_dir.join("lib/modules/6.1.0-x/kernel/fs/squashfs/squashfs.ko")).unwrap(),
        b"\x7fELF module"
    );
    assert_eq!(fs::read(out_dir.join("etc/odd")).unwrap(), b"abc");
    assert_eq!(fs::read(out_dir.join("etc/empty")).unwrap(), b"");
    assert_eq!(
        fs::read_link(out_dir.join("bin/sh")).unwrap(),
        Path::new("/init")
    );
    let m = fs::metadata(out_dir.join("init")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime()), (0o755, i64::from(MTIME)));
    let console = fs::symlink_metadata(out_dir.join("dev/console")).unwrap();
    assert!(console.file_type().is_char_device());
    assert_eq!(console.rdev(), libc_makedev(5, 1));
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12) | ((major & !0xfff) << 32)
}

#[test]
fn compressed_images_decompress_to_the_same_archive_and_rebuilds_match() {
    let dir = tempfile::tempdir().unwrap();
    let plain = sample(dir.path())
        .write(Vec::new(), InitramfsCompression::None, MTIME)
        .unwrap();
    let again = sample(dir.path())
        .write(Vec::new(), InitramfsCompression::None, MTIME)
        .unwrap();
    assert_eq!(plain, again, "same inputs, same bytes");
    let other_time = sample(dir.path())
        .write(Vec::new(), InitramfsCompression::None, MTIME + 1)
        .unwrap();
    assert_ne!(plain, other_time);

    let gz = sample(dir.path())
        .write(Vec::new(), InitramfsCompression::Gzip, MTIME)
        .unwrap();
    assert_eq!(
        gz,
        sample(dir.path())
            .write(Vec::new(), InitramfsCompression::Gzip, MTIME)
            .unwrap()
    );
    let out = run_stdin("gzip", &["-dc"], &gz, dir.path());
    assert_eq!(out.stdout, plain);

    let zst = sample(dir.path())
        .write(Vec::new(), InitramfsCompression::Zstd, MTIME)
        .unwrap();
    assert_eq!(
        zst,
        sample(dir.path())
            .write(Vec::new(), InitramfsCompression::Zstd, MTIME)
            .unwrap()
    );
    let out = run_stdin("zstd", &["-dc"], &zst, dir.path());
    assert_eq!(out.stdout, plain);
    assert!(zst.len() < plain.len() && gz.len() < plain.len());

    // the file writer gives the same bytes
    let f = dir.path().join("initrd.img");
    sample(dir.path())
        .write_file(&f, InitramfsCompression::Zstd, MTIME)
        .unwrap();
    assert_eq!(fs::read(&f).unwrap(), zst);
}

#[test]
fn missing_source_is_named() {
    let mut fs_ = Initramfs::new();
    fs_.add_file_from("init", 0o755, Path::new("/nonexistent/machined"))
        .unwrap();
    let err = fs_
        .write(Vec::new(), InitramfsCompression::None, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/machined"), "{err}");
}
