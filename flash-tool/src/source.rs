//! Image sources: a path, standard input (`-`) or an HTTP(S) URL, decompressed on the fly.
//!
//! The compression is recognised from the first bytes (gzip `1f 8b`, xz `fd 37 7a 58 5a 00`,
//! zstd `28 b5 2f fd`), not from the name, so a renamed file still works and a raw image is
//! never mistaken for a compressed one. Every source is read once, front to back: a reader
//! thread streams it to the writers ([`crate::pipeline`]), so stdin and HTTP need no
//! seeking and decompression runs in parallel with the device writes.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::http::{HttpError, HttpReader};

/// A failure opening or reading an image source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be opened or read.
    #[error("failed to read image {name}: {source}")]
    Io {
        /// The source as the user named it.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The download failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The compressed stream is corrupt or truncated.
    #[error(
        "failed to decompress image {name} ({compression}) at uncompressed offset {offset}: {source}"
    )]
    Decompress {
        /// The source.
        name: String,
        /// gzip, xz or zstd.
        compression: Compression,
        /// Bytes decompressed before the error.
        offset: u64,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
}

/// How an image is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (flate2).
    Gzip,
    /// xz (liblzma).
    Xz,
    /// zstd.
    Zstd,
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compression::None => "raw",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// Recognises the compression from the first bytes of a stream.
    pub fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// A local file.
    Path(PathBuf),
    /// Standard input.
    Stdin,
    /// An `http://` or `https://` URL.
    Url(String),
}

impl SourceSpec {
    /// Parses the command-line form: `-`, a URL, or a path.
    pub fn parse(s: &str) -> SourceSpec {
        if s == "-" {
            SourceSpec::Stdin
        } else if s.starts_with("http://") || s.starts_with("https://") {
            SourceSpec::Url(s.to_string())
        } else {
            SourceSpec::Path(PathBuf::from(s))
        }
    }

    /// The name used in messages.
    pub fn name(&self) -> String {
        match self {
            SourceSpec::Path(p) => p.display().to_string(),
            SourceSpec::Stdin => "<stdin>".to_string(),
            SourceSpec::Url(u) => u.clone(),
        }
    }

    /// The local file, if any (for the safety check against the device holding it).
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            SourceSpec::Path(p) => Some(p),
            _ => None,
        }
    }

    /// The bmap next to the image: `NAME.bmap` with the compression suffix removed
    /// (`disk.img.zst` → `disk.img.bmap`), else `NAME.bmap`. Local files only.
    pub fn sibling_bmap(&self) -> Option<PathBuf> {
        let path = self.local_path()?;
        let name = path.file_name()?.to_str()?;
        let stem = [".gz", ".xz", ".zst"]
            .iter()
            .find_map(|ext| name.strip_suffix(ext))
            .unwrap_or(name);
        [format!("{stem}.bmap"), format!("{name}.bmap")]
            .into_iter()
            .map(|n| path.with_file_name(n))
            .find(|p| p.is_file())
    }
}

/// An opened source: the decompressed byte stream and what is known about it.
pub struct OpenedSource {
    /// The decompressed image bytes.
    pub reader: Box<dyn Read + Send>,
    /// The compression found.
    pub compression: Compression,
    /// Size of the raw (compressed) input when known (file size or Content-Length).
    pub input_len: Option<u64>,
    /// The name for messages.
    pub name: String,
}

/// Counts the compressed bytes consumed (for the decompress progress bar).
struct Counting<R> {
    inner: R,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens `spec`, sniffs its compression and wraps it in the decoder. `consumed` counts
/// the raw input bytes read so far.
pub fn open(
    spec: &SourceSpec,
    consumed: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> Result<OpenedSource, SourceError> {
    let name = spec.name();
    let io_err = |source| SourceError::Io {
        name: name.clone(),
        source,
    };
    let (raw, input_len): (Box<dyn Read + Send>, Option<u64>) = match spec {
        SourceSpec::Path(p) => {
            let f = File::open(p).map_err(io_err)?;
            let len = f.metadata().map_err(io_err)?.len();
            (Box::new(f), Some(len))
        }
        SourceSpec::Stdin => (Box::new(io::stdin()), None),
        SourceSpec::Url(u) => {
            let r = HttpReader::open(u)?;
            let len = r.content_length();
            (Box::new(r), len)
        }
    };
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: raw,
            count: consumed,
        },
    );
    let magic = {
        use io::BufRead;
        // fill_buf may return fewer bytes than asked; six bytes come in one read in practice,
        // and a short first read only means "raw".
        buffered.fill_buf().map_err(io_err)?.to_vec()
    };
    let compression = Compression::sniff(&magic);
    let reader: Box<dyn Read + Send> = match compression {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).map_err(io_err)?)
        }
    };
    Ok(OpenedSource {
        reader,
        compression,
        input_len,
        name,
    })
}

/// Reads until `buf` is full or the stream ends; returns the bytes read. Errors are
/// reported as decompression errors for compressed sources.
pub fn read_full(
    src: &mut OpenedSource,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, SourceError> {
    let mut filled = 0;
    while filled < buf.len() {
        match src.reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(
                    match (
                        src.compression,
                        e.get_ref().and_then(|i| i.downcast_ref::<HttpError>()),
                    ) {
                        (_, Some(_)) => SourceError::Io {
                            name: src.name.clone(),
                            source: e,
                        },
                        (Compression::None, None) => SourceError::Io {
                            name: src.name.clone(),
                            source: e,
                        },
                        (c, None) => SourceError::Decompress {
                            name: src.name.clone(),
                            compression: c,
                            offset: offset + filled as u64,
                            source: e,
                        },
                    },
                );
            }
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    fn roundtrip(data: &[u8], compressed: Vec<u8>, expect: Compression) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, &compressed).unwrap();
        let mut src = open(&SourceSpec::Path(p), Arc::new(AtomicU64::new(0))).unwrap();
        assert_eq!(src.compression, expect);
        let mut out = vec![0u8; data.len() + 10];
        let n = read_full(&mut src, &mut out, 0).unwrap();
        assert_eq!(&out[..n], data);
    }

    #[test]
    fn every_compression_is_recognised_and_decoded() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        roundtrip(&data, data.clone(), Compression::None);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        roundtrip(&data, gz.finish().unwrap(), Compression::Gzip);
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        roundtrip(&data, xz.finish().unwrap(), Compression::Xz);
        roundtrip(
            &data,
            zstd::encode_all(&data[..], 1).unwrap(),
            Compression::Zstd,
        );
    }

    #[test]
    fn truncated_zstd_is_a_decompression_error() {
        let data = vec![7u8; 100_000];
        let mut z = zstd::encode_all(&data[..], 1).unwrap();
        z.truncate(z.len() / 2);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.zst");
        std::fs::write(&p, &z).unwrap();
        let mut src = open(&SourceSpec::Path(p), Arc::new(AtomicU64::new(0))).unwrap();
        let mut out = vec![0u8; 200_000];
        let err = read_full(&mut src, &mut out, 0).unwrap_err();
        assert!(err.to_string().contains("failed to decompress"), "{err}");
    }

    #[test]
    fn sibling_bmap_drops_the_compression_suffix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("disk.img.bmap"), "x").unwrap();
        let spec = SourceSpec::Path(dir.path().join("disk.img.zst"));
        assert_eq!(spec.sibling_bmap(), Some(dir.path().join("disk.img.bmap")));
        assert_eq!(SourceSpec::parse("-"), SourceSpec::Stdin);
        assert!(matches!(
            SourceSpec::parse("https://h/x"),
            SourceSpec::Url(_)
        ));
    }
}
