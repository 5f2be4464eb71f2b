//! Board definitions for Basalt OS.
//!
//! This crate owns the data files under `boards/boards/` (one TOML file per board:
//! architecture, bootloader family, partition table type and layout, console, kernel
//! arguments, device trees, firmware, U-Boot binary and env storage, early kernel modules,
//! support level, optional image extensions) and their strict loader and validator. `basalt-image` and `basalt-flash`
//! read boards only through this crate.
//!
//! - The board files are embedded with `include_str!`, so binaries need no data path:
//!   [`Board::load`] by name, [`Board::all`] for every board. A user's own board file loads
//!   with [`Board::from_path`] (or [`Board::resolve`], which takes a name or a path).
//! - Decoding is strict: every table denies unknown fields, so a typo is an error naming the
//!   field, with line and column. Then [`Board::validate`] checks the cross-field rules (see
//!   [`validate`]) and reports *all* problems at once in [`BoardError::Invalid`].
//! - Files inside Debian packages are named by package and absolute path; the packages are
//!   the ones pinned in `scripts/inputs.lock` (the image crate checks the pins).
//!
//! ```
//! let board = basalt_boards::Board::load("rpi4").unwrap();
//! assert_eq!(board.boot.console, "ttyS1,115200");
//! assert_eq!(board.kernel_release(), "6.1.0-56-arm64");
//! ```

mod model;
pub mod syntax;
pub mod validate;

pub use model::{
    Arch, Board, BootConfig, BootloaderFamily, DiskLayout, EfiConfig, EnvManager, EnvStorageKind,
    Extensions, Filesystem, KernelConfig, LoadAddresses, PackageFile, Partition, PartitionRole,
    PartitionTable, QemuConfig, QemuDrive, SupportLevel, UbootConfig, UbootDevice, UbootEnv,
};
pub use validate::Problem;

use std::path::{Path, PathBuf};

/// The board used when none is named.
pub const DEFAULT_BOARD: &str = "qemu-arm64";

/// The embedded board files: (name, TOML text), sorted by name.
const EMBEDDED: &[(&str, &str)] = &[
    ("arm64-uefi", include_str!("../boards/arm64-uefi.toml")),
    ("jetson-nano", include_str!("../boards/jetson-nano.toml")),
    ("qemu-arm64", include_str!("../boards/qemu-arm64.toml")),
    ("qemu-x86_64", include_str!("../boards/qemu-x86_64.toml")),
    ("rpi3", include_str!("../boards/rpi3.toml")),
    ("rpi4", include_str!("../boards/rpi4.toml")),
    ("x86_64-uefi", include_str!("../boards/x86_64-uefi.toml")),
];

/// A board that cannot be found, read, decoded or validated.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    /// No embedded board has this name.
    #[error("unknown board {name:?} (known boards: {known})", known = known_boards())]
    UnknownBoard {
        /// The requested name.
        name: String,
    },
    /// A board file could not be read.
    #[error("cannot read board file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A board file is not valid TOML or does not have the board shape (unknown field,
    /// missing field, wrong type, unknown enum value).
    #[error("board file {source_name}: {message}")]
    Parse {
        /// The file (path, or `<name>.toml (embedded)`).
        source_name: String,
        /// The decoder's message, with line and column.
        message: String,
    },
    /// A board file's `name` differs from its file name.
    #[error(
        "board file {source_name} defines board {found:?}; the file must be named {found}.toml"
    )]
    NameMismatch {
        /// The file.
        source_name: String,
        /// The `name` inside the file.
        found: String,
    },
    /// A decoded board breaks one or more rules.
    #[error(
        "board {board} ({source_name}) is invalid ({count} problem{s}):\n  {list}",
        count = problems.len(),
        s = if problems.len() == 1 { "" } else { "s" },
        list = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Invalid {
        /// The board name.
        board: String,
        /// The file.
        source_name: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn known_boards() -> String {
    Board::names().collect::<Vec<_>>().join(", ")
}

impl Board {
    /// Names of the embedded boards, sorted.
    pub fn names() -> impl Iterator<Item = &'static str> {
        EMBEDDED.iter().map(|(name, _)| *name)
    }

    /// Loads and validates the embedded board `name`.
    pub fn load(name: &str) -> Result<Board, BoardError> {
        let (_, text) =
            EMBEDDED
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| BoardError::UnknownBoard {
                    name: name.to_string(),
                })?;
        Board::from_named_toml(text, name, &format!("{name}.toml (embedded)"))
    }

    /// Loads and validates every embedded board, sorted by name.
    pub fn all() -> Result<Vec<Board>, BoardError> {
        Board::names().map(Board::load).collect()
    }

    /// Loads and validates a board file from `path`; its `name` must equal the file stem.
    pub fn from_path(path: &Path) -> Result<Board, BoardError> {
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        Board::from_named_toml(&text, stem, &path.display().to_string())
    }

    /// An embedded board by name, or a board file when `name_or_path` contains a `/` or
    /// ends with `.toml`.
    pub fn resolve(name_or_path: &str) -> Result<Board, BoardError> {
        if name_or_path.contains('/') || name_or_path.ends_with(".toml") {
            Board::from_path(Path::new(name_or_path))
        } else {
            Board::load(name_or_path)
        }
    }

    /// Decodes and validates board TOML; `source_name` names it in errors.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Board, BoardError> {
        let board: Board = toml::from_str(text).map_err(|e| BoardError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        board.validate_as(source_name)?;
        Ok(board)
    }

    fn from_named_toml(text: &str, expected: &str, source_name: &str) -> Result<Board, BoardError> {
        let board = Board::from_toml(text, source_name)?;
        if board.name != expected {
            return Err(BoardError::NameMismatch {
                source_name: source_name.to_string(),
                found: board.name,
            });
        }
        Ok(board)
    }

    /// Every rule this board breaks (empty when valid).
    pub fn problems(&self) -> Vec<Problem> {
        validate::check(self)
    }

    /// Checks every rule; the error lists all problems.
    pub fn validate(&self) -> Result<(), BoardError> {
        self.validate_as(&format!("board {}", self.name))
    }

    fn validate_as(&self, source_name: &str) -> Result<(), BoardError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BoardError::Invalid {
                board: self.name.clone(),
                source_name: source_name.to_string(),
                problems,
            })
        }
    }

    /// The kernel release (`uname -r`): `kernel.release`, or the package name without
    /// `linux-image-` and a trailing `-unsigned`.
    pub fn kernel_release(&self) -> String {
        if let Some(r) = &self.kernel.release {
            return r.clone();
        }
        let p = &self.kernel.package;
        let r = p.strip_prefix("linux-image-").unwrap_or(p);
        r.strip_suffix("-unsigned").unwrap_or(r).to_string()
    }

    /// Path of the kernel image inside the kernel package: `kernel.image`, or
    /// `/boot/vmlinuz-<release>`.
    pub fn kernel_image_path(&self) -> String {
        self.kernel
            .image
            .clone()
            .unwrap_or_else(|| format!("/boot/vmlinuz-{}", self.kernel_release()))
    }

    /// Path of a device tree (as listed in `kernel.dtbs`) inside the kernel package:
    /// `/usr/lib/linux-image-<release>/<dtb>`.
    pub fn dtb_package_path(&self, dtb: &str) -> String {
        format!("/usr/lib/linux-image-{}/{dtb}", self.kernel_release())
    }

    /// The partition with `role`.
    pub fn partition(&self, role: PartitionRole) -> Option<&Partition> {
        self.disk.partitions.iter().find(|p| p.label == role)
    }

    /// The partition number (1-based, as Linux and U-Boot count) of `role`. On MBR the
    /// fourth primary entry is the extended partition, so STATE is 5 and DATA 6.
    pub fn partition_number(&self, role: PartitionRole) -> Option<u32> {
        let index = self.disk.partitions.iter().position(|p| p.label == role)?;
        let index = u32::try_from(index).ok()?;
        Some(match self.disk.table {
            PartitionTable::Gpt => index + 1,
            PartitionTable::Mbr if index < 3 => index + 1,
            PartitionTable::Mbr => index + 2,
        })
    }

    /// The embedded TOML text of board `name`, if there is one.
    pub fn embedded_source(name: &str) -> Option<&'static str> {
        EMBEDDED.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_is_sorted_and_default_exists() {
        let names: Vec<_> = Board::names().collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert!(names.contains(&DEFAULT_BOARD));
    }

    #[test]
    fn mbr_numbers_skip_the_extended_partition() {
        let rpi3 = Board::load("rpi3").unwrap();
        assert_eq!(rpi3.disk.table, PartitionTable::Mbr);
        let nums: Vec<_> = PartitionRole::ALL
            .iter()
            .map(|r| rpi3.partition_number(*r).unwrap())
            .collect();
        assert_eq!(nums, [1, 2, 3, 5, 6]);
        let q = Board::load("qemu-arm64").unwrap();
        assert_eq!(q.partition_number(PartitionRole::Data), Some(5));
    }

    #[test]
    fn derived_paths() {
        let b = Board::load("rpi4").unwrap();
        assert_eq!(b.kernel_image_path(), "/boot/vmlinuz-6.1.0-56-arm64");
        assert_eq!(
            b.dtb_package_path("broadcom/bcm2711-rpi-4-b.dtb"),
            "/usr/lib/linux-image-6.1.0-56-arm64/broadcom/bcm2711-rpi-4-b.dtb"
        );
    }
}
