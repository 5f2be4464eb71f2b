//! The early kernel modules: what the initramfs carries so that the disk, device-mapper,
//! dm-verity, squashfs, vfat and ext4 work before the root filesystem is there.
//!
//! `basalt-image` writes `/lib/modules/<release>/basalt-early-modules`: one module path per
//! line, relative to that folder, in load order (dependencies first), uncompressed `.ko`
//! files. Each is loaded with `finit_module(2)`. `EEXIST` (already loaded, or built in under
//! another name) is fine; any other failure is reported and the next module is tried: a
//! missing optional driver (say virtio-rng) must not stop the boot, and a missing essential
//! one stops it later with a precise error (no disk, no dm-verity target).

use std::io;
use std::path::{Path, PathBuf};

/// The load list's file name inside `/lib/modules/<release>/`.
pub const LIST_FILE: &str = "basalt-early-modules";

/// A line of the load list that is not a clean relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{LIST_FILE} line {line}: {path:?} is not a relative path inside the modules folder")]
pub struct ListError {
    /// 1-based line number.
    pub line: usize,
    /// The offending entry.
    pub path: String,
}

/// Parses the load list: one path per line; blank lines and `#` comments are skipped.
pub fn parse_list(text: &str) -> Result<Vec<String>, ListError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let clean = Path::new(entry)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !clean {
            return Err(ListError {
                line: i + 1,
                path: entry.to_string(),
            });
        }
        out.push(entry.to_string());
    }
    Ok(out)
}

/// Loads one module file.
pub trait ModuleLoader {
    /// Loads the module at `path`; the error carries the kernel's errno.
    fn load(&self, path: &Path) -> io::Result<()>;
}

/// `finit_module(2)` with no parameters.
#[derive(Debug, Default, Clone, Copy)]
pub struct FinitModule;

impl ModuleLoader for FinitModule {
    fn load(&self, path: &Path) -> io::Result<()> {
        let file = std::fs::File::open(path)?;
        rustix::system::finit_module(&file, c"", 0)?;
        Ok(())
    }
}

/// What loading the list did.
#[derive(Debug, Default)]
pub struct Report {
    /// Loaded now.
    pub loaded: Vec<String>,
    /// Already present (`EEXIST`).
    pub already: Vec<String>,
    /// Failed, with the error.
    pub failed: Vec<(String, io::Error)>,
}

/// Loads `list` (paths relative to `dir`) in order, continuing past failures.
pub fn load_all(loader: &dyn ModuleLoader, dir: &Path, list: &[String]) -> Report {
    let mut report = Report::default();
    for entry in list {
        match loader.load(&dir.join(entry)) {
            Ok(()) => report.loaded.push(entry.clone()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {
                report.already.push(entry.clone())
            }
            Err(e) => report.failed.push((entry.clone(), e)),
        }
    }
    report
}

/// The modules folder for the running kernel under `root`: `lib/modules/<uname -r>`, or the
/// only folder in `lib/modules` when that one is missing (a kernel whose release string
/// differs from the one the image was built for is reported by the module loads failing).
pub fn modules_dir(root: &Path, release: &str) -> Option<PathBuf> {
    let base = root.join("lib/modules");
    let exact = base.join(release);
    if exact.is_dir() {
        return Some(exact);
    }
    let mut dirs = std::fs::read_dir(&base)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir());
    match (dirs.next(), dirs.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn list_parsing() {
        let text = "kernel/drivers/block/virtio_blk.ko\n\n# comment\n  kernel/fs/fat/vfat.ko  \n";
        assert_eq!(
            parse_list(text).unwrap(),
            [
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/fat/vfat.ko"
            ]
        );
        assert_eq!(parse_list("").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_list("a.ko\n/abs/b.ko\n"),
            Err(ListError {
                line: 2,
                path: "/abs/b.ko".into()
            })
        );
        assert!(parse_list("kernel/../../etc/x.ko").is_err());
        assert!(parse_list("./a.ko").is_err());
    }

    struct Fake {
        calls: Mutex<Vec<PathBuf>>,
    }

    impl ModuleLoader for Fake {
        fn load(&self, path: &Path) -> io::Result<()> {
            self.calls.lock().unwrap().push(path.to_path_buf());
            match path.file_name().and_then(|n| n.to_str()) {
                Some("dup.ko") => Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::EXIST.raw_os_error(),
                )),
                Some("bad.ko") => Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOEXEC.raw_os_error(),
                )),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn loads_in_order_and_continues_past_failures() {
        let fake = Fake {
            calls: Mutex::new(Vec::new()),
        };
        let list: Vec<String> = ["a.ko", "dup.ko", "bad.ko", "b.ko"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = load_all(&fake, Path::new("/lib/modules/6.1"), &list);
        assert_eq!(r.loaded, ["a.ko", "b.ko"]);
        assert_eq!(r.already, ["dup.ko"]);
        assert_eq!(r.failed.len(), 1);
        assert_eq!(r.failed[0].0, "bad.ko");
        let calls = fake.calls.lock().unwrap();
        assert_eq!(calls.len(), 4);
        assert_eq!(calls[0], Path::new("/lib/modules/6.1/a.ko"));
        assert_eq!(calls[3], Path::new("/lib/modules/6.1/b.ko"));
    }

    #[test]
    fn modules_dir_falls_back_to_the_only_folder() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(modules_dir(t.path(), "6.1.0-56-arm64"), None);
        std::fs::create_dir_all(t.path().join("lib/modules/6.1.0-56-arm64")).unwrap();
        assert_eq!(
            modules_dir(t.path(), "6.1.0-56-arm64").unwrap(),
            t.path().join("lib/modules/6.1.0-56-arm64")
        );
        assert_eq!(
            modules_dir(t.path(), "other").unwrap(),
            t.path().join("lib/modules/6.1.0-56-arm64")
        );
        std::fs::create_dir_all(t.path().join("lib/modules/7.0")).unwrap();
        assert_eq!(modules_dir(t.path(), "other"), None);
    }
}
