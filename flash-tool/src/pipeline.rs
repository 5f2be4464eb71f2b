//! The reader side: one thread reads (and decompresses) the source once, front to back,
//! checks every bmap range against its checksum, and hands [`CHUNK`]-sized aligned
//! buffers to every device's bounded queue ([`QUEUE_DEPTH`] chunks each), so memory stays
//! bounded and several cards are written from one read of the image.
//!
//! Unmapped gaps are skipped: by seeking (`pread`) for a raw local file, by reading and
//! dropping for streams. A range whose checksum does not match aborts every device before
//! its first MiB is written. When a first-boot config is injected, the bytes of the STATE
//! partition are not sent (the writer builds a new STATE); its superblock's UUID is passed
//! on so the new filesystem keeps it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use crate::blockdev::AlignedBuf;
use crate::bmap::BlockMap;
use crate::progress::{Phase, Reporter};
use crate::source::{OpenedSource, SourceError, read_full};

/// Bytes per chunk handed to the writers.
pub const CHUNK: usize = 4 << 20;
/// Chunks queued per device.
pub const QUEUE_DEPTH: usize = 8;
/// The leading bytes a whole-disk writer holds back until the end.
pub const HEAD: u64 = 1 << 20;

/// A message from the reader to one device writer.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Image bytes at an image offset.
    Data {
        /// Image offset.
        offset: u64,
        /// The bytes (shared by all devices).
        buf: Arc<AlignedBuf>,
    },
    /// The image's STATE partition (only when a config is injected).
    State {
        /// Byte range of the partition in the image.
        range: Range<u64>,
    },
    /// The UUID of the image's STATE filesystem.
    StateUuid(String),
    /// The whole image was read; its size.
    End {
        /// Image size in bytes.
        size: u64,
    },
}

/// The reader's failure.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading or decompressing failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A bmap range checksum did not match.
    #[error(
        "image {name} does not match its bmap: bytes {start}..{end} hash to {found}, the bmap says {expected}"
    )]
    Checksum {
        /// The image.
        name: String,
        /// Range start.
        start: u64,
        /// Range end.
        end: u64,
        /// Found.
        found: String,
        /// Expected.
        expected: String,
    },
    /// The image ended before the bmap said it would.
    #[error("image {name} ended at {at} bytes, the bmap says {size}")]
    Short {
        /// The image.
        name: String,
        /// Where it ended.
        at: u64,
        /// The bmap's size.
        size: u64,
    },
    /// The injected config needs a STATE partition the image does not have.
    #[error("image {name} has no {label} partition in its first MiB: {reason}")]
    NoState {
        /// The image.
        name: String,
        /// The label looked for.
        label: String,
        /// Why.
        reason: String,
    },
    /// Every device failed; nothing left to write to.
    #[error("every device failed")]
    NoDevices,
}

/// What the reader reads.
pub struct ReadPlan<'a> {
    /// The source.
    pub source: OpenedSource,
    /// A raw local file, read with `pread` (gaps skipped by offset).
    pub raw_file: Option<File>,
    /// The map; `None` streams everything to EOF.
    pub map: Option<&'a BlockMap>,
    /// The label of the partition to leave out (config injection).
    pub exclude_label: Option<&'a str>,
    /// Updated with the image offset read so far (progress).
    pub position: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Sends to every live device; a device whose writer hung up is dropped.
fn send_all(sinks: &mut [Option<SyncSender<Msg>>], msg: Msg) -> Result<(), ReadError> {
    for s in sinks.iter_mut() {
        if let Some(tx) = s
            && tx.send(msg.clone()).is_err()
        {
            *s = None;
        }
    }
    if sinks.iter().all(Option::is_none) {
        return Err(ReadError::NoDevices);
    }
    Ok(())
}

struct Reader<'a, 'b> {
    plan: ReadPlan<'a>,
    pos: u64,
    sinks: &'b mut [Option<SyncSender<Msg>>],
    exclude: Option<Range<u64>>,
    uuid_sent: bool,
    reporter: &'b dyn Reporter,
}

impl Reader<'_, '_> {
    /// Reads up to `len` bytes at image offset `offset` (`offset >= self.pos`).
    fn read(&mut self, offset: u64, len: usize) -> Result<AlignedBuf, ReadError> {
        let mut buf = AlignedBuf::new(len);
        let n = if let Some(f) = &self.plan.raw_file {
            let mut done = 0;
            while done < len {
                match f.read_at(&mut buf.as_mut_slice()[done..], offset + done as u64) {
                    Ok(0) => break,
                    Ok(k) => done += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        return Err(SourceError::Io {
                            name: self.plan.source.name.clone(),
                            source,
                        }
                        .into());
                    }
                }
            }
            done
        } else {
            while self.pos < offset {
                let skip = (offset - self.pos).min(CHUNK as u64) as usize;
                let mut scratch = vec![0u8; skip];
                let k = read_full(&mut self.plan.source, &mut scratch, self.pos)?;
                self.pos += k as u64;
                if k < skip {
                    break;
                }
            }
            read_full(&mut self.plan.source, buf.as_mut_slice(), offset)?
        };
        self.pos = offset + n as u64;
        self.plan
            .position
            .store(self.pos, std::sync::atomic::Ordering::Relaxed);
        buf.truncate(n);
        self.reporter.progress("source", Phase::Read, self.pos);
        Ok(buf)
    }

    /// Sends `buf` at `offset`, minus the excluded range.
    fn forward(&mut self, offset: u64, buf: AlignedBuf) -> Result<(), ReadError> {
        if offset == 0
            && let Some(label) = self.plan.exclude_label
        {
            let table = basalt_bootloader::partition_table::PartitionTable::read(
                &mut std::io::Cursor::new(buf.as_slice()),
                &self.plan.source.name,
            );
            let found = table.map_err(|e| e.to_string()).and_then(|t| {
                t.by_label(label)
                    .map(|p| p.start..p.start + p.size)
                    .ok_or_else(|| "no partition has that label".to_string())
            });
            match found {
                Ok(r) => {
                    send_all(self.sinks, Msg::State { range: r.clone() })?;
                    self.exclude = Some(r);
                }
                Err(reason) => {
                    return Err(ReadError::NoState {
                        name: self.plan.source.name.clone(),
                        label: label.to_string(),
                        reason,
                    });
                }
            }
        }
        let end = offset + buf.as_slice().len() as u64;
        let Some(ex) = self.exclude.clone() else {
            return send_all(
                self.sinks,
                Msg::Data {
                    offset,
                    buf: Arc::new(buf),
                },
            );
        };
        if end <= ex.start || offset >= ex.end {
            return send_all(
                self.sinks,
                Msg::Data {
                    offset,
                    buf: Arc::new(buf),
                },
            );
        }
        // The ext4 UUID is at byte 0x68 of the superblock, which starts 1024 bytes in.
        let uuid_at = ex.start + 1024 + 0x68;
        if !self.uuid_sent && offset <= uuid_at && uuid_at + 16 <= end {
            let i = (uuid_at - offset) as usize;
            let magic_at = (ex.start + 1024 + 0x38)
                .checked_sub(offset)
                .map(|m| m as usize);
            let is_ext = magic_at.is_some_and(|m| buf.as_slice()[m..m + 2] == [0x53, 0xef]);
            if is_ext {
                let u = &buf.as_slice()[i..i + 16];
                let text = format!(
                    "{}-{}-{}-{}-{}",
                    hex::encode(&u[0..4]),
                    hex::encode(&u[4..6]),
                    hex::encode(&u[6..8]),
                    hex::encode(&u[8..10]),
                    hex::encode(&u[10..16])
                );
                send_all(self.sinks, Msg::StateUuid(text))?;
            }
            self.uuid_sent = true;
        }
        // Forward the parts before and after the excluded range (copies are rare: only
        // the chunks straddling the partition's ends).
        for (s, e) in [(offset, end.min(ex.start)), (offset.max(ex.end), end)] {
            if s < e {
                let mut part = AlignedBuf::new((e - s) as usize);
                part.as_mut_slice()
                    .copy_from_slice(&buf.as_slice()[(s - offset) as usize..(e - offset) as usize]);
                send_all(
                    self.sinks,
                    Msg::Data {
                        offset: s,
                        buf: Arc::new(part),
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Reads the plan and feeds `sinks`; returns the image size. On error the caller drops
/// the senders without an [`Msg::End`], which the writers take as an abort.
pub fn run_reader(
    plan: ReadPlan<'_>,
    sinks: &mut [Option<SyncSender<Msg>>],
    reporter: &dyn Reporter,
) -> Result<u64, ReadError> {
    let map = plan.map;
    let mut r = Reader {
        plan,
        pos: 0,
        sinks,
        exclude: None,
        uuid_sent: false,
        reporter,
    };
    let size = match map {
        Some(map) => {
            for range in &map.ranges {
                let mut hasher = range.checksum.as_ref().map(|c| c.hasher());
                let mut off = range.start;
                while off < range.end {
                    let len = (range.end - off).min(CHUNK as u64) as usize;
                    let buf = r.read(off, len)?;
                    if buf.as_slice().len() < len {
                        return Err(ReadError::Short {
                            name: r.plan.source.name.clone(),
                            at: off + buf.as_slice().len() as u64,
                            size: map.image_size,
                        });
                    }
                    if let Some(h) = hasher.as_mut() {
                        h.update(buf.as_slice());
                    }
                    r.forward(off, buf)?;
                    off += len as u64;
                }
                if let (Some(h), Some(expected)) = (hasher, &range.checksum)
                    && let Err(found) = h.check(expected)
                {
                    return Err(ReadError::Checksum {
                        name: r.plan.source.name.clone(),
                        start: range.start,
                        end: range.end,
                        found,
                        expected: expected.hex(),
                    });
                }
            }
            map.image_size
        }
        None => {
            let mut off = 0;
            loop {
                let buf = r.read(off, CHUNK)?;
                let n = buf.as_slice().len();
                if n == 0 {
                    break;
                }
                r.forward(off, buf)?;
                off += n as u64;
                if n < CHUNK {
                    break;
                }
            }
            off
        }
    };
    if let (Some(label), None) = (r.plan.exclude_label, &r.exclude) {
        return Err(ReadError::NoState {
            name: r.plan.source.name.clone(),
            label: label.to_string(),
            reason: "the image's first block is not mapped".into(),
        });
    }
    send_all(r.sinks, Msg::End { size })?;
    Ok(size)
}
