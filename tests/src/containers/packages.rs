//! Pinned Debian packages for container tests: containerd and busybox, unpacked once below
//! `target/`.

use crate::repo;
use basalt_image::inputs::{DebArchive, Extract, sha256_file};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
/// The modification time of every entry of the layers [`OciImage`] writes, and the
/// `created` time of its config (2023-11-14T22:13:20Z, the epoch the test images use).
pub const IMAGE_EPOCH: u64 = 1_700_000_000;

/// The Debian (and OCI/Go) name of an architecture: `amd64` or `arm64`; the kernel's names
/// `x86_64` and `aarch64` are accepted too.
pub fn debian_arch(arch: &str) -> &'static str {
    match arch {
        "amd64" | "x86_64" => "amd64",
        "arm64" | "aarch64" => "arm64",
        _ => panic!("unsupported architecture {arch:?} (amd64/x86_64 or arm64/aarch64)"),
    }
}

/// A pin of `scripts/inputs.lock`: the cached `.deb` and its sha256.
struct Pin {
    deb: PathBuf,
    sha256: String,
}

/// The pin of `package` for Debian architecture `arch`. The lock is read here (lines of
/// `package architecture version sha256 [suite]`), so that the optional suite column is
/// understood whatever the image crate's reader accepts.
fn pinned(package: &str, arch: &str) -> Pin {
    let root = repo();
    let lock_path = root.join("scripts/inputs.lock");
    let lock = fs::read_to_string(&lock_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", lock_path.display()));
    let cache = std::env::var_os("BASALT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("cache"))
        .join("debs");
    for line in lock.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let ([p, a, version, sha256] | [p, a, version, sha256, _]) = fields[..] else {
            panic!("{}: malformed line {line:?}", lock_path.display());
        };
        if p == package && a == arch {
            return Pin {
                deb: cache.join(format!("{p}_{}_{a}.deb", version.replace(':', "%3a"))),
                sha256: sha256.to_string(),
            };
        }
    }
    panic!(
        "{package} ({arch}) is not pinned in {}",
        lock_path.display()
    )
}

/// Unpacks `files` (`(path in the package, name)`) of the pinned `package` for `arch` into
/// the folder `dest` (below `target/`) once: a finished folder carries the package's sha256
/// in `.deb-sha256` and appears by an atomic rename; test processes racing for it are
/// serialised by a file lock next to it, and a folder from another pin is replaced.
fn unpack_pinned(package: &str, arch: &str, files: &[(&str, &str)], dest: &Path) -> PathBuf {
    const STAMP: &str = ".deb-sha256";
    let pin = pinned(package, arch);
    let current = |dir: &Path| {
        fs::read_to_string(dir.join(STAMP)).is_ok_and(|s| s.trim() == pin.sha256)
            && files.iter().all(|(_, name)| dir.join(name).is_file())
    };
    if current(dest) {
        return dest.to_path_buf();
    }
    let parent = dest.parent().expect("the destination has a parent");
    fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    let dest_name = dest
        .file_name()
        .expect("named destination")
        .to_string_lossy();
    let lock_path = parent.join(format!("{dest_name}.lock"));
    let lock =
        File::create(&lock_path).unwrap_or_else(|e| panic!("create {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    if current(dest) {
        return dest.to_path_buf();
    }
    assert!(
        pin.deb.is_file(),
        "{package} ({arch}) is missing: {} (run scripts/setup-host)",
        pin.deb.display()
    );
    let actual =
        sha256_file(&pin.deb).unwrap_or_else(|e| panic!("read {}: {e}", pin.deb.display()));
    assert_eq!(
        actual,
        pin.sha256,
        "{} does not match its pin in scripts/inputs.lock (run scripts/setup-host)",
        pin.deb.display()
    );
    // fixed names: the lock is held, and a run cut short leaves nothing that looks complete
    let tmp = parent.join(format!("{dest_name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).unwrap_or_else(|e| panic!("remove {}: {e}", tmp.display()));
    }
    let selections: Vec<Extract> = files
        .iter()
        .map(|(path, name)| Extract::file(*name, path, *name))
        .collect();
    DebArchive::open(&pin.deb)
        .and_then(|deb| deb.extract(&selections, &tmp))
        .unwrap_or_else(|e| panic!("unpack {}: {e}", pin.deb.display()));
    fs::write(tmp.join(STAMP), format!("{}\n", pin.sha256))
        .unwrap_or_else(|e| panic!("write the stamp in {}: {e}", tmp.display()));
    if dest.exists() {
        // another pin's files: move them aside first (a directory cannot replace a
        // non-empty one in a rename)
        let old = parent.join(format!("{dest_name}.old"));
        if old.exists() {
            fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
        }
        fs::rename(dest, &old).unwrap_or_else(|e| panic!("move {} aside: {e}", dest.display()));
        fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("remove {}: {e}", old.display()));
    }
    fs::rename(&tmp, dest).unwrap_or_else(|e| panic!("rename to {}: {e}", dest.display()));
    dest.to_path_buf()
}

/// A folder with `containerd`, `containerd-shim-runc-v2` (which containerd finds on its
/// `PATH`) and `ctr` (a reference client for tests) from the pinned Debian 13 `containerd`
/// package for Debian architecture `arch` (`amd64` or `arm64`; `x86_64`/`aarch64` too):
/// `target/containerd/<arch>/bin`, unpacked once.
pub fn containerd_bin_dir(arch: &str) -> PathBuf {
    let arch = debian_arch(arch);
    unpack_pinned(
        "containerd",
        arch,
        &[
            ("usr/bin/containerd", "containerd"),
            ("usr/bin/containerd-shim-runc-v2", "containerd-shim-runc-v2"),
            ("usr/bin/ctr", "ctr"),
        ],
        &repo().join(format!("target/containerd/{arch}/bin")),
    )
}

/// A statically linked busybox for `arch`: on amd64 the host's `/bin/busybox` (package
/// `busybox-static`), on arm64 the one of the pinned `busybox-static` arm64 package,
/// unpacked once into `target/busybox/arm64/bin/busybox`.
pub fn busybox_static(arch: &str) -> PathBuf {
    match debian_arch(arch) {
        "amd64" => {
            let bb = PathBuf::from("/bin/busybox");
            let out = Command::new("file")
                .arg("-L")
                .arg(&bb)
                .output()
                .expect("run file(1)");
            let what = String::from_utf8_lossy(&out.stdout);
            assert!(
                bb.is_file() && what.contains("statically linked"),
                "/bin/busybox is missing or not static ({}): install busybox-static with scripts/setup-host",
                what.trim()
            );
            bb
        }
        _ => unpack_pinned(
            "busybox-static",
            "arm64",
            &[("bin/busybox", "busybox")],
            &repo().join("target/busybox/arm64/bin"),
        )
        .join("busybox"),
    }
}
