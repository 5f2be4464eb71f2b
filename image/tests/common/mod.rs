//! Helpers shared by the image build tests (`compose_*.rs`): building a board from the
//! pinned inputs with a stand-in `/init`, running reference tools, and reading partitions
//! and FAT files back with mtools. Each test file uses a subset, hence `dead_code`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use basalt_boards::Board;
use basalt_image::compose::overlay::UserOverlays;
use basalt_image::compose::{BuildOutput, BuildRequest, build_overlaid};
use basalt_image::inputs::{DebCache, KernelSource};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `tool`, panics with its output unless it succeeds, returns its stdout.
pub fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} not found ({e}): run scripts/setup-host"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The request for `board` into `dir/name`, with a stand-in `/init` (these tests check the
/// image's structure, not machined), a signing key in `dir` and without the container
/// runtime (`compose_build` builds the one image that carries it).
pub fn request(dir: &Path, board: &str, name: &str) -> BuildRequest {
    let init = dir.join("init");
    std::fs::write(&init, b"#!/bin/false\n").unwrap();
    let key = dir.join("signing.pem");
    if !key.exists() {
        basalt_image::bundle::generate_signing_key(&key).unwrap();
    }
    BuildRequest {
        board: Board::load(board).unwrap(),
        version: "1.2.3".into(),
        out: dir.join(name),
        machined: init,
        kernel: KernelSource::Package,
        cache: DebCache::from_repo(&repo()).expect("inputs.lock: run scripts/setup-host"),
        epoch: 1_700_000_000,
        signing_key: Some(key),
        containers: false,
    }
}

/// Builds `board` into `dir/name` with the given user overlays.
pub fn build_board(dir: &Path, board: &str, name: &str, overlays: &UserOverlays) -> BuildOutput {
    build_overlaid(&request(dir, board, name), overlays)
        .unwrap_or_else(|e| panic!("{board} build failed: {e}"))
}

/// Copies `len` bytes at `offset` of `disk` into their own file.
pub fn extract(disk: &Path, offset: u64, len: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

/// Copies `path` of the FAT image `fat` to `to` with mtools.
pub fn mcopy(fat: &Path, path: &str, to: &Path) {
    run(
        "mcopy",
        &[
            "-n",
            "-i",
            fat.to_str().unwrap(),
            &format!("::{path}"),
            to.to_str().unwrap(),
        ],
    );
}

/// `path` of the FAT image `fat`, read with mtools (through a scratch file in `dir`).
pub fn mread(dir: &Path, fat: &Path, path: &str) -> Vec<u8> {
    let to = dir.join("mcopy.out");
    let _ = std::fs::remove_file(&to);
    mcopy(fat, path, &to);
    std::fs::read(&to).unwrap()
}

/// File names in `dir` of the FAT image `fat` (long names), listed with mtools.
pub fn mls(fat: &Path, dir: &str) -> Vec<String> {
    run(
        "mdir",
        &["-b", "-i", fat.to_str().unwrap(), &format!("::{dir}")],
    )
    .lines()
    .filter_map(|l| l.trim().rsplit('/').next().map(str::to_string))
    .filter(|n| !n.is_empty())
    .collect()
}
