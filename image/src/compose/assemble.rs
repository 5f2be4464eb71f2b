//! Assembles partition images into one disk image: a sparse file of the planned size, the
//! partition table, then the data regions of each partition image copied to its offset
//! (holes stay holes, so the image, its bmap and its compressed form stay small, while
//! every byte a builder wrote, zeros included, is kept).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::disk::{DiskPlan, write_table};

const BLOCK: usize = 64 * 1024;

/// Failure to assemble a disk image.
#[derive(Debug, thiserror::Error)]
pub enum AssembleError {
    /// Writing the disk image failed.
    #[error("failed to write disk image {path}: {source}")]
    Write {
        /// The disk image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading a partition image failed.
    #[error("failed to read partition image {path}: {source}")]
    Read {
        /// The partition image.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A partition image is larger than its partition.
    #[error(
        "partition image {path} ({size} bytes) is larger than partition {label} ({capacity} bytes)"
    )]
    TooBig {
        /// The partition image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The partition label.
        label: String,
        /// The partition size.
        capacity: u64,
    },
    /// An image for a label the plan does not have.
    #[error("the disk layout has no partition {0}")]
    NoSuchPartition(String),
}

/// Writes `disk` from `plan`, the table seed and `(label, partition image)` pairs.
pub fn assemble(
    disk: &Path,
    plan: &DiskPlan,
    seed: &str,
    images: &[(String, PathBuf)],
) -> Result<(), AssembleError> {
    let werr = |source| AssembleError::Write {
        path: disk.to_path_buf(),
        source,
    };
    let mut out = File::create(disk).map_err(werr)?;
    out.set_len(plan.size).map_err(werr)?;
    for (label, path) in images {
        let part = plan
            .by_label(label)
            .ok_or_else(|| AssembleError::NoSuchPartition(label.clone()))?;
        let rerr = |source| AssembleError::Read {
            path: path.clone(),
            source,
        };
        let mut input = File::open(path).map_err(rerr)?;
        let size = input.metadata().map_err(rerr)?.len();
        if size > part.request.size {
            return Err(AssembleError::TooBig {
                path: path.clone(),
                size,
                label: label.clone(),
                capacity: part.request.size,
            });
        }
        copy_sparse(&mut input, &mut out, part.start).map_err(|e| match e {
            CopyError::Read(source) => rerr(source),
            CopyError::Write(source) => werr(source),
        })?;
    }
    write_table(&mut out, plan, seed).map_err(werr)?;
    out.sync_all().map_err(werr)
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies the data regions of `input` (as `SEEK_DATA`/`SEEK_HOLE` report them) to `out` at
/// `offset`. Holes of the partition image stay holes; every byte the partition's builder
/// wrote, zeros included, is copied, because zeros written on purpose (a FAT's free
/// cluster entries) must reach the card when the image is flashed through its bmap.
fn copy_sparse(input: &mut File, out: &mut File, offset: u64) -> Result<(), CopyError> {
    use rustix::fs::{SeekFrom as RSeek, seek};
    let len = input.metadata().map_err(CopyError::Read)?.len();
    let mut buf = vec![0u8; BLOCK];
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(&*input, RSeek::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: copy everything.
            Err(_) => pos,
        };
        let hole = match seek(&*input, RSeek::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        input.seek(SeekFrom::Start(data)).map_err(CopyError::Read)?;
        out.seek(SeekFrom::Start(offset + data))
            .map_err(CopyError::Write)?;
        let mut left = hole - data;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            input.read_exact(&mut buf[..n]).map_err(CopyError::Read)?;
            out.write_all(&buf[..n]).map_err(CopyError::Write)?;
            left -= n as u64;
        }
        pos = hole;
    }
    Ok(())
}
