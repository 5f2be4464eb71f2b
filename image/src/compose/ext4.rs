//! Empty ext4 filesystems for STATE and DATA, made by `mke2fs` (e2fsprogs) with every
//! identifier fixed (UUID and directory hash seed derived from the build seed, timestamps
//! from `SOURCE_DATE_EPOCH` through `E2FSPROGS_FAKE_TIME`), so builds stay reproducible.
//!
//! Writing ext4 in Rust is not worth it for two empty filesystems; `mke2fs` is the reference
//! implementation and is installed by `scripts/setup-host`.
//!
//! Lazy inode-table and journal initialisation stay on (mke2fs's defaults): the regions it
//! does not write are holes in the image and are not in the bmap, so after flashing they
//! hold whatever the card held. That is safe only with lazy init, where the block groups
//! say their inode tables are not zeroed (the kernel zeroes them after the first mount) and
//! a clean journal is never replayed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Failure to create an ext4 image.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// Creating the image file failed.
    #[error("failed to create ext4 image {path}: {source}")]
    Create {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `mke2fs` could not be started.
    #[error("mke2fs not found ({0}): run scripts/setup-host")]
    Missing(std::io::Error),
    /// `mke2fs` failed.
    #[error("mke2fs failed for {label}: {stderr}")]
    Failed {
        /// The volume label.
        label: String,
        /// What mke2fs said.
        stderr: String,
    },
}

/// Formats a `size`-byte ext4 image at `path` labelled `label`, with the UUID `uuid`.
pub fn make_ext4(
    path: &Path,
    size: u64,
    label: &str,
    uuid: &str,
    epoch: u64,
) -> Result<(), Ext4Error> {
    let create = |source| Ext4Error::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(create)?;
    file.set_len(size).map_err(create)?;
    drop(file);
    let output = Command::new("mke2fs")
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("MKE2FS_DEVICE_SECTSIZE", "512")
        .args([
            "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid,
        ])
        .arg("-E")
        .arg(format!(
            "hash_seed={uuid},root_owner=0:0,nodiscard,lazy_itable_init=1,lazy_journal_init=1"
        ))
        .arg(path)
        .output()
        .map_err(Ext4Error::Missing)?;
    if !output.status.success() {
        return Err(Ext4Error::Failed {
            label: label.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Formats 16 GUID bytes (as [`crate::disk::derived_guid`] returns them, mixed-endian) as
/// the textual UUID of the same GUID.
pub fn guid_text(g: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[3],
        g[2],
        g[1],
        g[0],
        g[5],
        g[4],
        g[7],
        g[6],
        g[8],
        g[9],
        g[10],
        g[11],
        g[12],
        g[13],
        g[14],
        g[15]
    )
}
