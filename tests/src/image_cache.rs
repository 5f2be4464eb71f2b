//! Images built once per test run and shared by every test that asks for the same inputs.
//!
//! Many QEMU tests boot the same release of the same board (qemu-arm64 1.0.0 with the test
//! signing key, say). [`build_cached`] builds it once into `target/test-images/<key>/` and
//! gives each caller its own folder: a sparse copy of `disk.img` (tests boot it and write
//! it) and hard links to the other artefacts (`slot.img`, `slot.bundle`, ...), which tests
//! only read.
//!
//! The key is a SHA-256 over everything a build depends on: the board as loaded (tests may
//! change its early modules), version, epoch, kernel source, whether the root carries the
//! container runtime, the bytes of `machined` and of the signing key, and the sources of
//! the image builder (`image/src`, `bootloader/src`, `boards/`, `overlays/`,
//! `scripts/inputs.lock`, `Cargo.lock`). A changed builder gives a new key, never a stale
//! image. Two test processes asking for one key at once are
//! serialised by a file lock on `<key>.lock`; an entry appears by renaming a finished
//! folder, so a build cut short leaves nothing that looks complete. `scripts/test-all`
//! empties the folder at the start of a run, which bounds its size.

use basalt_image::bundle::{SigningKey, generate_signing_key, load_signing_key};
use basalt_image::compose::{BuildOutput, BuildRequest, build, disk_plan};
use basalt_image::inputs::sha256_file;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Marker file of a complete cache entry.
const COMPLETE: &str = ".complete";

/// Folders and files of the repository whose content decides what a build produces.
const BUILDER_SOURCES: [&str; 6] = [
    "image/src",
    "bootloader/src",
    "boards",
    "overlays",
    "scripts/inputs.lock",
    "Cargo.lock",
];

/// The cache folder: `target/test-images` of the workspace.
pub fn cache_dir(repo: &Path) -> PathBuf {
    repo.join("target/test-images")
}

/// Builds `req` (its `out` must not exist) as [`build`] would, taking the artefacts from
/// the cache when the same inputs were built before in this run.
pub fn build_cached(repo: &Path, req: &BuildRequest) -> BuildOutput {
    let dir = cache_dir(repo);
    std::fs::create_dir_all(&dir).expect("create target/test-images");
    let key = cache_key(repo, req);
    let entry = dir.join(&key);
    let lock = File::create(dir.join(format!("{key}.lock"))).expect("create the cache lock");
    lock.lock().expect("lock the image cache entry");
    if !entry.join(COMPLETE).exists() {
        let building = dir.join(format!("{key}.building"));
        if building.exists() {
            std::fs::remove_dir_all(&building).expect("remove an interrupted cache build");
        }
        let mut at = req.clone();
        at.out = building.join("image");
        build(&at).unwrap_or_else(|e| {
            panic!(
                "building the {} image: {e} (run scripts/setup-host)",
                req.board.name
            )
        });
        File::create(building.join(COMPLETE)).expect("mark the cache entry complete");
        std::fs::rename(&building, &entry).expect("move the cache entry into place");
    }
    drop(lock);
    copy_entry(&entry.join("image"), &req.out);
    output_of(req)
}

/// The [`BuildOutput`] of the artefacts now in `req.out`.
fn output_of(req: &BuildRequest) -> BuildOutput {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(req.out.join("manifest.json")).expect("read manifest.json"),
    )
    .expect("manifest.json is JSON");
    let text = |field: &str| {
        manifest[field]
            .as_str()
            .unwrap_or_else(|| panic!("manifest.json has no {field}"))
            .to_string()
    };
    BuildOutput {
        disk_image: req.out.join("disk.img"),
        slot_image: req.out.join("slot.img"),
        root_hash: text("verity_root_hash"),
        plan: disk_plan(&req.board).expect("the board's disk plan"),
        kernel_release: text("kernel_release"),
        extensions: serde_json::from_value(manifest["extensions"].clone())
            .expect("manifest.json lists its extensions"),
    }
}

/// `from`'s artefacts into the new folder `to`: `disk.img` as a sparse copy of its own,
/// everything else hard-linked.
fn copy_entry(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the image folder");
    for item in std::fs::read_dir(from).expect("list the cache entry") {
        let item = item.expect("read the cache entry");
        let (src, dst) = (item.path(), to.join(item.file_name()));
        if item.file_name() == "disk.img" {
            let status = Command::new("cp")
                .args(["--sparse=always"])
                .arg(&src)
                .arg(&dst)
                .status()
                .expect("run cp");
            assert!(status.success(), "cp --sparse=always {}", src.display());
        } else {
            std::fs::hard_link(&src, &dst)
                .unwrap_or_else(|e| panic!("link {} to {}: {e}", src.display(), dst.display()));
        }
    }
}

/// SHA-256 (hex) of everything the build of `req` depends on.
fn cache_key(repo: &Path, req: &BuildRequest) -> String {
    let mut h = Sha256::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update((value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("board", format!("{:?}", req.board).as_bytes());
    field("version", req.version.as_bytes());
    field("epoch", &req.epoch.to_le_bytes());
    field("kernel", format!("{:?}", req.kernel).as_bytes());
    field("containers", &[u8::from(req.includes_containers())]);
    let digest = |p: &Path| sha256_file(p).unwrap_or_else(|e| panic!("hash {}: {e}", p.display()));
    field("machined", digest(&req.machined).as_bytes());
    let key = req.signing_key.as_deref().map(digest).unwrap_or_default();
    field("signing key", key.as_bytes());
    for source in BUILDER_SOURCES {
        for file in files_under(&repo.join(source)) {
            let rel = file.strip_prefix(repo).unwrap_or(&file);
            field(&rel.to_string_lossy(), digest(&file).as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// The files under `path` (itself if a file), sorted.
fn files_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = item.expect("read a source folder").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The signing key of this test run (`target/test-images/signing.pem`, made by the first
/// caller), so that the releases tests build alike are alike and come from the cache.
pub fn run_signing_key(repo: &Path) -> (PathBuf, SigningKey) {
    let dir = cache_dir(repo);
    std::fs::create_dir_all(&dir).expect("create target/test-images");
    let path = dir.join("signing.pem");
    let lock = File::create(dir.join("signing.lock")).expect("create the key lock");
    lock.lock().expect("lock the test signing key");
    let key = if path.exists() {
        load_signing_key(&path).expect("load the test signing key")
    } else {
        generate_signing_key(&path).expect("generate the test signing key")
    };
    (path, key)
}
