//! The pinned board inputs: `scripts/inputs.lock` and the package cache it describes.
//!
//! Each non-comment line of the lock is `package architecture version sha256 [suite]`; the
//! optional suite (another Debian release than the host's, e.g. `trixie`) only tells
//! `scripts/setup-host` where to download the package from.
//! `scripts/setup-host` downloads each package to `cache/debs/` as
//! `<package>_<version with ':' as %3a>_<architecture>.deb`; [`DebCache::open`] finds that
//! file, checks its sha256 against the pin, and only then opens it. A package is looked up
//! for the board's Debian architecture first, then for `all`.

use super::deb::{DebArchive, DebError};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// A problem with the lock file or with a pinned package in the cache.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file could not be read.
    #[error("cannot read inputs lock {path}: {source}")]
    Read {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A lock line is malformed.
    #[error("{source_name} line {line}: {reason}")]
    Syntax {
        /// The lock file.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The package is not pinned for this architecture (nor for `all`).
    #[error("package {package} ({arch}) is not pinned in {source_name}")]
    NotPinned {
        /// The package.
        package: String,
        /// The Debian architecture asked for.
        arch: String,
        /// The lock file.
        source_name: String,
    },
    /// The pinned package file is not in the cache.
    #[error("board input {input} is missing: {} (run scripts/setup-host)", path.display())]
    Missing {
        /// The pin: `package architecture version`.
        input: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// The cached package does not match its pin.
    #[error("board input {input} at {}: sha256 is {actual}, but the lock pins {expected}", path.display())]
    Mismatch {
        /// The pin: `package architecture version`.
        input: String,
        /// The cached file.
        path: PathBuf,
        /// The pinned sha256.
        expected: String,
        /// The file's sha256.
        actual: String,
    },
    /// Reading the cached package failed.
    #[error("cannot read board input {}: {source}", path.display())]
    Io {
        /// The cached file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The cached package is not a readable Debian package.
    #[error(transparent)]
    Deb(#[from] DebError),
}

/// One pinned package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    /// Package name.
    pub package: String,
    /// Debian architecture (`arm64`, `amd64`, `all`).
    pub arch: String,
    /// Exact version (may contain an epoch `1:`).
    pub version: String,
    /// Lower-case hex sha256 of the `.deb`.
    pub sha256: String,
}

impl LockEntry {
    /// The cache file name, as `scripts/setup-host` writes it.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.package,
            self.version.replace(':', "%3a"),
            self.arch
        )
    }
}

/// The parsed `scripts/inputs.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputsLock {
    source_name: String,
    entries: Vec<LockEntry>,
}

impl InputsLock {
    /// Reads and parses the lock file at `path`.
    pub fn load(path: &Path) -> Result<InputsLock, LockError> {
        let text = fs::read_to_string(path).map_err(|source| LockError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        InputsLock::parse(&text, &path.display().to_string())
    }

    /// Parses lock text; `source_name` names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<InputsLock, LockError> {
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| LockError::Syntax {
                source_name: source_name.to_string(),
                line: i + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ([package, arch, version, sha256] | [package, arch, version, sha256, _]) =
                fields[..]
            else {
                return Err(syntax(format!(
                    "expected `package architecture version sha256 [suite]`, found {} fields",
                    fields.len()
                )));
            };
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(syntax(format!("{package}: {sha256:?} is not a sha256")));
            }
            let entry = LockEntry {
                package: package.to_string(),
                arch: arch.to_string(),
                version: version.to_string(),
                sha256: sha256.to_ascii_lowercase(),
            };
            if entries
                .iter()
                .any(|e: &LockEntry| e.package == entry.package && e.arch == entry.arch)
            {
                return Err(syntax(format!("{package} ({arch}) is pinned twice")));
            }
            entries.push(entry);
        }
        Ok(InputsLock {
            source_name: source_name.to_string(),
            entries,
        })
    }

    /// All pins, in file order.
    pub fn entries(&self) -> &[LockEntry] {
        &self.entries
    }

    /// The pin of `package` for Debian architecture `arch`, else for `all`.
    pub fn entry(&self, package: &str, arch: &str) -> Result<&LockEntry, LockError> {
        let find = |a: &str| {
            self.entries
                .iter()
                .find(|e| e.package == package && e.arch == a)
        };
        find(arch)
            .or_else(|| find("all"))
            .ok_or_else(|| LockError::NotPinned {
                package: package.to_string(),
                arch: arch.to_string(),
                source_name: self.source_name.clone(),
            })
    }
}

/// The local package cache (`cache/debs/`) together with the lock that pins it.
#[derive(Debug, Clone)]
pub struct DebCache {
    lock: InputsLock,
    dir: PathBuf,
}

impl DebCache {
    /// A cache directory checked against `lock`.
    pub fn new(lock: InputsLock, dir: impl Into<PathBuf>) -> DebCache {
        DebCache {
            lock,
            dir: dir.into(),
        }
    }

    /// The repository defaults: `<root>/scripts/inputs.lock` and `<root>/cache/debs`
    /// (or `$BASALT_CACHE/debs`, as `scripts/setup-host` uses).
    pub fn from_repo(root: &Path) -> Result<DebCache, LockError> {
        let lock = InputsLock::load(&root.join("scripts/inputs.lock"))?;
        let cache = std::env::var_os("BASALT_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("cache"));
        Ok(DebCache::new(lock, cache.join("debs")))
    }

    /// The lock.
    pub fn lock(&self) -> &InputsLock {
        &self.lock
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the pinned `package` for `arch` lives in the cache (not checked).
    pub fn path_of(&self, package: &str, arch: &str) -> Result<PathBuf, LockError> {
        Ok(self
            .dir
            .join(self.lock.entry(package, arch)?.deb_file_name()))
    }

    /// Finds the pinned `package` for Debian architecture `arch` (or `all`), checks its
    /// sha256 and opens it.
    pub fn open(&self, package: &str, arch: &str) -> Result<DebArchive, LockError> {
        let entry = self.lock.entry(package, arch)?;
        let path = self.dir.join(entry.deb_file_name());
        let input = format!("{} {} {}", entry.package, entry.arch, entry.version);
        if !path.is_file() {
            return Err(LockError::Missing { input, path });
        }
        let actual = sha256_file(&path).map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
        if actual != entry.sha256 {
            return Err(LockError::Mismatch {
                input,
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(DebArchive::open(&path)?)
    }
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    // Disk images are mostly holes: read only their data.
    let mut file = crate::sparse::SparseReader::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "# comment\n\
        linux-image-6.1.0-56-arm64 arm64 6.1.192-2 6f4ed2d1cb9106bc977c2b1960008f175e2eed5740340634b7894e65ef5acc82\n\
        raspi-firmware all 1.20220830+ds-1 0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62\n\
        busybox-static arm64 1:1.35.0-4+deb12u1+b1 732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5\n\
        containerd arm64 1.7.24~ds1-6+deb13u1 4af6b5a85498cc590eaf48d34c5c6c952ddabadae0afd6a9d2931d6a05782bc9 trixie\n";

    #[test]
    fn parses_and_finds_with_all_fallback() {
        let lock = InputsLock::parse(LOCK, "inputs.lock").unwrap();
        assert_eq!(lock.entries().len(), 4);
        assert_eq!(lock.entry("raspi-firmware", "arm64").unwrap().arch, "all");
        let bb = lock.entry("busybox-static", "arm64").unwrap();
        assert_eq!(
            bb.deb_file_name(),
            "busybox-static_1%3a1.35.0-4+deb12u1+b1_arm64.deb"
        );
        let err = lock
            .entry("linux-image-6.1.0-56-arm64", "amd64")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "package linux-image-6.1.0-56-arm64 (amd64) is not pinned in inputs.lock"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = InputsLock::parse("a b c\n", "l").unwrap_err().to_string();
        assert!(err.starts_with("l line 1:"), "{err}");
        let six = format!("a arm64 1 {} trixie x\n", "0".repeat(64));
        let err = InputsLock::parse(&six, "l").unwrap_err().to_string();
        assert!(err.contains("found 6 fields"), "{err}");
        let err = InputsLock::parse("# x\na arm64 1 zz\n", "l")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("not a sha256"),
            "{err}"
        );
    }

    #[test]
    fn missing_and_mismatched_files_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let lock = InputsLock::parse(LOCK, "inputs.lock").unwrap();
        let cache = DebCache::new(lock, dir.path());
        let err = cache
            .open("raspi-firmware", "arm64")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("raspi-firmware all 1.20220830+ds-1 is missing"),
            "{err}"
        );
        assert!(err.contains("run scripts/setup-host"), "{err}");
        let path = cache.path_of("raspi-firmware", "arm64").unwrap();
        fs::write(&path, b"not the package").unwrap();
        let err = cache
            .open("raspi-firmware", "arm64")
            .unwrap_err()
            .to_string();
        assert!(err.contains("raspi-firmware all 1.20220830+ds-1"), "{err}");
        assert!(err.contains("but the lock pins 0094ced4"), "{err}");
    }
}
