//! The slot's read-only root filesystem: a reproducible squashfs (v4) written in Rust.
//!
//! **Writer choice.** The image is written with the `backhand` crate (maintained, pure Rust
//! apart from the xz/zstd libraries, writes little-endian squashfs 4.0 with xz, gzip or zstd,
//! sorts entries by path, assigns inode numbers in that order, deduplicates identical
//! files). A minimal writer of our own would need inode, directory, fragment, id and export
//! tables (roughly 1500 lines) for no gain; backhand's output is checked against the real
//! `unsquashfs` in the tests. Known limits of backhand taken as they are: data blocks are
//! compressed on one thread (xz uses liblzma's 2-thread encoder per block), and the root
//! directory's own mtime is 0 (backhand has no setter for it; every other inode and the
//! superblock get `mtime`).
//!
//! **Reproducibility.** [`SquashTree`] holds entries by path; every inode gets uid/gid 0 and
//! the caller's mtime (`SOURCE_DATE_EPOCH`), modes are normalised when a tree is read from a
//! directory (directories 0755, files 0644 or 0755 when any execute bit is set, symlinks
//! 0777), and the compressor runs with fixed settings, so the same tree gives the same bytes.
//! The image is zero-padded to 4096 bytes, ready for the dm-verity hash tree
//! ([`crate::verity`]). backhand writes a duplicate file's data and then seeks back over it,
//! which can leave stale bytes past the end; the file is cut at the padded `bytes_used`.
//!
//! [`squash_dir`] (a directory in, an image out) is the entry point a benchmark compares
//! with `mksquashfs DIR OUT -noappend -all-root -comp zstd …` on the same tree.
//! [`rootfs`] builds the tree of a slot's root (modules that are not early, module index
//! files, Linux firmware).

pub mod rootfs;

use backhand::compression::{CompressionOptions, Compressor, Gzip, Zstd};
use backhand::{CompressionExtra, ExtraXz, FilesystemCompressor, FilesystemWriter, NodeHeader};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A failure building or writing a squashfs image.
#[derive(Debug, thiserror::Error)]
pub enum SquashfsError {
    /// A path is not a clean relative path, or is added twice.
    #[error("squashfs path {path:?}: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// A source could not be read.
    #[error("squashfs source {}: {source}", path.display())]
    Source {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A source directory holds a file type squashfs images of Basalt do not carry.
    #[error("squashfs source {}: unsupported file type (only files, directories, symlinks)", path.display())]
    Unsupported {
        /// The entry.
        path: PathBuf,
    },
    /// The options are invalid.
    #[error("squashfs options: {0}")]
    Options(String),
    /// backhand failed.
    #[error("writing squashfs {}: {message}", path.display())]
    Write {
        /// The image.
        path: PathBuf,
        /// backhand's message.
        message: String,
    },
}

/// Compression of data and metadata blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SquashfsCompression {
    /// xz (liblzma preset `level`, 0-9; dictionary = block size).
    Xz,
    /// gzip/zlib (`level` 1-9, window 15).
    Gzip,
    /// zstd (`level` 1-22).
    Zstd,
}

/// How to write an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashfsOptions {
    /// Compressor.
    pub compression: SquashfsCompression,
    /// Compression level (see [`SquashfsCompression`]).
    pub level: u32,
    /// Data block size: a power of two from 4 KiB to 1 MiB.
    pub block_size: u32,
    /// mtime of every inode and of the superblock (`SOURCE_DATE_EPOCH`).
    pub mtime: u32,
}

impl Default for SquashfsOptions {
    /// zstd level 15 (mksquashfs's default zstd level), 128 KiB blocks, mtime 0.
    fn default() -> Self {
        SquashfsOptions {
            compression: SquashfsCompression::Zstd,
            level: 15,
            block_size: 128 * 1024,
            mtime: 0,
        }
    }
}

impl SquashfsOptions {
    fn check(&self) -> Result<(), SquashfsError> {
        let bs = self.block_size;
        if !(4096..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
            return Err(SquashfsError::Options(format!(
                "block size {bs} is not a power of two from 4096 to 1048576"
            )));
        }
        let max = match self.compression {
            SquashfsCompression::Xz | SquashfsCompression::Gzip => 9,
            SquashfsCompression::Zstd => 22,
        };
        if self.level == 0 && self.compression != SquashfsCompression::Xz || self.level > max {
            return Err(SquashfsError::Options(format!(
                "level {} out of range for {:?} (max {max})",
                self.level, self.compression
            )));
        }
        Ok(())
    }

    fn compressor(&self) -> Result<FilesystemCompressor, SquashfsError> {
        let opt = |e: backhand::BackhandError| SquashfsError::Options(e.to_string());
        match self.compression {
            SquashfsCompression::Zstd => FilesystemCompressor::new(
                Compressor::Zstd,
                Some(CompressionOptions::Zstd(Zstd {
                    compression_level: self.level,
                })),
            )
            .map_err(opt),
            SquashfsCompression::Gzip => FilesystemCompressor::new(
                Compressor::Gzip,
                Some(CompressionOptions::Gzip(Gzip {
                    compression_level: self.level,
                    window_size: 15,
                    strategies: 0,
                })),
            )
            .map_err(opt),
            SquashfsCompression::Xz => {
                let mut c = FilesystemCompressor::new(Compressor::Xz, None).map_err(opt)?;
                let mut xz = ExtraXz::default();
                xz.level(self.level).map_err(opt)?;
                c.extra(CompressionExtra::Xz(xz)).map_err(opt)?;
                Ok(c)
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Content {
    Path(PathBuf),
    /// A file decompressed (by suffix: .xz, .zst, .gz) when the image is written.
    Decompress(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Node {
    Dir { perm: u16 },
    File { perm: u16, content: Content },
    Symlink { target: String },
}

/// What a path of a [`SquashTree`] holds ([`SquashTree::entry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeEntry<'a> {
    /// A directory.
    Dir {
        /// Permission bits.
        perm: u16,
    },
    /// A regular file.
    File {
        /// Permission bits.
        perm: u16,
        /// The file its content is read from (a compressed one is decompressed); `None`
        /// when the content is in memory.
        source: Option<&'a Path>,
    },
    /// A symbolic link.
    Symlink {
        /// The link target as stored.
        target: &'a str,
    },
}

/// The entries of a squashfs image, keyed by path (parents are created as 0755 dirs).
#[derive(Debug, Clone, Default)]
pub struct SquashTree {
    nodes: BTreeMap<String, Node>,
}

impl SquashTree {
    /// An empty tree (just the root directory, 0755).
    pub fn new() -> Self {
        SquashTree::default()
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), SquashfsError> {
        let p = path.trim_start_matches('/');
        let bad = |reason| SquashfsError::BadPath {
            path: path.to_string(),
            reason,
        };
        if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad("empty, . or .. component"));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { perm: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(bad("a parent is not a directory")),
            }
        }
        match (self.nodes.get(p), &node) {
            (None, _) | (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
            _ => return Err(bad("added twice")),
        }
        self.nodes.insert(p.to_string(), node);
        Ok(())
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, perm: u16) -> Result<(), SquashfsError> {
        self.insert(
            path,
            Node::Dir {
                perm: perm & 0o7777,
            },
        )
    }

    /// Adds a file read from `source` when the image is written.
    pub fn add_file_from(
        &mut self,
        path: &str,
        perm: u16,
        source: &Path,
    ) -> Result<(), SquashfsError> {
        let content = Content::Path(source.to_path_buf());
        self.insert(
            path,
            Node::File {
                perm: perm & 0o7777,
                content,
            },
        )
    }

    /// Adds a file whose compressed `source` (`.xz`, `.zst`, `.gz`) is decompressed when
    /// the image is written.
    pub fn add_decompressed_from(
        &mut self,
        path: &str,
        perm: u16,
        source: &Path,
    ) -> Result<(), SquashfsError> {
        let content = Content::Decompress(source.to_path_buf());
        self.insert(
            path,
            Node::File {
                perm: perm & 0o7777,
                content,
            },
        )
    }

    /// Adds a file with in-memory content.
    pub fn add_file(&mut self, path: &str, perm: u16, data: Vec<u8>) -> Result<(), SquashfsError> {
        self.insert(
            path,
            Node::File {
                perm: perm & 0o7777,
                content: Content::Bytes(data),
            },
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), SquashfsError> {
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Paths of all entries, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// The entry at `path` (`usr/bin/x` or `/usr/bin/x`), if any.
    pub fn entry(&self, path: &str) -> Option<TreeEntry<'_>> {
        Some(match self.nodes.get(path.trim_start_matches('/'))? {
            Node::Dir { perm } => TreeEntry::Dir { perm: *perm },
            Node::File { perm, content } => TreeEntry::File {
                perm: *perm,
                source: match content {
                    Content::Path(p) | Content::Decompress(p) => Some(p.as_path()),
                    Content::Bytes(_) => None,
                },
            },
            Node::Symlink { target } => TreeEntry::Symlink { target },
        })
    }

    /// The tree of directory `dir` (modes normalised, see the module documentation).
    /// Sockets, FIFOs and device nodes are refused.
    pub fn from_dir(dir: &Path) -> Result<SquashTree, SquashfsError> {
        let mut tree = SquashTree::new();
        add_dir_recursive(&mut tree, dir, "")?;
        Ok(tree)
    }
}

fn add_dir_recursive(tree: &mut SquashTree, dir: &Path, prefix: &str) -> Result<(), SquashfsError> {
    let src = |path: &Path, source| SquashfsError::Source {
        path: path.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| src(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| src(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e
            .file_name()
            .into_string()
            .map_err(|_| SquashfsError::BadPath {
                path: path.display().to_string(),
                reason: "not UTF-8",
            })?;
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(|err| src(&path, err))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            tree.add_dir(&rel, 0o755)?;
            add_dir_recursive(tree, &path, &rel)?;
        } else if ft.is_file() {
            let perm = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            tree.add_file_from(&rel, perm, &path)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|err| src(&path, err))?;
            tree.add_symlink(&rel, &target.to_string_lossy())?;
        } else {
            return Err(SquashfsError::Unsupported { path });
        }
    }
    Ok(())
}

/// Opens its source only when backhand first reads it, so a large tree does not hold one
/// open file (or one decompressed module) per entry.
struct LazyReader {
    content: Content,
    inner: Option<Box<dyn Read>>,
}

impl Read for LazyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inner.is_none() {
            let content = std::mem::replace(&mut self.content, Content::Bytes(Vec::new()));
            let r: Box<dyn Read> = match content {
                Content::Path(p) => Box::new(io::BufReader::new(fs::File::open(p)?)),
                Content::Decompress(p) => {
                    let data = crate::inputs::modules::read_maybe_compressed(&p)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    Box::new(io::Cursor::new(data))
                }
                Content::Bytes(b) => Box::new(io::Cursor::new(b)),
            };
            self.inner = Some(r);
        }
        match self.inner.as_mut() {
            Some(r) => r.read(buf),
            None => Ok(0),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashfsReport {
    /// Image size in bytes (a multiple of 4096).
    pub bytes: u64,
    /// Number of entries (without the root).
    pub entries: usize,
}

/// Writes `tree` as a squashfs image to `out` (created or truncated).
pub fn write_squashfs(
    tree: &SquashTree,
    out: &Path,
    opts: &SquashfsOptions,
) -> Result<SquashfsReport, SquashfsError> {
    opts.check()?;
    let werr = |message: String| SquashfsError::Write {
        path: out.to_path_buf(),
        message,
    };
    let mut fs_w = FilesystemWriter::default();
    fs_w.set_block_size(opts.block_size);
    fs_w.set_time(opts.mtime);
    fs_w.set_only_root_id();
    fs_w.set_root_mode(0o755);
    fs_w.set_root_uid(0);
    fs_w.set_root_gid(0);
    fs_w.set_compressor(opts.compressor()?);
    fs_w.set_kib_padding(4);
    let header = |perm: u16| NodeHeader::new(perm, 0, 0, opts.mtime);
    for (path, node) in &tree.nodes {
        let r = match node {
            Node::Dir { perm } => fs_w.push_dir(path, header(*perm)),
            Node::Symlink { target } => fs_w.push_symlink(target.as_str(), path, header(0o777)),
            Node::File { perm, content } => {
                let reader = LazyReader {
                    content: content.clone(),
                    inner: None,
                };
                fs_w.push_file(reader, path, header(*perm))
            }
        };
        r.map_err(|e| werr(format!("{path}: {e}")))?;
    }
    let file = fs::File::create(out).map_err(|e| werr(e.to_string()))?;
    let mut w = io::BufWriter::with_capacity(1 << 20, file);
    let (superblock, _) = fs_w.write(&mut w).map_err(|e| werr(e.to_string()))?;
    let file = w.into_inner().map_err(|e| werr(e.to_string()))?;
    // backhand writes a duplicate file's data, then seeks back over it: whatever lies past
    // the padded end is stale. Cut the image at the 4096-byte boundary after bytes_used.
    let bytes = superblock.bytes_used.div_ceil(4096) * 4096;
    file.set_len(bytes).map_err(|e| werr(e.to_string()))?;
    file.sync_all().map_err(|e| werr(e.to_string()))?;
    Ok(SquashfsReport {
        bytes,
        entries: tree.nodes.len(),
    })
}

/// Squashes directory `dir` into `out` (the benchmark entry point).
pub fn squash_dir(
    dir: &Path,
    out: &Path,
    opts: &SquashfsOptions,
) -> Result<SquashfsReport, SquashfsError> {
    write_squashfs(&SquashTree::from_dir(dir)?, out, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let mut o = SquashfsOptions::default();
        assert!(o.check().is_ok());
        o.block_size = 3000;
        assert!(o.check().is_err());
        o = SquashfsOptions {
            level: 23,
            ..SquashfsOptions::default()
        };
        assert!(o.check().is_err());
        o = SquashfsOptions {
            compression: SquashfsCompression::Xz,
            level: 0,
            ..SquashfsOptions::default()
        };
        assert!(o.check().is_ok());
    }

    #[test]
    fn tree_paths() {
        let mut t = SquashTree::new();
        t.add_file("lib/modules/x/a.ko", 0o644, vec![1]).unwrap();
        t.add_symlink("lib/firmware/b", "a").unwrap();
        assert_eq!(
            t.entry("/lib/firmware/b"),
            Some(TreeEntry::Symlink { target: "a" })
        );
        assert_eq!(t.entry("lib"), Some(TreeEntry::Dir { perm: 0o755 }));
        assert_eq!(
            t.entry("lib/modules/x/a.ko"),
            Some(TreeEntry::File {
                perm: 0o644,
                source: None
            })
        );
        assert_eq!(t.entry("lib/nothing"), None);
        assert!(t.add_file("lib/modules/x/a.ko", 0o644, vec![]).is_err());
        assert!(t.add_file("lib/modules/x/a.ko/y", 0o644, vec![]).is_err());
        let p: Vec<&str> = t.paths().collect();
        assert_eq!(
            p,
            [
                "lib",
                "lib/firmware",
                "lib/firmware/b",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko"
            ]
        );
    }

    #[test]
    fn same_tree_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = SquashTree::new();
        t.add_file(
            "a/big",
            0o644,
            (0..300_000u32)
                .flat_map(|i| (i % 251).to_le_bytes())
                .collect(),
        )
        .unwrap();
        t.add_file("a/small", 0o755, b"#!/bin/sh\n".to_vec())
            .unwrap();
        t.add_symlink("a/link", "small").unwrap();
        for c in [
            SquashfsCompression::Zstd,
            SquashfsCompression::Xz,
            SquashfsCompression::Gzip,
        ] {
            let o = SquashfsOptions {
                compression: c,
                level: 6,
                mtime: 1_700_000_000,
                ..SquashfsOptions::default()
            };
            let (p1, p2) = (dir.path().join("1"), dir.path().join("2"));
            let r = write_squashfs(&t, &p1, &o).unwrap();
            write_squashfs(&t.clone(), &p2, &o).unwrap();
            assert_eq!(r.bytes % 4096, 0);
            assert_eq!(fs::read(&p1).unwrap(), fs::read(&p2).unwrap(), "{c:?}");
            assert_eq!(&fs::read(&p1).unwrap()[..4], b"hsqs");
        }
    }
}
