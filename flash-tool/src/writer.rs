//! The device side: one writer thread per device takes chunks from its bounded queue and
//! writes them at their offset, `O_DIRECT` with aligned buffers where the target allows.
//!
//! Order of a whole-disk write, chosen so that a card pulled out half-way never looks
//! bootable:
//!
//! 1. every chunk except those in the first MiB (partition tables), with an fdatasync
//!    after every `sync_every` bytes so dirty data (and the final sync) stays bounded;
//! 2. the injected STATE filesystem, if any (its mapped extents only);
//! 3. the stale backup GPT at the device's end is wiped (last MiB past the image), or,
//!    with `--grow-data`, the image's GPT is moved to the end and DATA grown ([`crate::gpt`]);
//! 4. fdatasync, then the first MiB, then fdatasync again.
//!
//! The sha256 of every piece written is kept for [`crate::verify`]. A reader that stops
//! without [`Msg::End`] (corrupt input, bad checksum) aborts the device before step 2:
//! its first MiB is untouched.

use std::ops::Range;
use std::sync::mpsc::Receiver;

use sha2::{Digest, Sha256};

use crate::blockdev::{AlignedBuf, BlockError, Target};
use crate::firstboot::{FirstBootConfig, FirstBootError};
use crate::gpt::GptError;
use crate::pipeline::{HEAD, Msg};
use crate::progress::{Phase, Reporter};

/// A failed device write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// An I/O call failed.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// The image does not fit.
    #[error("image does not fit {name}: it reaches offset {end}, the device has {size} bytes")]
    TooSmall {
        /// The device.
        name: String,
        /// End of the write that did not fit.
        end: u64,
        /// Device size.
        size: u64,
    },
    /// The source stopped (its error is reported once, by the reader).
    #[error("writing {name} was aborted before the partition table was written: the source failed")]
    Aborted {
        /// The device.
        name: String,
    },
    /// Config injection failed.
    #[error(transparent)]
    FirstBoot(#[from] FirstBootError),
    /// GPT relocation failed.
    #[error(transparent)]
    Gpt(#[from] GptError),
}

/// One piece written: offset (device), length and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Device offset.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// sha256 of the bytes.
    pub sha256: [u8; 32],
}

/// How to write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Device offset of image byte 0 (0 for whole disks, the partition start otherwise).
    pub base: u64,
    /// Bytes available from `base` (device size, or partition size).
    pub limit: u64,
    /// Whole-disk write: hold back the first MiB, wipe or move the backup GPT.
    pub whole_disk: bool,
    /// fdatasync after this many bytes.
    pub sync_every: u64,
    /// Move the backup GPT to the device end and grow DATA.
    pub grow_data: bool,
    /// The config to inject into STATE.
    pub config: Option<FirstBootConfig>,
    /// Hash every piece for a later verification (off with `--no-verify`).
    pub hash: bool,
}

/// What a write did.
#[derive(Debug, Default, Clone)]
pub struct WriteReport {
    /// Pieces written, for verification.
    pub written: Vec<Written>,
    /// Bytes written.
    pub bytes: u64,
    /// Image size.
    pub image_size: u64,
    /// Whether O_DIRECT was used.
    pub direct: bool,
    /// The partition grown, and its size.
    pub grown: Option<(String, u64)>,
}

struct Writer<'a> {
    target: &'a mut dyn Target,
    opts: &'a WriteOptions,
    report: WriteReport,
    since_sync: u64,
    head: Vec<u8>,
    head_ranges: Vec<Range<u64>>,
    reporter: &'a dyn Reporter,
    label: String,
}

impl Writer<'_> {
    fn put(&mut self, data: &[u8], offset: u64) -> Result<(), WriteError> {
        let end = offset + data.len() as u64;
        if end > self.opts.limit {
            return Err(WriteError::TooSmall {
                name: self.target.name().to_string(),
                end: self.opts.base + end,
                size: self.opts.base + self.opts.limit,
            });
        }
        let dev_off = self.opts.base + offset;
        self.target.write_at(data, dev_off)?;
        self.report.written.push(Written {
            offset: dev_off,
            len: data.len() as u64,
            sha256: if self.opts.hash {
                Sha256::digest(data).into()
            } else {
                [0; 32]
            },
        });
        self.report.bytes += data.len() as u64;
        self.since_sync += data.len() as u64;
        if self.since_sync >= self.opts.sync_every {
            self.target.sync()?;
            self.since_sync = 0;
        }
        self.reporter
            .progress(&self.label, Phase::Write, self.report.bytes);
        Ok(())
    }

    fn data(&mut self, offset: u64, buf: &AlignedBuf) -> Result<(), WriteError> {
        let data = buf.as_slice();
        let end = offset + data.len() as u64;
        if self.opts.whole_disk && offset < HEAD {
            let cut = end.min(HEAD);
            self.head[offset as usize..cut as usize]
                .copy_from_slice(&data[..(cut - offset) as usize]);
            self.head_ranges.push(offset..cut);
            if end > HEAD {
                // Rare (a range straddling 1 MiB): copy the rest into an aligned buffer.
                let mut rest = AlignedBuf::new((end - HEAD) as usize);
                rest.as_mut_slice()
                    .copy_from_slice(&data[(HEAD - offset) as usize..]);
                self.put(rest.as_slice(), HEAD)?;
            }
            return Ok(());
        }
        self.put(data, offset)
    }

    fn inject(&mut self, range: &Range<u64>, uuid: Option<&str>) -> Result<(), WriteError> {
        let Some(config) = self.opts.config.clone() else {
            return Ok(());
        };
        let work = tempfile::tempdir().map_err(|e| FirstBootError::Build {
            path: std::env::temp_dir(),
            reason: e.to_string(),
        })?;
        let image =
            crate::firstboot::build_state(&config, range.end - range.start, uuid, work.path())?;
        let file = std::fs::File::open(&image).map_err(|e| FirstBootError::Build {
            path: image.clone(),
            reason: e.to_string(),
        })?;
        let extents = basalt_image::bmap::mapped_extents(&file, &image).map_err(|e| {
            FirstBootError::Build {
                path: image.clone(),
                reason: e.to_string(),
            }
        })?;
        use std::os::unix::fs::FileExt;
        for ext in extents {
            let mut off = ext.start;
            while off < ext.end {
                let len = (ext.end - off).min(crate::pipeline::CHUNK as u64) as usize;
                let mut buf = AlignedBuf::new(len);
                file.read_exact_at(buf.as_mut_slice(), off)
                    .map_err(|e| FirstBootError::Build {
                        path: image.clone(),
                        reason: e.to_string(),
                    })?;
                self.data(range.start + off, &buf)?;
                off += len as u64;
            }
        }
        Ok(())
    }

    fn finish(&mut self, size: u64) -> Result<(), WriteError> {
        self.report.image_size = size;
        if !self.opts.whole_disk {
            self.target.sync()?;
            return Ok(());
        }
        let dev = self.target.size();
        let is_gpt = self.head.len() >= 520 && &self.head[512..520] == b"EFI PART";
        if dev > size {
            if self.opts.grow_data && is_gpt {
                let name = self.target.name().to_string();
                let b = crate::gpt::relocate(&mut self.head, dev, Some("DATA"), &name)?;
                self.head_ranges.push(0..1024);
                self.put(&b.entries, b.entries_offset)?;
                self.put(&b.header, b.header_offset)?;
                self.report.grown = b.grown;
            } else {
                // A backup GPT left at the end by an earlier, larger image would make tools
                // (and some firmware) see two different tables: zero it.
                let wipe_start = size.max(dev.saturating_sub(HEAD)) & !4095;
                let wipe_start = wipe_start.max(size);
                let zeros = AlignedBuf::new((dev - wipe_start) as usize);
                self.put(zeros.as_slice(), wipe_start)?;
            }
        }
        self.target.sync()?;
        self.head_ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::new();
        for r in self.head_ranges.drain(..) {
            match merged.last_mut() {
                Some(m) if m.end >= r.start => m.end = m.end.max(r.end),
                _ => merged.push(r),
            }
        }
        for r in merged {
            let mut buf = AlignedBuf::new((r.end - r.start) as usize);
            buf.as_mut_slice()
                .copy_from_slice(&self.head[r.start as usize..r.end as usize]);
            self.put(buf.as_slice(), r.start)?;
        }
        self.target.sync()?;
        Ok(())
    }
}

/// Writes everything `rx` delivers to `target`; `label` names the device in progress.
pub fn write_device(
    target: &mut dyn Target,
    rx: Receiver<Msg>,
    opts: &WriteOptions,
    reporter: &dyn Reporter,
    label: &str,
) -> Result<WriteReport, WriteError> {
    let mut w = Writer {
        target,
        opts,
        report: WriteReport::default(),
        since_sync: 0,
        head: if opts.whole_disk {
            vec![0u8; HEAD as usize]
        } else {
            Vec::new()
        },
        head_ranges: Vec::new(),
        reporter,
        label: label.to_string(),
    };
    let mut state: Option<Range<u64>> = None;
    let mut uuid: Option<String> = None;
    let mut end = None;
    for msg in rx {
        match msg {
            Msg::Data { offset, buf } => w.data(offset, &buf)?,
            Msg::State { range } => state = Some(range),
            Msg::StateUuid(u) => uuid = Some(u),
            Msg::End { size } => {
                end = Some(size);
                break;
            }
        }
    }
    let Some(size) = end else {
        return Err(WriteError::Aborted {
            name: w.target.name().to_string(),
        });
    };
    if let Some(r) = &state {
        w.inject(r, uuid.as_deref())?;
    }
    w.finish(size)?;
    w.report.direct = w.target.direct();
    w.target.release();
    Ok(w.report)
}
