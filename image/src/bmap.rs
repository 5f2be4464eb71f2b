//! Block maps in bmaptool's XML format 2.0, so a disk image can be flashed with
//! `bmaptool copy --bmap disk.bmap disk.img /dev/sdX` (or `basalt-flash`) writing only the
//! blocks that hold data.
//!
//! **What is mapped.** Every allocated extent of the image file, exactly as `bmaptool
//! create` finds them: the FIEMAP ioctl (with `FIEMAP_FLAG_SYNC`), including *unwritten*
//! (preallocated) extents, which read as zeros but were zeroed on purpose — `mke2fs`
//! zeroes the journal and inode tables that way, and a device must not keep stale data
//! there. Where FIEMAP is not supported (e.g. tmpfs) we fall back to
//! `lseek(SEEK_DATA/SEEK_HOLE)` like bmaptool's `FilemapSeek` (which sees unwritten extents
//! as holes), and where that is not supported either the kernel reports the whole file as
//! data: the bmap is then correct but maps everything. Extents are clipped to the file
//! size, rounded out to 4096-byte blocks and merged when adjacent.
//!
//! Holes are "don't care": the target device keeps whatever it had there. We deliberately
//! do **not** treat written all-zero blocks as unmapped: zeros the assembler wrote on
//! purpose (an empty FAT, a wiped filesystem signature at the start of STATE or DATA so an
//! old install is not picked up) must reach the device. So the image assembler must leave
//! unused space as holes (`set_len`, never write zero runs it does not need) and write, or
//! preallocate, every zero that matters.
//!
//! **Format.** `ImageSize`, `BlockSize` (4096), `BlocksCount` (`ceil(ImageSize / 4096)`),
//! `MappedBlocksCount`, `ChecksumType` `sha256`, `BmapFileChecksum` and a `BlockMap` of
//! `<Range chksum="…"> first-last </Range>` (a single block is written `first`, as bmaptool
//! does). A range's checksum is the sha256 of its bytes, the last block only up to the
//! image end. `BmapFileChecksum` is the sha256 of the whole bmap file with that field's
//! value replaced by 64 ASCII `0`s (BmapCreate writes the zeros, hashes the file, then
//! writes the digest in their place; BmapCopy replaces the first occurrence of the digest
//! with zeros and hashes again).

use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::SeekFrom;
use rustix::io::Errno;
use sha2::{Digest, Sha256};

/// Block size of the bmaps written here.
pub const BMAP_BLOCK_SIZE: u64 = 4096;
const ZERO_CHECKSUM: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A failure creating, writing or parsing a bmap.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    /// Reading the image or writing the bmap failed.
    #[error("{}: I/O error at offset {offset}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Where in the file.
        offset: u64,
        /// The I/O error.
        source: io::Error,
    },
    /// The image cannot have a bmap (it is empty).
    #[error("{}: {reason}", path.display())]
    Invalid {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A bmap file is malformed or inconsistent.
    #[error("{}: bad bmap at offset {offset}: {reason}", path.display())]
    Parse {
        /// The bmap file.
        path: PathBuf,
        /// Byte offset of the problem in the bmap text.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The bmap file's `BmapFileChecksum` does not match its contents.
    #[error("{}: bmap file checksum mismatch: the file says {expected}, its contents hash to {found}", path.display())]
    ChecksumMismatch {
        /// The bmap file.
        path: PathBuf,
        /// Checksum written in the file.
        expected: String,
        /// Checksum computed.
        found: String,
    },
}

/// A range of mapped blocks, `first..=last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmapRange {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// sha256 of the range's bytes, when the bmap has range checksums.
    pub sha256: Option<[u8; 32]>,
}

/// A block map: image size, block size and the mapped ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Mapped ranges, sorted and disjoint.
    pub ranges: Vec<BmapRange>,
}

/// Adds `start..end` (clipped to `size`) to sorted, merged `out`.
fn push_extent(out: &mut Vec<Range<u64>>, start: u64, end: u64, size: u64) {
    let (start, end) = (start.min(size), end.min(size));
    if start >= end {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end >= start => last.end = last.end.max(end),
        _ => out.push(start..end),
    }
}

/// The image's allocated extents as sorted, merged byte ranges within the file size: from
/// FIEMAP, else from `lseek(SEEK_DATA/SEEK_HOLE)`, else the whole file (see the module
/// documentation).
pub fn mapped_extents(file: &File, path: &Path) -> Result<Vec<Range<u64>>, BmapError> {
    let io_err = |offset, source| BmapError::Io {
        path: path.to_path_buf(),
        offset,
        source,
    };
    let size = file.metadata().map_err(|e| io_err(0, e))?.len();
    let mut out: Vec<Range<u64>> = Vec::new();
    for extent in fiemap::Fiemap::with_flags(file, fiemap::FiemapFlags::SYNC) {
        match extent {
            Ok(e) => push_extent(
                &mut out,
                e.fe_logical,
                e.fe_logical.saturating_add(e.fe_length),
                size,
            ),
            Err(e)
                if out.is_empty()
                    && matches!(
                        Errno::from_io_error(&e),
                        Some(Errno::OPNOTSUPP | Errno::NOTTY)
                    ) =>
            {
                return seek_extents(file, path, size);
            }
            Err(e) => return Err(io_err(out.last().map_or(0, |r| r.end), e)),
        }
    }
    Ok(out)
}

/// The data extents via `lseek(SEEK_DATA/SEEK_HOLE)`; the whole file if unsupported.
fn seek_extents(file: &File, path: &Path, size: u64) -> Result<Vec<Range<u64>>, BmapError> {
    let io_err = |offset, e: Errno| BmapError::Io {
        path: path.to_path_buf(),
        offset,
        source: io::Error::from(e),
    };
    let mut out: Vec<Range<u64>> = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                // Not supported: the whole file is data.
                out.clear();
                out.push(0..size);
                return Ok(out);
            }
            Err(e) => return Err(io_err(pos, e)),
        };
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e,
            Err(Errno::NXIO) => size,
            Err(e) => return Err(io_err(start, e)),
        };
        if start >= size || end <= start {
            break;
        }
        push_extent(&mut out, start, end, size);
        pos = end;
    }
    Ok(out)
}

fn hash_range(file: &File, path: &Path, range: Range<u64>) -> Result<[u8; 32], BmapError> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = range.start;
    while pos < range.end {
        let n = (range.end - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| BmapError::Io {
                path: path.to_path_buf(),
                offset: pos,
                source: e,
            })?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(h.finalize().into())
}

impl Bmap {
    /// The bmap of the (sparse) image at `path`, with range checksums.
    pub fn from_image(path: &Path) -> Result<Bmap, BmapError> {
        let file = File::open(path).map_err(|e| BmapError::Io {
            path: path.to_path_buf(),
            offset: 0,
            source: e,
        })?;
        let extents = mapped_extents(&file, path)?;
        let image_size = file
            .metadata()
            .map_err(|e| BmapError::Io {
                path: path.to_path_buf(),
                offset: 0,
                source: e,
            })?
            .len();
        if image_size == 0 {
            return Err(BmapError::Invalid {
                path: path.to_path_buf(),
                reason: "cannot make a bmap of an empty image".into(),
            });
        }
        let bs = BMAP_BLOCK_SIZE;
        let mut ranges: Vec<BmapRange> = Vec::new();
        for e in extents {
            let (first, last) = (e.start / bs, e.end.div_ceil(bs) - 1);
            match ranges.last_mut() {
                Some(r) if r.last + 1 >= first => r.last = r.last.max(last),
                _ => ranges.push(BmapRange {
                    first,
                    last,
                    sha256: None,
                }),
            }
        }
        for r in &mut ranges {
            let bytes = r.first * bs..((r.last + 1) * bs).min(image_size);
            r.sha256 = Some(hash_range(&file, path, bytes)?);
        }
        Ok(Bmap {
            image_size,
            block_size: bs,
            ranges,
        })
    }

    /// Number of blocks in the image (the last one may be partial).
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size.max(1))
    }

    /// Number of mapped blocks.
    pub fn mapped_blocks_count(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes that a bmap-aware copy writes.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                ((r.last + 1) * self.block_size).min(self.image_size) - r.first * self.block_size
            })
            .sum()
    }

    /// The bmap file text, with its `BmapFileChecksum`.
    pub fn to_xml(&self) -> String {
        let mapped = self.mapped_blocks_count();
        let percent = mapped as f64 * 100.0 / self.blocks_count().max(1) as f64;
        let (size, bs, blocks) = (self.image_size, self.block_size, self.blocks_count());
        let (human_size, human_mapped) = (human(size), human(mapped * bs));
        let mut x = format!(
            r#"<?xml version="1.0" ?>
<!-- Block map (bmaptool format 2.0) written by basalt-image: the blocks of the
     image that hold data. Only these need to be written to a device. -->

<bmap version="2.0">
    <!-- Image size in bytes: {human_size} -->
    <ImageSize> {size} </ImageSize>

    <!-- Size of a block in bytes -->
    <BlockSize> {bs} </BlockSize>

    <!-- Count of blocks in the image file -->
    <BlocksCount> {blocks} </BlocksCount>

    <!-- Count of mapped blocks: {human_mapped} or {percent:.1}% -->
    <MappedBlocksCount> {mapped} </MappedBlocksCount>

    <!-- Type of checksum used in this file -->
    <ChecksumType> sha256 </ChecksumType>

    <!-- The checksum of this bmap file. When it is calculated, the value of
         the checksum has be zero (all ASCII "0" symbols).  -->
    <BmapFileChecksum> "#
        );
        let checksum_at = x.len();
        x.push_str(ZERO_CHECKSUM);
        x.push_str(" </BmapFileChecksum>\n\n    <!-- Mapped block ranges, each with its sha256 -->\n    <BlockMap>\n");
        for r in &self.ranges {
            if let Some(h) = r.sha256 {
                x.push_str(&format!("        <Range chksum=\"{}\">", hex::encode(h)));
            } else {
                x.push_str("        <Range>");
            }
            if r.first == r.last {
                x.push_str(&format!(" {} </Range>\n", r.first));
            } else {
                x.push_str(&format!(" {}-{} </Range>\n", r.first, r.last));
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let digest = hex::encode(Sha256::digest(x.as_bytes()));
        x.replace_range(checksum_at..checksum_at + ZERO_CHECKSUM.len(), &digest);
        x
    }

    /// Parses a bmap file of format 2.0 (as bmaptool or [`Bmap::to_xml`] write it) and
    /// checks its `BmapFileChecksum`. `path` only names the file in errors.
    pub fn parse(xml: &str, path: &Path) -> Result<Bmap, BmapError> {
        let bad = |offset: usize, reason: String| BmapError::Parse {
            path: path.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        let text = strip_comments(xml);
        let root = text
            .find("<bmap")
            .ok_or_else(|| bad(0, "no <bmap> element".into()))?;
        let version = attr(
            &text[root..text[root..].find('>').map_or(text.len(), |e| root + e)],
            "version",
        );
        if !matches!(version.as_deref(), Some("2.0") | Some("1.4")) {
            return Err(bad(
                root,
                format!("bmap version {version:?}: only 2.0 is supported"),
            ));
        }
        let num = |tag: &str| -> Result<u64, BmapError> {
            let (at, v) = element(&text, tag).ok_or_else(|| bad(0, format!("no <{tag}>")))?;
            v.parse()
                .map_err(|_| bad(at, format!("<{tag}> {v:?} is not a number")))
        };
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        let blocks = num("BlocksCount")?;
        let mapped = num("MappedBlocksCount")?;
        if block_size == 0 || blocks != image_size.div_ceil(block_size) {
            return Err(bad(
                0,
                format!("{blocks} blocks of {block_size} do not fit {image_size} bytes"),
            ));
        }
        if let Some((at, kind)) = element(&text, "ChecksumType")
            && kind != "sha256"
        {
            return Err(bad(
                at,
                format!("checksum type {kind:?}: only sha256 is supported"),
            ));
        }
        if let Some((_, expected)) = element(&text, "BmapFileChecksum") {
            let mut copy = xml.to_string();
            if let Some(at) = copy.find(expected) {
                copy.replace_range(at..at + expected.len(), &"0".repeat(expected.len()));
            }
            let found = hex::encode(Sha256::digest(copy.as_bytes()));
            if found != expected {
                return Err(BmapError::ChecksumMismatch {
                    path: path.to_path_buf(),
                    expected: expected.to_string(),
                    found,
                });
            }
        }
        let mut ranges: Vec<BmapRange> = Vec::new();
        let mut rest = 0;
        while let Some(i) = text[rest..].find("<Range") {
            let at = rest + i;
            let open_end = text[at..]
                .find('>')
                .map(|e| at + e)
                .ok_or_else(|| bad(at, "unterminated <Range".into()))?;
            let close = text[open_end..]
                .find("</Range>")
                .map(|e| open_end + e)
                .ok_or_else(|| bad(at, "no </Range>".into()))?;
            let body = text[open_end + 1..close].trim();
            let parse_n = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(at, format!("bad range {body:?}")))
            };
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (parse_n(a)?, parse_n(b)?),
                None => (parse_n(body)?, parse_n(body)?),
            };
            if first > last || last >= blocks || ranges.last().is_some_and(|r| r.last >= first) {
                return Err(bad(
                    at,
                    format!("range {first}-{last} is out of order or past block {blocks}"),
                ));
            }
            let sha256 = match attr(&text[at..open_end], "chksum") {
                Some(h) => {
                    let mut d = [0u8; 32];
                    hex::decode_to_slice(&h, &mut d)
                        .map_err(|e| bad(at, format!("range checksum: {e}")))?;
                    Some(d)
                }
                None => None,
            };
            ranges.push(BmapRange {
                first,
                last,
                sha256,
            });
            rest = close;
        }
        let bmap = Bmap {
            image_size,
            block_size,
            ranges,
        };
        if bmap.mapped_blocks_count() != mapped {
            return Err(bad(
                0,
                format!(
                    "MappedBlocksCount {mapped}, the ranges hold {}",
                    bmap.mapped_blocks_count()
                ),
            ));
        }
        Ok(bmap)
    }
}

/// `text` with XML comments blanked out (same length, so offsets stay valid).
fn strip_comments(text: &str) -> String {
    let mut out = text.to_string();
    let mut from = 0;
    while let Some(s) = out[from..].find("<!--") {
        let s = from + s;
        let e = out[s..].find("-->").map_or(out.len(), |e| s + e + 3);
        let blank = " ".repeat(out[s..e].len());
        out.replace_range(s..e, &blank);
        from = e;
    }
    out
}

/// The trimmed text of the first `<tag>` element and its offset.
fn element<'a>(text: &'a str, tag: &str) -> Option<(usize, &'a str)> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some((start, text[start..end].trim()))
}

/// The value of attribute `name="…"` in an opening tag.
fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let at = tag.find(&key)? + key.len();
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Writes the bmap of `image` to `out` (temporary file, fsync, rename) and returns it.
pub fn write_bmap(image: &Path, out: &Path) -> Result<Bmap, BmapError> {
    let bmap = Bmap::from_image(image)?;
    let io_err = |path: &Path, e| BmapError::Io {
        path: path.to_path_buf(),
        offset: 0,
        source: e,
    };
    let name = out
        .file_name()
        .ok_or_else(|| BmapError::Invalid {
            path: out.to_path_buf(),
            reason: "the output path has no file name".into(),
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bmap.to_xml().as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, out)?;
        File::open(&dir)?.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(out, e));
    }
    Ok(bmap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_round_trip_and_checksum() {
        let bmap = Bmap {
            image_size: 10 * 4096 + 100,
            block_size: 4096,
            ranges: vec![
                BmapRange {
                    first: 0,
                    last: 2,
                    sha256: Some([1; 32]),
                },
                BmapRange {
                    first: 7,
                    last: 7,
                    sha256: Some([2; 32]),
                },
                BmapRange {
                    first: 10,
                    last: 10,
                    sha256: None,
                },
            ],
        };
        let xml = bmap.to_xml();
        assert!(
            xml.contains("> 7 </Range>") && xml.contains("> 0-2 </Range>"),
            "{xml}"
        );
        let back = Bmap::parse(&xml, Path::new("t.bmap")).expect("parse");
        assert_eq!(back, bmap);
        assert_eq!((back.blocks_count(), back.mapped_blocks_count()), (11, 5));
        assert_eq!(back.mapped_bytes(), 4 * 4096 + 100);
        let tampered = xml.replace("> 7 </Range>", "> 8 </Range>");
        let err = Bmap::parse(&tampered, Path::new("t.bmap")).expect_err("tampered");
        assert!(matches!(err, BmapError::ChecksumMismatch { .. }), "{err}");
    }

    #[test]
    fn sparse_file_extents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("img");
        let f = File::create(&path).expect("create");
        f.set_len(1 << 20).expect("set_len");
        f.write_all_at(&[7u8; 5000], 4096 * 10).expect("write");
        f.sync_all().expect("sync");
        for ext in [
            mapped_extents(&f, &path).expect("fiemap"),
            seek_extents(&f, &path, 1 << 20).expect("seek"),
        ] {
            assert_eq!(ext, vec![4096 * 10..4096 * 12], "{ext:?}");
        }
        let bmap = Bmap::from_image(&path).expect("bmap");
        assert_eq!(bmap.ranges.len(), 1);
        assert_eq!((bmap.ranges[0].first, bmap.ranges[0].last), (10, 11));
        // tmpfs has no FIEMAP: the SEEK_DATA/SEEK_HOLE fallback gives the same extents.
        if Path::new("/dev/shm").is_dir() {
            let shm = tempfile::tempdir_in("/dev/shm").expect("tempdir");
            let shm_path = shm.path().join("img");
            let f = File::create(&shm_path).expect("create");
            f.set_len(1 << 20).expect("set_len");
            f.write_all_at(&[7u8; 5000], 4096 * 10).expect("write");
            let ext = mapped_extents(&f, &shm_path).expect("fallback");
            assert_eq!(ext, vec![4096 * 10..4096 * 12]);
        }
        let empty = dir.path().join("empty");
        File::create(&empty).expect("create");
        assert!(matches!(
            Bmap::from_image(&empty),
            Err(BmapError::Invalid { .. })
        ));
    }
}
