//! The `files` of a MachineConfig written to the machine: one function for the node (root
//! `/`) and dev mode (root `<state>/dev-root`), so dev-mode tests exercise the same code.
//!
//! A `create` file is written whole through a temporary file in the same directory that is
//! fsynced, given its mode and renamed over the old one (the directory is fsynced too), so
//! a power cut leaves the old or the new content, never a mix. An `append` file gets the
//! content appended unless it already contains it: machined appends once per content, not
//! on every apply or reconcile round, and a file somebody else changed afterwards keeps the
//! lines it had.
//!
//! On a node, `/etc` and `/var` are in the initramfs's writable root, so files do not
//! survive a reboot by themselves: machined writes them again at every start from the
//! stored configuration. The validator (basalt-config) keeps paths under `/etc/` and
//! `/var/` and away from machined's own directories; [`resolve`] checks again that a path
//! is absolute and has no `..`, because the host must not trust its caller.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// A config file that could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is not absolute or has `..`, `.` or empty parts.
    #[error("{0:?} is not an absolute, normalized path")]
    BadPath(String),
    /// An I/O operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done, e.g. "writing".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FileError + 'a {
    move |source| FileError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `path` (absolute, normalized) under `root`.
pub fn resolve(root: &Path, path: &str) -> Result<PathBuf, FileError> {
    let bad = || FileError::BadPath(path.to_string());
    let p = Path::new(path);
    // Path::components drops `.` parts silently: refuse them on the text.
    if !p.is_absolute()
        || path[1..]
            .split('/')
            .any(|part| matches!(part, "" | "." | ".."))
    {
        return Err(bad());
    }
    let mut out = root.to_path_buf();
    for part in p.components() {
        match part {
            Component::RootDir => {}
            Component::Normal(name) => out.push(name),
            _ => return Err(bad()),
        }
    }
    if out == root {
        return Err(bad());
    }
    Ok(out)
}

/// Writes `content` to `path` under `root` with permission bits `mode`: replaces the file
/// (`append` false) or appends the content unless the file already contains it. Parent
/// directories are created (0755). Returns whether the file changed.
pub fn write(
    root: &Path,
    path: &str,
    content: &str,
    mode: u32,
    append: bool,
) -> Result<bool, FileError> {
    let target = resolve(root, path)?;
    let dir = target.parent().unwrap_or(root);
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    if append {
        let current = match std::fs::read(&target) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io("reading", &target)(e)),
        };
        if contains(&current, content.as_bytes()) {
            return Ok(false);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(mode)
            .open(&target)
            .map_err(io("opening", &target))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("appending to", &target))?;
        return Ok(true);
    }
    if let (Ok(current), Ok(meta)) = (std::fs::read(&target), std::fs::metadata(&target))
        && current == content.as_bytes()
        && meta.permissions().mode() & 0o7777 == mode
    {
        return Ok(false);
    }
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.machined-tmp"));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io("creating", &tmp))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(mode)))
            .and_then(|()| file.sync_all())
            .map_err(io("writing", &tmp))?;
        std::fs::rename(&tmp, &target).map_err(io("renaming onto", &target))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing", dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// The content of `path` under `root` (lossy UTF-8) and its permission bits; `None` when it
/// does not exist.
pub fn read(root: &Path, path: &str) -> Result<Option<(String, u32)>, FileError> {
    let target = resolve(root, path)?;
    match std::fs::read(&target) {
        Ok(data) => {
            let meta = std::fs::metadata(&target).map_err(io("reading", &target))?;
            Ok(Some((
                String::from_utf8_lossy(&data).into_owned(),
                meta.permissions().mode() & 0o7777,
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("reading", &target)(e)),
    }
}

/// Whether `haystack` contains `needle` (an empty needle is always contained).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/r");
        assert_eq!(
            resolve(root, "/etc/a.conf").unwrap(),
            Path::new("/r/etc/a.conf")
        );
        for bad in ["etc/a", "/etc/../x", "/etc/./x", "/", "/etc//x", "/etc/"] {
            assert!(resolve(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn create_replaces_atomically_with_mode_and_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), "/etc/app/a.conf", "one\n", 0o600, false).unwrap());
        let (text, mode) = read(dir.path(), "/etc/app/a.conf").unwrap().unwrap();
        assert_eq!((text.as_str(), mode), ("one\n", 0o600));
        assert!(!write(dir.path(), "/etc/app/a.conf", "one\n", 0o600, false).unwrap());
        assert!(write(dir.path(), "/etc/app/a.conf", "one\n", 0o644, false).unwrap());
        assert!(write(dir.path(), "/etc/app/a.conf", "two\n", 0o644, false).unwrap());
        assert_eq!(
            read(dir.path(), "/etc/app/a.conf").unwrap().unwrap(),
            ("two\n".to_string(), 0o644)
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("etc/app"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.conf"], "no temporary file left behind");
        assert_eq!(read(dir.path(), "/etc/none").unwrap(), None);
    }

    #[test]
    fn append_happens_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("var/log.txt");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "mine\n").unwrap();
        assert!(write(dir.path(), "/var/log.txt", "added\n", 0o644, true).unwrap());
        assert!(!write(dir.path(), "/var/log.txt", "added\n", 0o644, true).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "mine\nadded\n");
    }
}
