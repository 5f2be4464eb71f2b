//! The container runtime extension of the root filesystem, from the pinned Debian 13
//! packages in cache/debs (scripts/setup-host): the tree for arm64 and amd64 (paths, links,
//! modes, ELF machine, the manifest's report), its checks (a missing path, a dangling link,
//! a package of the wrong architecture), and who turns it off (the board, the build).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use basalt_boards::{Arch, Board};
use basalt_image::compose::extension::{
    CONTAINERS, PackagePaths, add_containers, add_extension, containers_selection,
};
use basalt_image::inputs::elf::{self, EM_AARCH64, EM_X86_64};
use basalt_image::inputs::{DebCache, InputsLock, sha256_file};
use basalt_image::squashfs::{SquashTree, TreeEntry};

fn cache() -> DebCache {
    DebCache::from_repo(&common::repo()).expect("inputs.lock: run scripts/setup-host")
}

/// The files and links of `tree` (directories left out): path -> (perm or link target).
fn leaves(tree: &SquashTree) -> BTreeMap<String, String> {
    tree.paths()
        .filter_map(|p| match tree.entry(p)? {
            TreeEntry::Dir { .. } => None,
            TreeEntry::File { perm, .. } => Some((p.to_string(), format!("{perm:o}"))),
            TreeEntry::Symlink { target } => Some((p.to_string(), format!("-> {target}"))),
        })
        .collect()
}

/// The first 64 bytes (the ELF header) of the file `path` of `tree`.
fn head_of(tree: &SquashTree, path: &str) -> Vec<u8> {
    let mut head = Vec::new();
    std::fs::File::open(source_of(tree, path))
        .unwrap()
        .take(64)
        .read_to_end(&mut head)
        .unwrap();
    head
}

fn source_of(tree: &SquashTree, path: &str) -> std::path::PathBuf {
    match tree.entry(path) {
        Some(TreeEntry::File {
            source: Some(s), ..
        }) => s.to_path_buf(),
        other => panic!("{path} is not a file from disk: {other:?}"),
    }
}

fn check_arch(arch: Arch, triplet: &str, loader: &str, loader_link: (&str, &str), em: u16) {
    let work = tempfile::tempdir().unwrap();
    let cache = cache();
    let mut tree = SquashTree::new();
    let report = add_containers(&mut tree, arch, &cache, work.path()).unwrap();
    let lib = |n: &str| format!("usr/lib/{triplet}/{n}");
    let want: BTreeMap<String, String> = [
        ("usr/bin/containerd".to_string(), "755".to_string()),
        ("usr/bin/containerd-shim-runc-v2".into(), "755".into()),
        ("usr/sbin/runc".into(), "755".into()),
        (lib("libseccomp.so.2"), "-> libseccomp.so.2.6.0".into()),
        (lib("libseccomp.so.2.6.0"), "644".into()),
        (lib(loader), "755".into()),
        (lib("libc.so.6"), "755".into()),
        (loader_link.0.into(), format!("-> {}", loader_link.1)),
    ]
    .into_iter()
    .collect();
    assert_eq!(leaves(&tree), want, "{arch:?}");

    for path in ["usr/bin/containerd", "usr/sbin/runc", &lib("libc.so.6")] {
        assert_eq!(
            elf::machine(&head_of(&tree, path)),
            Ok(em),
            "{path} ({arch:?})"
        );
    }

    let debian = arch.debian_arch();
    assert_eq!(report.name, CONTAINERS);
    let names: Vec<&str> = report.packages.iter().map(|p| p.package.as_str()).collect();
    assert_eq!(names, ["containerd", "runc", "libseccomp2", "libc6"]);
    for p in &report.packages {
        let pin = cache.lock().entry(&p.package, debian).unwrap();
        assert_eq!((&p.version, &p.arch), (&pin.version, &pin.arch));
        assert_eq!(p.arch, debian);
    }
    assert_eq!(report.files, 8);
    let bytes: u64 = want
        .iter()
        .filter(|(_, v)| !v.starts_with("->"))
        .map(|(p, _)| source_of(&tree, p).metadata().unwrap().len())
        .sum();
    assert_eq!(report.bytes, bytes);
    assert!(bytes > 50 << 20, "{bytes} bytes: containerd alone is more");
}

#[test]
fn containers_tree_for_arm64_and_amd64_from_the_pinned_packages() {
    check_arch(
        Arch::Aarch64,
        "aarch64-linux-gnu",
        "ld-linux-aarch64.so.1",
        (
            "usr/lib/ld-linux-aarch64.so.1",
            "aarch64-linux-gnu/ld-linux-aarch64.so.1",
        ),
        EM_AARCH64,
    );
    check_arch(
        Arch::X86_64,
        "x86_64-linux-gnu",
        "ld-linux-x86-64.so.2",
        (
            "usr/lib64/ld-linux-x86-64.so.2",
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ),
        EM_X86_64,
    );
}

#[test]
fn selection_takes_only_the_runtime() {
    let all: Vec<String> = containers_selection(Arch::Aarch64)
        .into_iter()
        .flat_map(|p| p.paths)
        .collect();
    for left_out in [
        "usr/bin/ctr",
        "usr/bin/containerd-shim",
        "usr/bin/containerd-shim-runc-v1",
        "usr/bin/runc",
    ] {
        assert!(!all.iter().any(|p| p == left_out), "{left_out} is taken");
    }
}

fn libseccomp(paths: &[&str]) -> [PackagePaths; 1] {
    [PackagePaths {
        package: "libseccomp2",
        paths: paths.iter().map(|p| p.to_string()).collect(),
    }]
}

#[test]
fn a_missing_path_or_a_dangling_link_names_the_package_and_path() {
    let work = tempfile::tempdir().unwrap();
    let cache = cache();
    let missing = libseccomp(&[
        "usr/lib/aarch64-linux-gnu/libseccomp.so.2.6.0",
        "usr/lib/aarch64-linux-gnu/libseccomp.so.3",
    ]);
    let mut tree = SquashTree::new();
    let err = add_extension(
        &mut tree,
        "test",
        Arch::Aarch64,
        &missing,
        &cache,
        work.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("package libseccomp2")
            && err.contains("usr/lib/aarch64-linux-gnu/libseccomp.so.3")
            && !err.contains("so.2.6.0,"),
        "{err}"
    );
    let dangling = libseccomp(&["usr/lib/aarch64-linux-gnu/libseccomp.so.2"]);
    let mut tree = SquashTree::new();
    let err = add_extension(
        &mut tree,
        "test",
        Arch::Aarch64,
        &dangling,
        &cache,
        work.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("link usr/lib/aarch64-linux-gnu/libseccomp.so.2 (package libseccomp2)")
            && err.contains("libseccomp.so.2.6.0"),
        "{err}"
    );
}

#[test]
fn a_package_for_another_machine_is_refused() {
    // The arm64 libseccomp2 pinned as if it were the amd64 one.
    let dir = tempfile::tempdir().unwrap();
    let real = cache().path_of("libseccomp2", "arm64").unwrap();
    let lock = InputsLock::parse(
        &format!(
            "libseccomp2 amd64 2.6.0-2 {}\n",
            sha256_file(&real).unwrap()
        ),
        "test.lock",
    )
    .unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir(&debs).unwrap();
    std::fs::copy(&real, debs.join("libseccomp2_2.6.0-2_amd64.deb")).unwrap();
    let cache = DebCache::new(lock, &debs);
    let mut tree = SquashTree::new();
    let err = add_extension(
        &mut tree,
        "test",
        Arch::X86_64,
        &libseccomp(&["usr/lib/aarch64-linux-gnu/libseccomp.so.2.6.0"]),
        &cache,
        &dir.path().join("work"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("package libseccomp2")
            && err.contains("machine 183")
            && err.contains("not an ELF file for x86_64"),
        "{err}"
    );
}

fn request_for(dir: &Path, board: Board, containers: bool) -> bool {
    let mut req = common::request(dir, "qemu-arm64", "out");
    req.board = board;
    req.containers = containers;
    req.includes_containers()
}

#[test]
fn the_board_or_the_build_leaves_the_containers_out() {
    let dir = tempfile::tempdir().unwrap();
    let board = Board::load("qemu-arm64").unwrap();
    assert!(request_for(dir.path(), board.clone(), true));
    assert!(!request_for(dir.path(), board, false), "--no-containers");
    let text = Board::embedded_source("qemu-arm64").unwrap();
    let off = Board::from_toml(
        &format!("{text}\n[extensions]\ncontainers = false\n"),
        "qemu-arm64.toml",
    )
    .unwrap();
    assert!(!request_for(dir.path(), off.clone(), true), "board says no");
    assert!(!request_for(dir.path(), off, false));
}
