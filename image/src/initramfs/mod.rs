//! The slot's initramfs: `/init` (machined), the early kernel modules and their load list,
//! as a deterministic, compressed cpio "newc" archive.
//!
//! [`Initramfs`] collects entries by path (parents are created as needed) and writes them
//! sorted by path, so a directory always precedes its contents, with uid/gid 0, one mtime
//! (the caller's `SOURCE_DATE_EPOCH`), inode numbers 1, 2, 3, … in that order, nlink 1
//! (directories 2) and device numbers 0: the same inputs give byte-identical output.
//! [`Initramfs::write`] compresses with gzip (flate2, level 9, no name, mtime 0) or zstd
//! (level 19, one thread, with checksum): Debian's 6.1 kernels (arm64 and amd64) have
//! `CONFIG_RD_GZIP=y` and `CONFIG_RD_ZSTD=y`.
//!
//! [`early_initramfs`] lays out a Basalt initramfs:
//!
//! ```text
//! /init                                      machined (0755)
//! /dev/console  c 5 1 (0600)                 the kernel opens it before running /init
//! /dev/null     c 1 3 (0666)
//! /proc /sys /run /tmp (1777)                mount points
//! /lib/modules/<release>/<path>.ko           early modules, uncompressed
//! /lib/modules/<release>/basalt-early-modules
//! ```
//!
//! `basalt-early-modules` lists the modules in load order, one per line, as paths relative
//! to `/lib/modules/<release>/` (like `modules.order`), e.g. `kernel/fs/squashfs/squashfs.ko`.
//! machined loads each with `finit_module(2)` in that order; a module already loaded
//! (`EEXIST`) is fine.

pub mod cpio;

use crate::inputs::{ModuleIndex, ModulesError, ResolvedModules};
use cpio::{CpioWriter, Header, mode};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Name of the load-order file in `/lib/modules/<release>/`.
pub const EARLY_MODULES_FILE: &str = "basalt-early-modules";

/// gzip level used for initramfs images.
pub const GZIP_LEVEL: u32 = 9;
/// zstd level used for initramfs images.
pub const ZSTD_LEVEL: i32 = 19;

/// A failure building or writing an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A path is not a clean relative path.
    #[error("initramfs path {path:?} is invalid: {reason}")]
    BadPath {
        /// The path.
        path: String,
        /// Why.
        reason: &'static str,
    },
    /// Two entries have the same path, or a path runs through a non-directory.
    #[error("initramfs path {path} is added twice or its parent is not a directory")]
    Conflict {
        /// The path.
        path: String,
    },
    /// A source file could not be read.
    #[error("initramfs source {}: {source}", path.display())]
    Source {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the archive failed.
    #[error("writing initramfs entry {path}: {source}")]
    Write {
        /// The entry being written (or `trailer`).
        path: String,
        /// The I/O error.
        source: io::Error,
    },
    /// A module could not be read.
    #[error(transparent)]
    Modules(#[from] ModulesError),
}

/// Compression of the initramfs image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InitramfsCompression {
    /// Plain cpio.
    None,
    /// gzip, level [`GZIP_LEVEL`].
    Gzip,
    /// zstd, level [`ZSTD_LEVEL`].
    Zstd,
}

#[derive(Debug, Clone)]
enum Node {
    Dir { perm: u32 },
    File { perm: u32, data: FileData },
    Symlink { target: String },
    CharDevice { perm: u32, major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
enum FileData {
    Bytes(Vec<u8>),
    Path(PathBuf),
}

/// The entries of an initramfs, keyed by path.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    nodes: BTreeMap<String, Node>,
}

fn clean(path: &str) -> Result<String, InitramfsError> {
    let p = path.trim_start_matches('/');
    let bad = |reason| InitramfsError::BadPath {
        path: path.to_string(),
        reason,
    };
    if p.is_empty() {
        return Err(bad("empty"));
    }
    if p.contains('\0') {
        return Err(bad("contains NUL"));
    }
    if p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return Err(bad("empty, . or .. component"));
    }
    Ok(p.to_string())
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Initramfs::default()
    }

    /// The standard skeleton: `/dev/console`, `/dev/null`, `/proc`, `/sys`, `/run`, `/tmp`.
    pub fn with_skeleton() -> Self {
        let mut fs = Initramfs::new();
        // These paths are constant and valid: the calls cannot fail on an empty archive.
        let _ = fs.add_char_device("dev/console", 0o600, 5, 1);
        let _ = fs.add_char_device("dev/null", 0o666, 1, 3);
        for d in ["proc", "sys", "run"] {
            let _ = fs.add_dir(d, 0o755);
        }
        let _ = fs.add_dir("tmp", 0o1777);
        fs
    }

    fn insert(&mut self, path: &str, node: Node) -> Result<(), InitramfsError> {
        let p = clean(path)?;
        let mut parent = String::new();
        for comp in p
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, d)| d)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { perm: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(InitramfsError::Conflict { path: p }),
            }
        }
        match (self.nodes.get(&p), &node) {
            (None, _) => {}
            // an implicit parent directory may be given its mode later
            (Some(Node::Dir { .. }), Node::Dir { .. }) => {}
            _ => return Err(InitramfsError::Conflict { path: p }),
        }
        self.nodes.insert(p, node);
        Ok(())
    }

    /// Adds a directory with permission bits `perm`.
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::Dir {
                perm: perm & 0o7777,
            },
        )
    }

    /// Adds a regular file with in-memory content.
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::File {
                perm: perm & 0o7777,
                data: FileData::Bytes(data),
            },
        )
    }

    /// Adds a regular file read from `source` when the archive is written.
    pub fn add_file_from(
        &mut self,
        path: &str,
        perm: u32,
        source: &Path,
    ) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::File {
                perm: perm & 0o7777,
                data: FileData::Path(source.to_path_buf()),
            },
        )
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        if target.is_empty() || target.contains('\0') {
            return Err(InitramfsError::BadPath {
                path: path.to_string(),
                reason: "symlink target empty or contains NUL",
            });
        }
        self.insert(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        self.insert(
            path,
            Node::CharDevice {
                perm: perm & 0o7777,
                major,
                minor,
            },
        )
    }

    /// Paths of all entries, sorted (the archive order).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Writes the uncompressed cpio archive with every mtime set to `mtime`.
    pub fn write_cpio<W: Write>(&self, out: W, mtime: u32) -> Result<W, InitramfsError> {
        let mut w = CpioWriter::new(out);
        for (path, node) in &self.nodes {
            let werr = |source| InitramfsError::Write {
                path: path.clone(),
                source,
            };
            let mut h = Header {
                mtime,
                nlink: 1,
                ..Header::default()
            };
            match node {
                Node::Dir { perm } => {
                    h.mode = mode::S_IFDIR | perm;
                    h.nlink = 2;
                    w.entry_bytes(path, &h, &[]).map_err(werr)?;
                }
                Node::File { perm, data } => {
                    h.mode = mode::S_IFREG | perm;
                    match data {
                        FileData::Bytes(b) => w.entry_bytes(path, &h, b).map_err(werr)?,
                        FileData::Path(p) => {
                            let serr = |source| InitramfsError::Source {
                                path: p.clone(),
                                source,
                            };
                            let mut f = fs::File::open(p).map_err(serr)?;
                            let len = f.metadata().map_err(serr)?.len();
                            w.entry(path, &h, len, &mut f).map_err(werr)?;
                        }
                    }
                }
                Node::Symlink { target } => {
                    h.mode = mode::S_IFLNK | 0o777;
                    w.entry_bytes(path, &h, target.as_bytes()).map_err(werr)?;
                }
                Node::CharDevice { perm, major, minor } => {
                    h.mode = mode::S_IFCHR | perm;
                    h.rdev_major = *major;
                    h.rdev_minor = *minor;
                    w.entry_bytes(path, &h, &[]).map_err(werr)?;
                }
            }
        }
        w.finish().map_err(|source| InitramfsError::Write {
            path: "trailer".to_string(),
            source,
        })
    }

    /// Writes the archive compressed with `compression` (see the module documentation).
    pub fn write<W: Write>(
        &self,
        out: W,
        compression: InitramfsCompression,
        mtime: u32,
    ) -> Result<W, InitramfsError> {
        let werr = |source| InitramfsError::Write {
            path: "compressed stream".to_string(),
            source,
        };
        match compression {
            InitramfsCompression::None => self.write_cpio(out, mtime),
            InitramfsCompression::Gzip => {
                let enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(3)
                    .write(out, flate2::Compression::new(GZIP_LEVEL));
                self.write_cpio(enc, mtime)?.finish().map_err(werr)
            }
            InitramfsCompression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(werr)?;
                enc.include_checksum(true).map_err(werr)?;
                self.write_cpio(enc, mtime)?.finish().map_err(werr)
            }
        }
    }

    /// Writes the archive to the file `path` (see [`Initramfs::write`]).
    pub fn write_file(
        &self,
        path: &Path,
        compression: InitramfsCompression,
        mtime: u32,
    ) -> Result<(), InitramfsError> {
        let werr = |source| InitramfsError::Write {
            path: path.display().to_string(),
            source,
        };
        let f = fs::File::create(path).map_err(werr)?;
        let mut f = self.write(io::BufWriter::new(f), compression, mtime)?;
        f.flush().map_err(werr)
    }
}

/// A Basalt initramfs: skeleton, `/init` from `init`, the `early` modules (uncompressed)
/// and their load list. More files can be added before writing.
pub fn early_initramfs(
    init: &Path,
    index: &ModuleIndex,
    early: &ResolvedModules,
) -> Result<Initramfs, InitramfsError> {
    let mut fs = Initramfs::with_skeleton();
    fs.add_file_from("init", 0o755, init)?;
    let base = format!("lib/modules/{}", index.release());
    let mut list = String::new();
    for m in &early.modules {
        let data = index.read_module(m)?;
        fs.add_file(&format!("{base}/{}", m.installed_path()), 0o644, data)?;
        list.push_str(m.installed_path());
        list.push('\n');
    }
    fs.add_file(
        &format!("{base}/{EARLY_MODULES_FILE}"),
        0o644,
        list.into_bytes(),
    )?;
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_sorted() {
        let mut fs = Initramfs::new();
        fs.add_file("lib/modules/x/a.ko", 0o644, b"a".to_vec())
            .unwrap();
        fs.add_symlink("bin/sh", "busybox").unwrap();
        fs.add_dir("lib", 0o700).unwrap();
        let paths: Vec<&str> = fs.paths().collect();
        assert_eq!(
            paths,
            [
                "bin",
                "bin/sh",
                "lib",
                "lib/modules",
                "lib/modules/x",
                "lib/modules/x/a.ko"
            ]
        );
    }

    #[test]
    fn conflicts_and_bad_paths_are_errors() {
        let mut fs = Initramfs::new();
        fs.add_file("init", 0o755, vec![]).unwrap();
        assert!(matches!(
            fs.add_file("/init", 0o755, vec![]),
            Err(InitramfsError::Conflict { .. })
        ));
        assert!(matches!(
            fs.add_file("init/x", 0o755, vec![]),
            Err(InitramfsError::Conflict { .. })
        ));
        let err = fs.add_dir("a/../b", 0o755).unwrap_err().to_string();
        assert_eq!(
            err,
            "initramfs path \"a/../b\" is invalid: empty, . or .. component"
        );
    }

    #[test]
    fn output_is_deterministic_and_compressed() {
        let mut fs = Initramfs::with_skeleton();
        fs.add_file("init", 0o755, vec![7; 100_000]).unwrap();
        for c in [
            InitramfsCompression::None,
            InitramfsCompression::Gzip,
            InitramfsCompression::Zstd,
        ] {
            let a = fs.write(Vec::new(), c, 1_700_000_000).unwrap();
            let b = fs.clone().write(Vec::new(), c, 1_700_000_000).unwrap();
            assert_eq!(a, b);
            match c {
                InitramfsCompression::None => assert!(a.starts_with(b"070701")),
                InitramfsCompression::Gzip => assert!(a.starts_with(&[0x1f, 0x8b])),
                InitramfsCompression::Zstd => assert!(a.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])),
            }
        }
    }
}
