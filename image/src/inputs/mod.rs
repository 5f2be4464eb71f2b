//! Board inputs: Debian packages read without dpkg, pinned by `scripts/inputs.lock`, and the
//! kernel, device trees, modules and firmware taken from them (or from a user's kernel
//! folder).
//!
//! - [`deb`]: `.deb` reading (`ar` → `data.tar.{xz,zst,gz}` → tar) and selective extraction.
//! - [`lock`]: the lock file and the package cache; every package's sha256 is checked
//!   before use.
//! - [`elf`]: a module's `.modinfo` section; [`glob`]: alias patterns.
//! - [`modules`]: the module index (from `modules.dep` or each module's `depends=`) and the
//!   load order of the board's early modules.
//! - [`kernel`]: [`prepare_inputs`] gathers everything a board's image needs into a work
//!   directory.
//!
//! Facts about the pinned Debian 12 inputs (checked): `linux-image-6.1.0-56-arm64` ships
//! `/boot/vmlinuz-6.1.0-56-arm64` as an uncompressed arm64 `Image` (EFI stub, ready for
//! `booti`), uncompressed `.ko` modules (`CONFIG_MODULE_COMPRESS_NONE`), no `modules.dep`
//! or `modules.alias` (only `modules.order`, `modules.builtin`, `modules.builtin.modinfo`),
//! and device trees under `/usr/lib/linux-image-6.1.0-56-arm64/<vendor>/`. Both the arm64
//! and amd64 kernels have `CONFIG_RD_GZIP=y` and `CONFIG_RD_ZSTD=y`.

pub mod deb;
pub mod elf;
pub mod glob;
pub mod kernel;
pub mod lock;
pub mod modfiles;
pub mod modules;

pub use deb::{DebArchive, DebEntry, DebEntryKind, DebError, Extract};
pub use kernel::{
    BoardInputs, KernelFiles, KernelImageKind, KernelSource, PlacedFile, prepare_inputs,
};
pub use lock::{DebCache, InputsLock, LockEntry, LockError, sha256_file};
pub use modules::{ModuleIndex, ModuleInfo, ModulesError, ResolvedModules, normalize_name};

use std::path::PathBuf;

/// A board input that cannot be found, verified or read.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// Lock file or cache problem (not pinned, missing, checksum mismatch).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// A package could not be read, or lacks a wanted file.
    #[error(transparent)]
    Deb(#[from] DebError),
    /// Module index or dependency problem.
    #[error(transparent)]
    Modules(#[from] ModulesError),
    /// The kernel is unusable for the board.
    #[error("{origin}: {reason}")]
    Kernel {
        /// The kernel image or folder.
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
