//! FAT partition images built in Rust (no mtools, no mounting): BOOT, the ESP and the
//! system slots. Files are written through `basalt_bootloader`'s FAT access, which fixes
//! the directory entries and timestamps the `fatfs` crate gets wrong, so the result passes
//! `fsck.vfat -n` and is reproducible (fixed volume id and timestamps).

use std::path::{Path, PathBuf};

use basalt_bootloader::systemd_boot::{EspError, EspFs, FatEsp, format_fat};

/// Failure to build a FAT image.
#[derive(Debug, thiserror::Error)]
pub enum FatVolumeError {
    /// Creating or sizing the image file failed.
    #[error("failed to create FAT image {path}: {source}")]
    Create {
        /// The image file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Reading a file to put on the volume failed.
    #[error("failed to read {path} for {label}: {source}")]
    Read {
        /// The source file.
        path: PathBuf,
        /// The volume label.
        label: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Formatting or writing the volume failed (including "no space left").
    #[error("FAT volume {label}: {source}")]
    Fat {
        /// The volume label.
        label: String,
        /// The cause.
        #[source]
        source: EspError,
    },
    /// The content does not fit.
    #[error(
        "content of {label} ({needed} bytes) does not fit its partition of {size} bytes; \
         make the partition larger in the board file"
    )]
    TooBig {
        /// The volume label.
        label: String,
        /// Bytes of content.
        needed: u64,
        /// Partition size.
        size: u64,
    },
}

/// What goes on a FAT volume: a file from disk or bytes, at a path on the volume.
#[derive(Debug, Clone)]
pub enum FatContent {
    /// Copy of a file.
    File(PathBuf),
    /// Literal bytes.
    Bytes(Vec<u8>),
}

/// Builds a FAT volume of `size` bytes at `path` holding `files` (volume path → content),
/// written in the given order.
pub fn build_fat(
    path: &Path,
    size: u64,
    label: &str,
    files: &[(String, FatContent)],
) -> Result<(), FatVolumeError> {
    let fat_err = |source| FatVolumeError::Fat {
        label: label.to_string(),
        source,
    };
    let mut needed = 0u64;
    let mut contents = Vec::with_capacity(files.len());
    for (dest, content) in files {
        let data = match content {
            FatContent::File(src) => std::fs::read(src).map_err(|source| FatVolumeError::Read {
                path: src.clone(),
                label: label.to_string(),
                source,
            })?,
            FatContent::Bytes(b) => b.clone(),
        };
        needed += data.len() as u64;
        contents.push((dest, data));
    }
    // FAT overhead (tables, directories, cluster slack) stays well under 10%.
    if needed + needed / 10 + (1 << 20) > size {
        return Err(FatVolumeError::TooBig {
            label: label.to_string(),
            needed,
            size,
        });
    }
    let create = |source| FatVolumeError::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(create)?;
    file.set_len(size).map_err(create)?;
    drop(file);
    format_fat(path, 0, size, None, label).map_err(fat_err)?;
    let mut esp = FatEsp::open(path, 0, size)
        .map_err(fat_err)?
        .with_label(label);
    for (dest, data) in contents {
        esp.write_file_atomic(dest, &data).map_err(fat_err)?;
    }
    Ok(())
}
