//! The Rust squashfs writer against the real `unsquashfs` (squashfs-tools): listing,
//! extraction with identical contents, owners, modes and mtimes, every compressor, byte-
//! identical rebuilds, and the same tree through `mksquashfs` for comparison.

use basalt_image::squashfs::{
    SquashTree, SquashfsCompression, SquashfsOptions, squash_dir, write_squashfs,
};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

const MTIME: u32 = 1_700_000_000;

fn run(tool: &str, args: &[&str]) -> Output {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} cannot run ({e}): run scripts/setup-host"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|i| {
            if i % 3 == 0 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
            }
            (x >> 3) as u8 & 0x3f
        })
        .collect()
}

/// A source tree with the shapes that matter: empty file, tail-only file, exact block,
/// several blocks plus a tail, duplicates, executables, symlinks, empty and nested dirs.
fn make_tree(root: &Path) {
    let files: &[(&str, Vec<u8>)] = &[
        ("empty", vec![]),
        ("small.txt", b"hello squashfs\n".to_vec()),
        ("lib/modules/6.1.0-x/kernel/a.ko", pattern(128 * 1024, 1)),
        (
            "lib/modules/6.1.0-x/kernel/b.ko",
            pattern(3 * 128 * 1024 + 777, 2),
        ),
        (
            "lib/modules/6.1.0-x/kernel/dup-of-b.ko",
            pattern(3 * 128 * 1024 + 777, 2),
        ),
        ("lib/firmware/brcm/fw.bin", pattern(50_000, 3)),
        ("bin/tool", b"#!/bin/sh\necho hi\n".to_vec()),
    ];
    for (p, data) in files {
        let path = root.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    }
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("small.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::create_dir_all(root.join("var/empty/dir")).unwrap();
    std::os::unix::fs::symlink("brcm/fw.bin", root.join("lib/firmware/link.bin")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute", root.join("dangling")).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Link(String),
}

/// Path -> (kind, mode bits) of a directory tree (root excluded).
fn snapshot(root: &Path) -> BTreeMap<String, (Kind, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (Kind, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(
                    rel,
                    (
                        Kind::Link(fs::read_link(&p).unwrap().to_string_lossy().into_owned()),
                        0o777,
                    ),
                );
            } else if m.is_dir() {
                out.insert(rel, (Kind::Dir, mode));
                walk(root, &p, out);
            } else {
                out.insert(rel, (Kind::File(fs::read(&p).unwrap()), mode));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn normalized(src: &BTreeMap<String, (Kind, u32)>) -> BTreeMap<String, (Kind, u32)> {
    src.iter()
        .map(|(p, (k, m))| {
            let mode = match k {
                Kind::Dir => 0o755,
                Kind::Link(_) => 0o777,
                Kind::File(_) if m & 0o111 != 0 => 0o755,
                Kind::File(_) => 0o644,
            };
            let k = match k {
                Kind::Dir => Kind::Dir,
                Kind::File(d) => Kind::File(d.clone()),
                Kind::Link(t) => Kind::Link(t.clone()),
            };
            (p.clone(), (k, mode))
        })
        .collect()
}

#[test]
fn unsquashfs_reads_back_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    make_tree(&src);
    let want = normalized(&snapshot(&src));
    for (comp, level, name) in [
        (SquashfsCompression::Zstd, 15, "zstd"),
        (SquashfsCompression::Xz, 6, "xz"),
        (SquashfsCompression::Gzip, 9, "gzip"),
    ] {
        let opts = SquashfsOptions {
            compression: comp,
            level,
            mtime: MTIME,
            ..SquashfsOptions::default()
        };
        let img = dir.path().join(format!("{name}.sqfs"));
        let report = squash_dir(&src, &img, &opts).unwrap();
        assert_eq!(report.bytes % 4096, 0);
        assert_eq!(fs::metadata(&img).unwrap().len(), report.bytes);

        let stats =
            String::from_utf8_lossy(&run("unsquashfs", &["-s", img.to_str().unwrap()]).stdout)
                .into_owned();
        assert!(stats.contains(&format!("Compression {name}")), "{stats}");
        assert!(stats.contains("Block size 131072"), "{stats}");

        // -lln: numeric owners; every entry root-owned
        let list =
            String::from_utf8_lossy(&run("unsquashfs", &["-lln", img.to_str().unwrap()]).stdout)
                .into_owned();
        let mut listed = Vec::new();
        for line in list.lines().filter(|l| l.contains("squashfs-root")) {
            assert!(
                line.split_whitespace().nth(1) == Some("0/0"),
                "owner in {line}"
            );
            let path = line
                .split("squashfs-root")
                .nth(1)
                .unwrap()
                .trim_start_matches('/');
            let path = path.split(" -> ").next().unwrap();
            if !path.is_empty() {
                listed.push(path.to_string());
            }
        }
        let mut want_paths: Vec<String> = want.keys().cloned().collect();
        want_paths.sort();
        listed.sort();
        assert_eq!(listed, want_paths, "{name}");

        let out = dir.path().join(format!("out-{name}"));
        run(
            "unsquashfs",
            &[
                "-no-progress",
                "-d",
                out.to_str().unwrap(),
                img.to_str().unwrap(),
            ],
        );
        assert_eq!(snapshot(&out), want, "{name}: extracted tree differs");
        let m = fs::metadata(out.join("lib/modules/6.1.0-x/kernel/b.ko")).unwrap();
        assert_eq!(m.mtime(), i64::from(MTIME));
        assert_eq!(
            fs::metadata(out.join("var/empty")).unwrap().mtime(),
            i64::from(MTIME)
        );
    }
}

#[test]
fn rebuilds_are_byte_identical_and_independent_of_source_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2) = (dir.path().join("s1"), dir.path().join("s2"));
    make_tree(&s1);
    make_tree(&s2);
    // different source times and permissions that normalise to the same modes
    fs::set_permissions(s2.join("small.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(s2.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
    let later = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    fs::File::options()
        .write(true)
        .open(s2.join("empty"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    let opts = SquashfsOptions {
        mtime: MTIME,
        ..SquashfsOptions::default()
    };
    let (a, b) = (dir.path().join("a.sqfs"), dir.path().join("b.sqfs"));
    squash_dir(&s1, &a, &opts).unwrap();
    squash_dir(&s2, &b, &opts).unwrap();
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "images differ"
    );
}

#[test]
fn in_memory_tree_and_mksquashfs_agree_on_contents() {
    let dir = tempfile::tempdir().unwrap();
    let mut tree = SquashTree::new();
    tree.add_file("etc/os-release", 0o644, b"ID=basalt\n".to_vec())
        .unwrap();
    tree.add_file("lib/x.ko", 0o644, pattern(400_000, 9))
        .unwrap();
    tree.add_symlink("usr/lib/x.ko", "../../lib/x.ko").unwrap();
    tree.add_dir("run", 0o755).unwrap();
    let ours = dir.path().join("ours.sqfs");
    write_squashfs(
        &tree,
        &ours,
        &SquashfsOptions {
            mtime: MTIME,
            ..SquashfsOptions::default()
        },
    )
    .unwrap();
    let out = dir.path().join("ours-out");
    run(
        "unsquashfs",
        &[
            "-no-progress",
            "-d",
            out.to_str().unwrap(),
            ours.to_str().unwrap(),
        ],
    );
    let ours_tree = snapshot(&out);

    // the same tree through mksquashfs (the reference a benchmark compares against)
    let theirs = dir.path().join("theirs.sqfs");
    run(
        "mksquashfs",
        &[
            out.to_str().unwrap(),
            theirs.to_str().unwrap(),
            "-noappend",
            "-all-root",
            "-comp",
            "zstd",
            "-no-progress",
            "-quiet",
        ],
    );
    let out2 = dir.path().join("theirs-out");
    run(
        "unsquashfs",
        &[
            "-no-progress",
            "-d",
            out2.to_str().unwrap(),
            theirs.to_str().unwrap(),
        ],
    );
    assert_eq!(snapshot(&out2), ours_tree);
    assert_eq!(
        fs::read(out.join("usr/lib/x.ko")).unwrap_or_default(),
        pattern(400_000, 9),
        "symlink resolves"
    );
}

#[test]
fn unsupported_sources_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    run("mkfifo", &[src.join("pipe").to_str().unwrap()]);
    let err = squash_dir(&src, &dir.path().join("x"), &SquashfsOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipe") && err.contains("unsupported file type"),
        "{err}"
    );
    let err = squash_dir(
        &dir.path().join("missing"),
        &dir.path().join("x"),
        &SquashfsOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing"), "{err}");
}
