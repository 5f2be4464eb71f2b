//! Block maps of every bmaptool format: 2.0 (sha256) is parsed by
//! [`basalt_image::bmap::Bmap::parse`], the one bmap parser of the tree; the 1.x formats are
//! parsed here: 1.0–1.3 carry a `sha1="…"` attribute per range, 1.4 names the algorithm in
//! `<ChecksumType>` (sha1 or sha256) and uses `chksum="…"`. Both become a [`BlockMap`] whose
//! ranges carry a [`RangeChecksum`], checked by the reader thread as the bytes stream past.

use std::path::{Path, PathBuf};

use sha1::Digest;

/// A bmap that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    /// Reading the file failed.
    #[error("failed to read bmap {path}: {source}")]
    Io {
        /// The bmap file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A 2.0 (or sha256 1.4) bmap rejected by the image crate's parser.
    #[error(transparent)]
    Parse(#[from] basalt_image::bmap::BmapError),
    /// A 1.x bmap is malformed.
    #[error("bad bmap {path}: {reason}")]
    Malformed {
        /// The bmap file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The expected checksum of a mapped range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeChecksum {
    /// SHA-1 (bmap 1.0–1.4).
    Sha1([u8; 20]),
    /// SHA-256 (bmap 1.4, 2.0).
    Sha256([u8; 32]),
}

impl RangeChecksum {
    /// A running hasher for this algorithm.
    pub fn hasher(&self) -> RangeHasher {
        match self {
            RangeChecksum::Sha1(_) => RangeHasher::Sha1(sha1::Sha1::new()),
            RangeChecksum::Sha256(_) => RangeHasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Lower-case hex.
    pub fn hex(&self) -> String {
        match self {
            RangeChecksum::Sha1(d) => hex::encode(d),
            RangeChecksum::Sha256(d) => hex::encode(d),
        }
    }
}

/// A running range hash.
pub enum RangeHasher {
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl RangeHasher {
    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            RangeHasher::Sha1(h) => h.update(data),
            RangeHasher::Sha256(h) => h.update(data),
        }
    }

    /// Whether the hash equals `expected`; returns the hex of what was found.
    pub fn check(self, expected: &RangeChecksum) -> Result<(), String> {
        let found = match self {
            RangeHasher::Sha1(h) => hex::encode(h.finalize()),
            RangeHasher::Sha256(h) => hex::encode(h.finalize()),
        };
        if found == expected.hex() {
            Ok(())
        } else {
            Err(found)
        }
    }
}

/// One mapped byte range `start..end` of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte (clipped to the image size).
    pub end: u64,
    /// The expected checksum, when the bmap has one.
    pub checksum: Option<RangeChecksum>,
}

/// A parsed block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    /// The bmap format version as written in the file.
    pub version: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// Mapped ranges in order.
    pub ranges: Vec<MappedRange>,
}

impl BlockMap {
    /// Reads and parses a bmap file.
    pub fn load(path: &Path) -> Result<BlockMap, BmapError> {
        let text = std::fs::read_to_string(path).map_err(|source| BmapError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        BlockMap::parse(&text, path)
    }

    /// Parses bmap text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<BlockMap, BmapError> {
        let bad = |reason: String| BmapError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let root = text
            .find("<bmap")
            .ok_or_else(|| bad("no <bmap> element".into()))?;
        let open = &text[root..root + text[root..].find('>').unwrap_or(0)];
        let version = attr(open, "version").ok_or_else(|| bad("no bmap version".into()))?;
        let kind = element(text, "ChecksumType");
        let major = version.split('.').next().unwrap_or("");
        if major == "2" || (version == "1.4" && kind.as_deref() == Some("sha256")) {
            let b = basalt_image::bmap::Bmap::parse(text, path)?;
            let bs = b.block_size;
            let ranges = b
                .ranges
                .iter()
                .map(|r| MappedRange {
                    start: r.first * bs,
                    end: ((r.last + 1) * bs).min(b.image_size),
                    checksum: r.sha256.map(RangeChecksum::Sha256),
                })
                .collect();
            return Ok(BlockMap {
                version,
                image_size: b.image_size,
                ranges,
            });
        }
        if major != "1" {
            return Err(bad(format!("unsupported bmap version {version}")));
        }
        let num = |tag: &str| -> Result<u64, BmapError> {
            element(text, tag)
                .ok_or_else(|| bad(format!("no <{tag}>")))?
                .parse()
                .map_err(|_| bad(format!("<{tag}> is not a number")))
        };
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        let blocks = num("BlocksCount")?;
        if block_size == 0 || blocks != image_size.div_ceil(block_size) {
            return Err(bad(format!(
                "{blocks} blocks of {block_size} do not fit {image_size} bytes"
            )));
        }
        // 1.4 names the algorithm; 1.0-1.3 always use sha1 in a `sha1` attribute.
        let attr_name = match kind.as_deref() {
            None => "sha1",
            Some("sha1") => "chksum",
            Some(other) => return Err(bad(format!("checksum type {other:?} is not supported"))),
        };
        let mut ranges: Vec<MappedRange> = Vec::new();
        let mut rest = 0;
        while let Some(i) = text[rest..].find("<Range") {
            let at = rest + i;
            let open_end = at
                + text[at..]
                    .find('>')
                    .ok_or_else(|| bad("unterminated <Range".into()))?;
            let close = open_end
                + text[open_end..]
                    .find("</Range>")
                    .ok_or_else(|| bad("no </Range>".into()))?;
            let body = text[open_end + 1..close].trim();
            let n = |s: &str| {
                s.trim()
                    .parse::<u64>()
                    .map_err(|_| bad(format!("bad range {body:?}")))
            };
            let (first, last) = match body.split_once('-') {
                Some((a, b)) => (n(a)?, n(b)?),
                None => (n(body)?, n(body)?),
            };
            let start = first * block_size;
            if first > last || last >= blocks || ranges.last().is_some_and(|r| r.end > start) {
                return Err(bad(format!(
                    "range {first}-{last} is out of order or past block {blocks}"
                )));
            }
            let checksum = match attr(&text[at..open_end], attr_name) {
                Some(h) => {
                    let mut d = [0u8; 20];
                    hex::decode_to_slice(&h, &mut d)
                        .map_err(|e| bad(format!("range {first}-{last} checksum: {e}")))?;
                    Some(RangeChecksum::Sha1(d))
                }
                None => None,
            };
            ranges.push(MappedRange {
                start,
                end: ((last + 1) * block_size).min(image_size),
                checksum,
            });
            rest = close;
        }
        Ok(BlockMap {
            version,
            image_size,
            ranges,
        })
    }

    /// A map of the whole image as one range without checksum (no bmap).
    pub fn whole(image_size: u64) -> BlockMap {
        BlockMap {
            version: "none".into(),
            image_size,
            ranges: vec![MappedRange {
                start: 0,
                end: image_size,
                checksum: None,
            }],
        }
    }

    /// Bytes in mapped ranges.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }
}

fn element(text: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(text[start..end].trim().to_string())
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!(" {name}=");
    let at = tag.find(&key)? + key.len();
    let quote = tag[at..].chars().next()?;
    let rest = &tag[at + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V13: &str = r#"<?xml version="1.0" ?>
<bmap version="1.3">
    <ImageSize> 10000 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 3 </BlocksCount>
    <MappedBlocksCount> 2 </MappedBlocksCount>
    <BmapFileSHA1> 0 </BmapFileSHA1>
    <BlockMap>
        <Range sha1="da39a3ee5e6b4b0d3255bfef95601890afd80709"> 0 </Range>
        <Range sha1="da39a3ee5e6b4b0d3255bfef95601890afd80709"> 2 </Range>
    </BlockMap>
</bmap>"#;

    #[test]
    fn bmap_1_3_with_sha1_ranges() {
        let m = BlockMap::parse(V13, Path::new("t.bmap")).unwrap();
        assert_eq!(m.image_size, 10000);
        assert_eq!(m.ranges.len(), 2);
        assert_eq!(m.ranges[1].start, 8192);
        assert_eq!(m.ranges[1].end, 10000);
        let mut h = m.ranges[0].checksum.as_ref().unwrap().hasher();
        h.update(b"");
        assert!(h.check(m.ranges[0].checksum.as_ref().unwrap()).is_ok());
    }

    #[test]
    fn bmap_1_4_sha1_uses_chksum() {
        let text = V13
            .replace("1.3", "1.4")
            .replace("sha1=", "chksum=")
            .replace(
                "<BlockMap>",
                "<ChecksumType> sha1 </ChecksumType>\n<BlockMap>",
            );
        let m = BlockMap::parse(&text, Path::new("t.bmap")).unwrap();
        assert!(matches!(m.ranges[0].checksum, Some(RangeChecksum::Sha1(_))));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let text = V13.replace("> 2 <", "> 0 <");
        assert!(BlockMap::parse(&text, Path::new("t.bmap")).is_err());
    }

    #[test]
    fn bmap_2_0_comes_from_the_image_crate() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("i");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(1 << 20).unwrap();
        drop(f);
        std::fs::write(dir.path().join("x"), b"").unwrap();
        let b = basalt_image::bmap::Bmap::from_image(&img).unwrap();
        let m = BlockMap::parse(&b.to_xml(), Path::new("i.bmap")).unwrap();
        assert_eq!(m.version, "2.0");
        assert_eq!(m.image_size, 1 << 20);
    }
}
