//! Reading Debian packages without dpkg.
//!
//! A `.deb` is an `ar` archive holding `debian-binary`, `control.tar.*` and `data.tar.*`;
//! the data tar is compressed with xz, zstd or gzip (or not at all). [`DebArchive`] streams
//! the data tar once per operation and never unpacks more than was asked for.
//!
//! Paths are normalised the way `dpkg -c` shows them without the leading `.`: the archive's
//! `./usr/lib/x` is `usr/lib/x` here, and callers may write `/usr/lib/x` or `usr/lib/x`.
//!
//! Extraction ([`DebArchive::extract`]) takes a list of [`Extract`] selections (single files
//! or whole trees) and writes them under a destination directory in one pass. Modes are
//! normalised (files 0644, or 0755 when any execute bit is set; directories 0755), owners and
//! times are not kept: the image writers set them. A selected file that is a symlink or hard
//! link inside the package is followed (up to 8 hops, each costing one more pass over the
//! archive). Entries with absolute or `..` paths are rejected. Every selection that matches
//! nothing is reported in one error naming the package file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// A failure reading or extracting a Debian package.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// The package file could not be read.
    #[error("cannot read {deb}: {source}")]
    Io {
        /// The package file name.
        deb: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The file is not a Debian package (bad `ar` archive or no `data.tar.*` member).
    #[error("{deb} is not a Debian package: {reason}")]
    NotADeb {
        /// The package file name.
        deb: String,
        /// What is wrong.
        reason: String,
    },
    /// The data tar could not be decompressed or parsed.
    #[error("{deb}: corrupt {member}: {source}")]
    Corrupt {
        /// The package file name.
        deb: String,
        /// The member, e.g. `data.tar.xz`.
        member: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Selected paths were not found.
    #[error("{} not found in {deb}", missing.join(", "))]
    NotFound {
        /// The package file name.
        deb: String,
        /// Each missing selection, described (e.g. `DTB broadcom/bcm2711-rpi-4-b.dtb`).
        missing: Vec<String>,
    },
    /// An entry has an unsafe path or link.
    #[error("{deb}: unsafe entry {path}: {reason}")]
    Unsafe {
        /// The package file name.
        deb: String,
        /// The entry path.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// Writing an extracted file failed.
    #[error("cannot write {path} (from {deb}): {source}")]
    Write {
        /// The package file name.
        deb: String,
        /// The destination path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// What one entry of the data tar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebEntryKind {
    /// A regular file of `size` bytes.
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link to `target` (as stored).
    Symlink {
        /// The link target.
        target: String,
    },
    /// A hard link to another entry (normalised archive path).
    HardLink {
        /// The linked entry.
        target: String,
    },
    /// Anything else (device nodes, FIFOs).
    Other,
}

/// One entry of a package's data tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebEntry {
    /// Normalised path (`usr/lib/x`), no trailing slash.
    pub path: String,
    /// Entry type.
    pub kind: DebEntryKind,
    /// Permission bits as stored.
    pub mode: u32,
}

/// One selection for [`DebArchive::extract`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extract {
    /// One file, written to `dest` (relative to the extraction root).
    File {
        /// What it is, for errors (e.g. `DTB broadcom/bcm2711-rpi-4-b.dtb`).
        what: String,
        /// Path inside the package.
        path: String,
        /// Destination relative to the extraction root.
        dest: PathBuf,
        /// A missing optional file is not an error.
        optional: bool,
    },
    /// Every entry below `prefix`, written below `dest` with the same relative paths
    /// (symlinks inside the tree are kept as symlinks).
    Tree {
        /// What it is, for errors.
        what: String,
        /// Directory inside the package.
        prefix: String,
        /// Destination directory relative to the extraction root.
        dest: PathBuf,
    },
}

impl Extract {
    /// A single file.
    pub fn file(what: impl Into<String>, path: &str, dest: impl Into<PathBuf>) -> Self {
        Extract::File {
            what: what.into(),
            path: normalize(path),
            dest: dest.into(),
            optional: false,
        }
    }

    /// A single file that may be absent.
    pub fn optional_file(what: impl Into<String>, path: &str, dest: impl Into<PathBuf>) -> Self {
        Extract::File {
            what: what.into(),
            path: normalize(path),
            dest: dest.into(),
            optional: true,
        }
    }

    fn optional(&self) -> bool {
        matches!(self, Extract::File { optional: true, .. })
    }

    /// A directory tree.
    pub fn tree(what: impl Into<String>, prefix: &str, dest: impl Into<PathBuf>) -> Self {
        Extract::Tree {
            what: what.into(),
            prefix: normalize(prefix),
            dest: dest.into(),
        }
    }

    fn what(&self) -> &str {
        match self {
            Extract::File { what, .. } | Extract::Tree { what, .. } => what,
        }
    }
}

/// Normalises a package path: no leading `./` or `/`, no trailing `/`.
pub fn normalize(path: &str) -> String {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    p.trim_end_matches('/').to_string()
}

/// An opened `.deb` file.
#[derive(Debug, Clone)]
pub struct DebArchive {
    path: PathBuf,
    name: String,
    member: String,
}

impl DebArchive {
    /// Opens `path` and checks it is a Debian package with a data tar.
    pub fn open(path: &Path) -> Result<DebArchive, DebError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let mut deb = DebArchive {
            path: path.to_path_buf(),
            name,
            member: String::new(),
        };
        let mut found = None;
        deb.with_ar(|ar, deb_name| {
            let mut members = Vec::new();
            while let Some(entry) = ar.next_entry() {
                let entry = entry.map_err(|e| not_a_deb(deb_name, &e.to_string()))?;
                let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
                members.push(id.trim_end_matches('/').to_string());
            }
            if members.first().map(String::as_str) != Some("debian-binary") {
                return Err(not_a_deb(deb_name, "first member is not debian-binary"));
            }
            found = members.into_iter().find(|m| m.starts_with("data.tar"));
            Ok(())
        })?;
        deb.member = found.ok_or_else(|| not_a_deb(&deb.name, "no data.tar.* member"))?;
        Ok(deb)
    }

    /// The package file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The package file's name (used in every error).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The data member's name, e.g. `data.tar.xz`.
    pub fn data_member(&self) -> &str {
        &self.member
    }

    fn with_ar<T>(
        &self,
        f: impl FnOnce(&mut ar::Archive<fs::File>, &str) -> Result<T, DebError>,
    ) -> Result<T, DebError> {
        let file = fs::File::open(&self.path).map_err(|source| DebError::Io {
            deb: self.name.clone(),
            source,
        })?;
        let mut ar = ar::Archive::new(file);
        f(&mut ar, &self.name)
    }

    /// Streams the data tar, calling `visit` for every entry with a reader of its content.
    pub fn for_each(
        &self,
        mut visit: impl FnMut(&DebEntry, &mut dyn Read) -> Result<(), DebError>,
    ) -> Result<(), DebError> {
        self.with_ar(|ar, deb| {
            while let Some(entry) = ar.next_entry() {
                let entry = entry.map_err(|e| not_a_deb(deb, &e.to_string()))?;
                let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
                if id.trim_end_matches('/') != self.member {
                    continue;
                }
                let reader = decompressor(&self.member, entry).map_err(|e| self.corrupt(e))?;
                return self.walk_tar(reader, &mut visit);
            }
            Err(not_a_deb(deb, "data member vanished"))
        })
    }

    fn walk_tar(
        &self,
        reader: Box<dyn Read + '_>,
        visit: &mut dyn FnMut(&DebEntry, &mut dyn Read) -> Result<(), DebError>,
    ) -> Result<(), DebError> {
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().map_err(|e| self.corrupt(e))? {
            let mut entry = entry.map_err(|e| self.corrupt(e))?;
            let raw = entry.path_bytes().into_owned();
            let path = normalize(&String::from_utf8_lossy(&raw));
            if path.is_empty() {
                continue;
            }
            check_safe(&self.name, &path)?;
            let header = entry.header();
            let mode = header.mode().map_err(|e| self.corrupt(e))?;
            let link = || -> Result<String, DebError> {
                let l = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                Ok(l)
            };
            let kind = match header.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => DebEntryKind::File {
                    size: header.size().map_err(|e| self.corrupt(e))?,
                },
                tar::EntryType::Directory => DebEntryKind::Dir,
                tar::EntryType::Symlink => DebEntryKind::Symlink { target: link()? },
                tar::EntryType::Link => DebEntryKind::HardLink {
                    target: normalize(&link()?),
                },
                _ => DebEntryKind::Other,
            };
            let info = DebEntry { path, kind, mode };
            visit(&info, &mut entry)?;
        }
        Ok(())
    }

    fn corrupt(&self, source: io::Error) -> DebError {
        DebError::Corrupt {
            deb: self.name.clone(),
            member: self.member.clone(),
            source,
        }
    }

    /// Every entry of the data tar, in archive order.
    pub fn list(&self) -> Result<Vec<DebEntry>, DebError> {
        let mut out = Vec::new();
        self.for_each(|e, _| {
            out.push(e.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// The content of one regular file (links followed); `what` describes it in errors.
    pub fn read_file(&self, what: &str, path: &str) -> Result<Vec<u8>, DebError> {
        let mut wanted = normalize(path);
        for _ in 0..8 {
            let mut data = None;
            let mut next = None;
            self.for_each(|e, r| {
                if e.path == wanted {
                    match &e.kind {
                        DebEntryKind::File { .. } => {
                            let mut buf = Vec::new();
                            r.read_to_end(&mut buf).map_err(|err| self.corrupt(err))?;
                            data = Some(buf);
                        }
                        DebEntryKind::Symlink { target } => {
                            next = Some(resolve_symlink(&e.path, target));
                        }
                        DebEntryKind::HardLink { target } => next = Some(target.clone()),
                        _ => {}
                    }
                }
                Ok(())
            })?;
            if let Some(d) = data {
                return Ok(d);
            }
            match next {
                Some(n) => wanted = n,
                None => break,
            }
        }
        Err(DebError::NotFound {
            deb: self.name.clone(),
            missing: vec![what.to_string()],
        })
    }

    /// Extracts `selections` below `root` in one pass (plus one per link hop); returns the
    /// written files (absolute paths), sorted.
    pub fn extract(&self, selections: &[Extract], root: &Path) -> Result<Vec<PathBuf>, DebError> {
        // wanted single files: archive path -> (selection index, dest)
        let mut files: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
        for (i, s) in selections.iter().enumerate() {
            if let Extract::File { path, dest, .. } = s {
                files
                    .entry(path.clone())
                    .or_default()
                    .push((i, dest.clone()));
            }
        }
        let mut satisfied = vec![false; selections.len()];
        let mut written = BTreeSet::new();
        let mut first_pass = true;
        for _ in 0..9 {
            if files.is_empty() && !first_pass {
                break;
            }
            let mut follow: BTreeMap<String, Vec<(usize, PathBuf)>> = BTreeMap::new();
            self.for_each(|e, r| {
                if let Some(targets) = files.get(&e.path) {
                    match &e.kind {
                        DebEntryKind::File { .. } => {
                            let mut buf = Vec::new();
                            r.read_to_end(&mut buf).map_err(|err| self.corrupt(err))?;
                            for (i, dest) in targets {
                                let out = root.join(dest);
                                self.write_file(&out, &buf, e.mode)?;
                                written.insert(out);
                                satisfied[*i] = true;
                            }
                        }
                        DebEntryKind::Symlink { target } => follow
                            .entry(resolve_symlink(&e.path, target))
                            .or_default()
                            .extend(targets.iter().cloned()),
                        DebEntryKind::HardLink { target } => follow
                            .entry(target.clone())
                            .or_default()
                            .extend(targets.iter().cloned()),
                        _ => {}
                    }
                }
                if first_pass {
                    self.extract_tree_entry(e, r, selections, root, &mut satisfied, &mut written)?;
                }
                Ok(())
            })?;
            first_pass = false;
            files = follow;
        }
        let missing: Vec<String> = selections
            .iter()
            .zip(&satisfied)
            .filter(|(s, ok)| !**ok && !s.optional())
            .map(|(s, _)| s.what().to_string())
            .collect();
        if !missing.is_empty() {
            return Err(DebError::NotFound {
                deb: self.name.clone(),
                missing,
            });
        }
        Ok(written.into_iter().collect())
    }

    fn extract_tree_entry(
        &self,
        e: &DebEntry,
        r: &mut dyn Read,
        selections: &[Extract],
        root: &Path,
        satisfied: &mut [bool],
        written: &mut BTreeSet<PathBuf>,
    ) -> Result<(), DebError> {
        for (i, s) in selections.iter().enumerate() {
            let Extract::Tree { prefix, dest, .. } = s else {
                continue;
            };
            let rel = if e.path == *prefix {
                ""
            } else if let Some(rest) = e.path.strip_prefix(prefix.as_str())
                && let Some(rest) = rest.strip_prefix('/')
            {
                rest
            } else {
                continue;
            };
            satisfied[i] = true;
            let out = if rel.is_empty() {
                root.join(dest)
            } else {
                root.join(dest).join(rel)
            };
            match &e.kind {
                DebEntryKind::Dir => {
                    fs::create_dir_all(&out).map_err(|source| self.write_err(&out, source))?
                }
                DebEntryKind::File { .. } => {
                    let mut buf = Vec::new();
                    r.read_to_end(&mut buf).map_err(|err| self.corrupt(err))?;
                    self.write_file(&out, &buf, e.mode)?;
                    written.insert(out);
                }
                DebEntryKind::Symlink { target } => {
                    self.make_parent(&out)?;
                    let _ = fs::remove_file(&out);
                    std::os::unix::fs::symlink(target, &out)
                        .map_err(|source| self.write_err(&out, source))?;
                }
                DebEntryKind::HardLink { target } => {
                    // Hard links point at an earlier entry; copy it if it lies in this tree.
                    let src = target
                        .strip_prefix(prefix.as_str())
                        .and_then(|r| r.strip_prefix('/'))
                        .map(|r| root.join(dest).join(r));
                    if let Some(src) = src {
                        self.make_parent(&out)?;
                        fs::copy(&src, &out).map_err(|source| self.write_err(&out, source))?;
                        written.insert(out);
                    }
                }
                DebEntryKind::Other => {}
            }
        }
        Ok(())
    }

    fn make_parent(&self, out: &Path) -> Result<(), DebError> {
        if let Some(parent) = out.parent() {
            fs::create_dir_all(parent).map_err(|source| self.write_err(parent, source))?;
        }
        Ok(())
    }

    fn write_file(&self, out: &Path, data: &[u8], mode: u32) -> Result<(), DebError> {
        use std::os::unix::fs::PermissionsExt;
        self.make_parent(out)?;
        let _ = fs::remove_file(out);
        fs::write(out, data).map_err(|source| self.write_err(out, source))?;
        let perm = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        fs::set_permissions(out, fs::Permissions::from_mode(perm))
            .map_err(|source| self.write_err(out, source))
    }

    fn write_err(&self, path: &Path, source: io::Error) -> DebError {
        DebError::Write {
            deb: self.name.clone(),
            path: path.to_path_buf(),
            source,
        }
    }
}

fn not_a_deb(deb: &str, reason: &str) -> DebError {
    DebError::NotADeb {
        deb: deb.to_string(),
        reason: reason.to_string(),
    }
}

fn decompressor<'a>(member: &str, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match member.rsplit_once('.').map(|(_, ext)| ext) {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new(r)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(r)?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(r)),
        Some("tar") => Box::new(r),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("unsupported compression of {member}"),
            ));
        }
    })
}

fn check_safe(deb: &str, path: &str) -> Result<(), DebError> {
    let bad = Path::new(path)
        .components()
        .any(|c| !matches!(c, Component::Normal(_)));
    if bad {
        return Err(DebError::Unsafe {
            deb: deb.to_string(),
            path: path.to_string(),
            reason: "absolute or contains ..".to_string(),
        });
    }
    Ok(())
}

/// The archive path a symlink at `link_path` with `target` points to (normalised; may leave
/// the archive, then it simply matches nothing).
pub fn resolve_symlink(link_path: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut p: Vec<&str> = link_path.split('/').collect();
        p.pop();
        p
    };
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize("./usr/lib/x"), "usr/lib/x");
        assert_eq!(normalize("/usr/lib/x/"), "usr/lib/x");
        assert_eq!(normalize("usr"), "usr");
        assert_eq!(normalize("./"), "");
    }

    #[test]
    fn resolves_symlinks() {
        assert_eq!(
            resolve_symlink("lib/firmware/a.bin", "b.bin"),
            "lib/firmware/b.bin"
        );
        assert_eq!(
            resolve_symlink("lib/firmware/a.bin", "../x/b.bin"),
            "lib/x/b.bin"
        );
        assert_eq!(resolve_symlink("lib/a", "/usr/lib/b"), "usr/lib/b");
    }

    #[test]
    fn refuses_unsafe_paths() {
        assert!(check_safe("x.deb", "usr/../../etc").is_err());
        assert!(check_safe("x.deb", "usr/lib").is_ok());
    }
}
