//! First-boot config injection: the config is validated with `basalt_config` before any
//! byte is written, then a fresh ext4 filesystem for the STATE partition is built with
//! `mke2fs -t ext4 -d DIR` holding exactly what machined's `ConfigStore` reads
//! (`machined/src/state.rs`):
//!
//! ```text
//! config/               0700
//! config/history/       0700
//! config/current.yaml   0600  the config, as given
//! config/history/000001.yaml  0600  the same bytes (version 1)
//! ```
//!
//! Why a new filesystem rather than editing the image's with `debugfs -w`: STATE is empty
//! in a freshly composed image, `mke2fs -d` is one well-tested step that sets modes and
//! ownership from a real directory, and the result is written only through its mapped
//! extents (a few MiB), so it is as fast as patching. The label stays `STATE` and the
//! UUID is the image's (read from its superblock while streaming), with the same options
//! as `basalt-image` uses (4 KiB blocks, lazy inode table init).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The label of the partition that receives the config.
pub const STATE_LABEL: &str = "STATE";

/// A config that cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum FirstBootError {
    /// The config file cannot be read.
    #[error("failed to read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config is not valid.
    #[error("config {path} is not valid:\n{details}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every error, one per line.
        details: String,
    },
    /// Building the STATE filesystem failed.
    #[error("failed to build the STATE filesystem in {path}: {reason}")]
    Build {
        /// The work directory or image.
        path: PathBuf,
        /// The cause.
        reason: String,
    },
}

/// A validated config, ready to inject.
#[derive(Debug, Clone)]
pub struct FirstBootConfig {
    /// The file it came from.
    pub path: PathBuf,
    /// Its bytes, stored unchanged.
    pub yaml: Vec<u8>,
    /// Validation warnings (shown, not fatal).
    pub warnings: Vec<String>,
}

/// Reads and validates `path` with machined's schema.
pub fn load(path: &Path) -> Result<FirstBootConfig, FirstBootError> {
    let yaml = std::fs::read(path).map_err(|source| FirstBootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |details: String| FirstBootError::Invalid {
        path: path.to_path_buf(),
        details,
    };
    let text = String::from_utf8(yaml.clone()).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let config = basalt_config::Config::from_yaml(&text).map_err(|e| invalid(e.to_string()))?;
    let v = config.validate();
    if !v.is_ok() {
        let details = v
            .errors
            .iter()
            .map(|i| format!("  error: {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(invalid(details));
    }
    Ok(FirstBootConfig {
        path: path.to_path_buf(),
        yaml,
        warnings: v.warnings.iter().map(|w| w.to_string()).collect(),
    })
}

/// Builds the STATE filesystem image of `size` bytes in `work` and returns its path.
pub fn build_state(
    config: &FirstBootConfig,
    size: u64,
    uuid: Option<&str>,
    work: &Path,
) -> Result<PathBuf, FirstBootError> {
    let fail = |path: &Path, reason: String| FirstBootError::Build {
        path: path.to_path_buf(),
        reason,
    };
    let root = work.join("state-root");
    let hist = root.join("config/history");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&hist)
        .map_err(|e| fail(&root, e.to_string()))?;
    for dir in [root.join("config"), hist.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| fail(&dir, e.to_string()))?;
    }
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| fail(&root, e.to_string()))?;
    for file in [root.join("config/current.yaml"), hist.join("000001.yaml")] {
        std::fs::write(&file, &config.yaml).map_err(|e| fail(&file, e.to_string()))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(&file, e.to_string()))?;
    }
    let image = work.join("state.ext4");
    let f = std::fs::File::create(&image).map_err(|e| fail(&image, e.to_string()))?;
    f.set_len(size).map_err(|e| fail(&image, e.to_string()))?;
    drop(f);
    let mut cmd = Command::new("mke2fs");
    cmd.env("MKE2FS_DEVICE_SECTSIZE", "512")
        .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-L", STATE_LABEL])
        .arg("-E")
        .arg("root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1")
        .arg("-d")
        .arg(&root);
    if let Some(u) = uuid {
        cmd.args(["-U", u]);
    }
    let out = cmd.arg(&image).output().map_err(|e| {
        fail(
            &image,
            format!("cannot run mke2fs (install e2fsprogs): {e}"),
        )
    })?;
    if !out.status.success() {
        return Err(fail(
            &image,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_config_is_refused_with_details() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.yaml");
        std::fs::write(
            &p,
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nbogus: 1\n",
        )
        .unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.to_string().contains("bad.yaml"), "{e}");
    }

    #[test]
    fn state_image_holds_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.yaml");
        std::fs::write(
            &p,
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n",
        )
        .unwrap();
        let c = load(&p).unwrap();
        let img = build_state(
            &c,
            16 << 20,
            Some("0b3c1f6e-9a55-4c8e-8d1e-3c1c2f1f0a01"),
            dir.path(),
        )
        .unwrap();
        let out = Command::new("debugfs")
            .args(["-R", "cat /config/history/000001.yaml"])
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(out.stdout, c.yaml);
        let out = Command::new("debugfs")
            .args(["-R", "stat /config/current.yaml"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("Mode:  0600"));
    }
}
