//! System extensions: optional parts of the slot's root filesystem, taken whole from pinned
//! packages and switched per board (`[extensions]` in the board file) and per build
//! ([`super::BuildRequest::containers`], `basalt-image build --no-containers`).
//!
//! The one extension is [`CONTAINERS`], the container runtime that machined drives through
//! containerd's API. From the Debian 13 packages pinned in `scripts/inputs.lock` (suite
//! `trixie`) for the board's Debian architecture it takes ([`containers_selection`]):
//!
//! ```text
//! containerd   usr/bin/containerd, usr/bin/containerd-shim-runc-v2
//! runc         usr/sbin/runc
//! libseccomp2  usr/lib/<triplet>/libseccomp.so.2 (link), usr/lib/<triplet>/libseccomp.so.2.6.0
//! libc6        usr/lib/<triplet>/ld-linux-<…>.so.<n>, usr/lib/<triplet>/libc.so.6 and the
//!              loader link the binaries' PT_INTERP goes through:
//!              usr/lib/ld-linux-aarch64.so.1 (arm64), usr/lib64/ld-linux-x86-64.so.2 (amd64)
//! ```
//!
//! and nothing else of them: not `ctr`, `containerd-shim` or `containerd-shim-runc-v1`
//! (machined speaks the API itself and runs tasks through the v2 shim), not the package's
//! `usr/bin/runc` link, no `/etc` (machined writes containerd's configuration), no
//! documentation.
//!
//! **Design.** Paths and symbolic links stay as in the packages (below `usr/`), so the
//! binaries' built-in paths hold once the node links `/usr` to the mounted root and the
//! loader path to `usr/lib` (machined does that at boot; this module only composes the
//! tree). Debian's loader searches `/usr/lib/<triplet>` by itself, so no `ld.so.cache` is
//! needed. Modes are the packages' (0755 when any execute bit is set, else 0644:
//! libseccomp's library is 0644 in its package); owners and times are the image's. Each
//! package is read in one pass; its files are written below the build's work folder and
//! read again when the squashfs is written.
//!
//! **Checks.** A path missing from its package, or present as something other than a file
//! or link, is an error naming the package and the path; every link must resolve to a file
//! of the extension; every file must be an ELF object for the board's machine, so that a
//! package pinned for the wrong architecture fails the build rather than the node.
//!
//! **Limits.** The set of paths is fixed here, not configurable per board. The libraries
//! are what `readelf -d` lists for the pinned versions: a containerd or runc that needs
//! another library must add it here. libgcc_s, which glibc loads only to cancel threads,
//! is not carried (glibc 2.41 has its `files` and `dns` NSS modules built in).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use basalt_boards::Arch;
use serde::{Deserialize, Serialize};

use crate::inputs::deb::resolve_symlink;
use crate::inputs::elf::{self, EM_AARCH64, EM_X86_64};
use crate::inputs::{DebArchive, DebCache, DebEntryKind, DebError, LockError};
use crate::squashfs::{SquashTree, SquashfsError};

/// Name of the container runtime extension (in the manifest and in errors).
pub const CONTAINERS: &str = "containers";

/// A failure adding an extension to the root filesystem. Every variant names the extension;
/// the ones about a path name its package too.
#[derive(Debug, thiserror::Error)]
pub enum ExtensionError {
    /// A package is not pinned, missing from the cache, or does not match its pin.
    #[error("extension {extension}: {source}")]
    Lock {
        /// The extension.
        extension: &'static str,
        /// The lock or cache problem (names the package).
        #[source]
        source: LockError,
    },
    /// A package could not be read.
    #[error("extension {extension}: {source}")]
    Deb {
        /// The extension.
        extension: &'static str,
        /// The package problem (names the package file).
        #[source]
        source: DebError,
    },
    /// Paths the extension needs are not in their package.
    #[error("extension {extension}: package {package} ({deb}) has no {}", paths.join(", "))]
    Missing {
        /// The extension.
        extension: &'static str,
        /// The package.
        package: String,
        /// The package file.
        deb: String,
        /// The missing paths.
        paths: Vec<String>,
    },
    /// A path is in its package, but neither as a file nor as a link to one.
    #[error("extension {extension}: {path} in package {package} is {found}, not a file or link")]
    NotAFile {
        /// The extension.
        extension: &'static str,
        /// The package.
        package: String,
        /// The path.
        path: String,
        /// What it is.
        found: String,
    },
    /// A link points to a path the extension does not carry.
    #[error(
        "extension {extension}: link {path} (package {package}) points to {target}, which the extension does not carry"
    )]
    Dangling {
        /// The extension.
        extension: &'static str,
        /// The package.
        package: String,
        /// The link.
        path: String,
        /// Its target as stored.
        target: String,
    },
    /// A file is not an ELF object for the board's machine.
    #[error(
        "extension {extension}: {path} (package {package}) is {found}, not an ELF file for {arch}"
    )]
    WrongMachine {
        /// The extension.
        extension: &'static str,
        /// The package.
        package: String,
        /// The path.
        path: String,
        /// What the file is.
        found: String,
        /// The board's architecture.
        arch: &'static str,
    },
    /// A file taken from a package could not be read back.
    #[error("extension {extension}: cannot read {}: {source}", path.display())]
    Read {
        /// The extension.
        extension: &'static str,
        /// The file in the work folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A path clashes with the rest of the root filesystem.
    #[error("extension {extension}: {source}")]
    Tree {
        /// The extension.
        extension: &'static str,
        /// The squashfs tree's error (names the path).
        #[source]
        source: SquashfsError,
    },
}

/// The paths one package gives an extension (package paths without the leading `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagePaths {
    /// The package, pinned in `scripts/inputs.lock` for the board's Debian architecture.
    pub package: &'static str,
    /// The files and links taken from it.
    pub paths: Vec<String>,
}

/// One package an extension was taken from, as pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionPackage {
    /// Package name.
    pub package: String,
    /// Pinned version.
    pub version: String,
    /// Debian architecture of the pin (`arm64`, `amd64`).
    pub arch: String,
}

/// What an extension added to the root filesystem (listed in `manifest.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionReport {
    /// The extension, e.g. [`CONTAINERS`].
    pub name: String,
    /// The packages it was taken from, in selection order.
    pub packages: Vec<ExtensionPackage>,
    /// Files and links added (directories not counted).
    pub files: u64,
    /// Uncompressed bytes of the files added.
    pub bytes: u64,
}

/// The packages and paths of the [`CONTAINERS`] extension for `arch`.
pub fn containers_selection(arch: Arch) -> Vec<PackagePaths> {
    let (triplet, loader, loader_link) = match arch {
        Arch::Aarch64 => (
            "aarch64-linux-gnu",
            "ld-linux-aarch64.so.1",
            "usr/lib/ld-linux-aarch64.so.1",
        ),
        Arch::X86_64 => (
            "x86_64-linux-gnu",
            "ld-linux-x86-64.so.2",
            "usr/lib64/ld-linux-x86-64.so.2",
        ),
    };
    let lib = |name: &str| format!("usr/lib/{triplet}/{name}");
    vec![
        PackagePaths {
            package: "containerd",
            paths: vec![
                "usr/bin/containerd".into(),
                "usr/bin/containerd-shim-runc-v2".into(),
            ],
        },
        PackagePaths {
            package: "runc",
            paths: vec!["usr/sbin/runc".into()],
        },
        PackagePaths {
            package: "libseccomp2",
            paths: vec![lib("libseccomp.so.2"), lib("libseccomp.so.2.6.0")],
        },
        PackagePaths {
            package: "libc6",
            paths: vec![lib(loader), lib("libc.so.6"), loader_link.into()],
        },
    ]
}

/// Adds the [`CONTAINERS`] extension for `arch` to `tree`, from the packages of `cache`;
/// their files are written below `work` (which must stay until the squashfs is written).
pub fn add_containers(
    tree: &mut SquashTree,
    arch: Arch,
    cache: &DebCache,
    work: &Path,
) -> Result<ExtensionReport, ExtensionError> {
    add_extension(
        tree,
        CONTAINERS,
        arch,
        &containers_selection(arch),
        cache,
        work,
    )
}

/// Adds the extension `name` made of `selection` (packages pinned for `arch`) to `tree`;
/// files are written below `work/<name>`. See the module documentation for the checks.
pub fn add_extension(
    tree: &mut SquashTree,
    name: &'static str,
    arch: Arch,
    selection: &[PackagePaths],
    cache: &DebCache,
    work: &Path,
) -> Result<ExtensionReport, ExtensionError> {
    let debian = arch.debian_arch();
    let lock = |source| ExtensionError::Lock {
        extension: name,
        source,
    };
    let mut taker = Taker {
        name,
        arch,
        tree,
        dir: work.join(name),
        files: BTreeSet::new(),
        links: Vec::new(),
        count: 0,
        bytes: 0,
    };
    let mut packages = Vec::new();
    for wanted in selection {
        let pin = cache.lock().entry(wanted.package, debian).map_err(lock)?;
        packages.push(ExtensionPackage {
            package: pin.package.clone(),
            version: pin.version.clone(),
            arch: pin.arch.clone(),
        });
        let deb = cache.open(wanted.package, debian).map_err(lock)?;
        taker.take(&deb, wanted)?;
    }
    taker.check_links()?;
    Ok(ExtensionReport {
        name: name.to_string(),
        packages,
        files: taker.count,
        bytes: taker.bytes,
    })
}

/// A wanted entry as found in a package's data tar.
enum Found {
    /// Written to `source` in the work folder.
    File {
        source: PathBuf,
        perm: u16,
        size: u64,
    },
    Link {
        target: String,
    },
    HardLink {
        target: String,
    },
    Other {
        what: &'static str,
    },
}

/// Adds the packages' entries to the tree and keeps what the checks need.
struct Taker<'a> {
    name: &'static str,
    arch: Arch,
    tree: &'a mut SquashTree,
    dir: PathBuf,
    /// Paths of the files added so far (link targets must be among them).
    files: BTreeSet<String>,
    /// (package, link path, target) of the links added.
    links: Vec<(String, String, String)>,
    count: u64,
    bytes: u64,
}

impl Taker<'_> {
    /// Reads `deb` once, writing the wanted files below the work folder, then adds every
    /// wanted path to the tree.
    fn take(&mut self, deb: &DebArchive, wanted: &PackagePaths) -> Result<(), ExtensionError> {
        let mut found: BTreeMap<String, Found> = BTreeMap::new();
        let dir = &self.dir;
        deb.for_each(|e, r| {
            if !wanted.paths.contains(&e.path) {
                return Ok(());
            }
            let entry = match &e.kind {
                DebEntryKind::File { size } => Found::File {
                    source: write_entry(deb, &dir.join(&e.path), r)?,
                    perm: if e.mode & 0o111 != 0 { 0o755 } else { 0o644 },
                    size: *size,
                },
                DebEntryKind::Symlink { target } => Found::Link {
                    target: target.clone(),
                },
                DebEntryKind::HardLink { target } => Found::HardLink {
                    target: target.clone(),
                },
                DebEntryKind::Dir => Found::Other {
                    what: "a directory",
                },
                DebEntryKind::Other => Found::Other {
                    what: "a special file",
                },
            };
            found.insert(e.path.clone(), entry);
            Ok(())
        })
        .map_err(|source| ExtensionError::Deb {
            extension: self.name,
            source,
        })?;
        let missing: Vec<String> = wanted
            .paths
            .iter()
            .filter(|p| !found.contains_key(*p))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ExtensionError::Missing {
                extension: self.name,
                package: wanted.package.to_string(),
                deb: deb.name().to_string(),
                paths: missing,
            });
        }
        for path in &wanted.paths {
            self.add(wanted.package, path, &found)?;
        }
        Ok(())
    }

    /// Adds the entry `path` of `package` (as `found` in it) to the tree.
    fn add(
        &mut self,
        package: &str,
        path: &str,
        found: &BTreeMap<String, Found>,
    ) -> Result<(), ExtensionError> {
        let tree_err = |source| ExtensionError::Tree {
            extension: self.name,
            source,
        };
        let not_a_file = |what: String| ExtensionError::NotAFile {
            extension: self.name,
            package: package.to_string(),
            path: path.to_string(),
            found: what,
        };
        let (source, perm, size) = match found.get(path) {
            Some(Found::File { source, perm, size }) => (source, *perm, *size),
            Some(Found::HardLink { target }) => match found.get(target) {
                Some(Found::File { source, perm, size }) => (source, *perm, *size),
                _ => {
                    return Err(not_a_file(format!(
                        "a hard link to {target}, which the extension does not take"
                    )));
                }
            },
            Some(Found::Link { target }) => {
                self.tree.add_symlink(path, target).map_err(tree_err)?;
                let link = (package.to_string(), path.to_string(), target.clone());
                self.links.push(link);
                self.count += 1;
                return Ok(());
            }
            Some(Found::Other { what }) => return Err(not_a_file((*what).to_string())),
            None => return Err(not_a_file("absent".to_string())),
        };
        self.check_machine(package, path, source)?;
        self.tree
            .add_file_from(path, perm, source)
            .map_err(tree_err)?;
        self.files.insert(path.to_string());
        self.count += 1;
        self.bytes += size;
        Ok(())
    }

    /// The file `source` (taken from `path` of `package`) must be an ELF object for the
    /// board's machine.
    fn check_machine(
        &self,
        package: &str,
        path: &str,
        source: &Path,
    ) -> Result<(), ExtensionError> {
        let (want, arch) = match self.arch {
            Arch::Aarch64 => (EM_AARCH64, "aarch64"),
            Arch::X86_64 => (EM_X86_64, "x86_64"),
        };
        let mut head = Vec::with_capacity(64);
        fs::File::open(source)
            .and_then(|f| f.take(64).read_to_end(&mut head))
            .map_err(|e| ExtensionError::Read {
                extension: self.name,
                path: source.to_path_buf(),
                source: e,
            })?;
        let found = match elf::machine(&head) {
            Ok(m) if m == want => return Ok(()),
            Ok(m) => format!("an ELF file for machine {m}"),
            Err(_) => "not an ELF file".to_string(),
        };
        Err(ExtensionError::WrongMachine {
            extension: self.name,
            package: package.to_string(),
            path: path.to_string(),
            found,
            arch,
        })
    }

    /// Every link added must resolve to a file the extension added.
    fn check_links(&self) -> Result<(), ExtensionError> {
        for (package, path, target) in &self.links {
            if !self.files.contains(&resolve_symlink(path, target)) {
                return Err(ExtensionError::Dangling {
                    extension: self.name,
                    package: package.clone(),
                    path: path.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Streams one data-tar entry of `deb` to `out`; returns `out`.
fn write_entry(deb: &DebArchive, out: &Path, r: &mut dyn Read) -> Result<PathBuf, DebError> {
    let write_err = |source| DebError::Write {
        deb: deb.name().to_string(),
        path: out.to_path_buf(),
        source,
    };
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let mut file = fs::File::create(out).map_err(write_err)?;
    io::copy(r, &mut file).map_err(write_err)?;
    Ok(out.to_path_buf())
}
