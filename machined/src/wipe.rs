//! Wiping a partition's contents for Reset.
//!
//! STATE and DATA are mounted filesystems; a reset removes everything in them instead of
//! re-formatting (no `mkfs` on the node, and the mounts stay valid for the reboot that
//! follows). The walk never leaves the filesystem it starts on: a directory on another
//! device (a mount inside STATE or DATA) is left alone and reported, and symbolic links
//! are removed, never followed. The result is synced before the reboot.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A failed wipe.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    /// Reading or removing an entry failed.
    #[error("wiping {path}: {source}")]
    Io {
        /// The entry.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// What a wipe did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wiped {
    /// Entries removed (files, links, directories).
    pub removed: u64,
    /// Directories left alone because another filesystem is mounted there.
    pub skipped_mounts: Vec<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WipeError + '_ {
    move |source| WipeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Removes everything inside `dir` (which stays), on `dir`'s filesystem only, and syncs.
pub fn empty_dir(dir: &Path) -> Result<Wiped, WipeError> {
    let dev = std::fs::symlink_metadata(dir).map_err(io(dir))?.dev();
    let mut wiped = Wiped::default();
    remove_children(dir, dev, &mut wiped)?;
    rustix::fs::sync();
    Ok(wiped)
}

fn remove_children(dir: &Path, dev: u64, wiped: &mut Wiped) -> Result<(), WipeError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        if meta.is_dir() {
            if meta.dev() != dev {
                wiped.skipped_mounts.push(path);
                continue;
            }
            let before = wiped.skipped_mounts.len();
            remove_children(&path, dev, wiped)?;
            if wiped.skipped_mounts.len() == before {
                std::fs::remove_dir(&path).map_err(io(&path))?;
                wiped.removed += 1;
            }
        } else {
            std::fs::remove_file(&path).map_err(io(&path))?;
            wiped.removed += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empties_a_tree_without_following_links() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("config/history")).unwrap();
        std::fs::write(d.join("config/history/1.yaml"), "a").unwrap();
        std::fs::write(d.join("audit.log"), "b").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("link")).unwrap();
        let wiped = empty_dir(d).unwrap();
        assert_eq!(wiped.removed, 5);
        assert!(wiped.skipped_mounts.is_empty());
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0);
        assert!(d.exists());
        assert!(
            outside.path().join("keep").exists(),
            "a link is not followed"
        );
        let e = empty_dir(&d.join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
