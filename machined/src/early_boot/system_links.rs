//! The `system-links` stage: the verified root is mounted at `/system`, while machined keeps
//! running from the initramfs root. Programs of the system image's extensions (containerd,
//! runc) are ordinary dynamically linked Debian binaries that expect `/usr` and the dynamic
//! loader at its standard path, so the initramfs root gets symbolic links into `/system`:
//! `/usr` → `/system/usr`, and the loader path the binaries name (`PT_INTERP`) → the
//! loader under `/usr`. Nothing is linked when the root has no `/usr` (an image built
//! without extensions).

use std::path::{Path, PathBuf};

/// The standard dynamic loader path of an architecture and where the root's `/usr` has it.
fn loader(arch: &str) -> Option<(&'static str, &'static str)> {
    match arch {
        "aarch64" => Some((
            "lib/ld-linux-aarch64.so.1",
            "/usr/lib/ld-linux-aarch64.so.1",
        )),
        "x86_64" => Some((
            "lib64/ld-linux-x86-64.so.2",
            "/usr/lib64/ld-linux-x86-64.so.2",
        )),
        _ => None,
    }
}

/// The links to create in `root` (the initramfs root) for a verified root at `system`
/// whose `/usr` exists: (link path, target).
pub fn links(root: &Path, system: &Path, arch: &str) -> Vec<(PathBuf, PathBuf)> {
    let mut out = vec![(root.join("usr"), system.join("usr"))];
    if let Some((path, target)) = loader(arch) {
        out.push((root.join(path), PathBuf::from(target)));
    }
    out
}

/// Why a link could not be made.
#[derive(Debug, thiserror::Error)]
#[error("linking {link} to {target}: {source}")]
pub struct LinkError {
    /// The link.
    pub link: PathBuf,
    /// Its target.
    pub target: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

/// Creates the [`links`] when `system/usr` exists; returns the links made (none without
/// `/usr` in the root). An existing link to the same target is kept.
pub fn apply(root: &Path, system: &Path) -> Result<Vec<PathBuf>, LinkError> {
    if !system.join("usr").is_dir() {
        return Ok(Vec::new());
    }
    let mut made = Vec::new();
    for (link, target) in links(root, system, std::env::consts::ARCH) {
        let err = |source| LinkError {
            link: link.clone(),
            target: target.clone(),
            source,
        };
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        std::os::unix::fs::symlink(&target, &link).map_err(err)?;
        made.push(link);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_usr_and_the_loader_only_when_the_root_has_usr() {
        let l = links(Path::new("/"), Path::new("/system"), "aarch64");
        assert_eq!(
            l,
            [
                (PathBuf::from("/usr"), PathBuf::from("/system/usr")),
                (
                    PathBuf::from("/lib/ld-linux-aarch64.so.1"),
                    PathBuf::from("/usr/lib/ld-linux-aarch64.so.1")
                ),
            ]
        );
        let root = tempfile::tempdir().unwrap();
        let system = tempfile::tempdir().unwrap();
        assert!(apply(root.path(), system.path()).unwrap().is_empty());
        std::fs::create_dir(system.path().join("usr")).unwrap();
        let made = apply(root.path(), system.path()).unwrap();
        assert_eq!(made.len(), 2);
        assert_eq!(
            std::fs::read_link(root.path().join("usr")).unwrap(),
            system.path().join("usr")
        );
        assert!(
            apply(root.path(), system.path()).unwrap().is_empty(),
            "idempotent"
        );
    }
}
