//! Overlays: files laid over the shared BOOT partition.
//!
//! Two kinds, applied in this order:
//!
//! 1. the **board overlay** `overlays/<board>/` of the repository (e.g. the Raspberry Pi
//!    `config.txt`), embedded into the binary like the board files, so `basalt-image` needs
//!    no data path ([`BOARD_OVERLAYS`]; a unit test checks the table lists every file of
//!    the folders);
//! 2. **user overlays** (`basalt-image build --overlay DIR`, repeatable), in the order given.
//!
//! The rule for a user overlay folder `DIR`:
//!
//! - `DIR/config.txt` (top level only) is **appended**: its lines go, unchanged and in
//!   order, after the board's `config.txt` (after earlier overlays' lines); it must be
//!   UTF-8. On a board without a `config.txt` it creates one.
//! - every other regular file `DIR/a/b` is **added**, or **replaces** the file `a/b` on BOOT
//!   (FAT names compare case-insensitively, so `CONFIG.TXT` is `config.txt`'s slot too and
//!   is refused; use `config.txt`).
//! - files the boot needs and the composer writes (U-Boot boards: `boot.scr` and the env
//!   file, e.g. `uboot.env`; UEFI boards: everything under `EFI/BOOT/`, `loader/` and
//!   `basalt/`) are refused unless their path is passed with `--allow-replace PATH`.
//! - a symlink is followed only if its target is a regular file inside `DIR`; a symlink out
//!   of `DIR`, a symlink to a folder, a device, FIFO or socket is an error naming it.
//! - a file larger than the BOOT partition is an error naming it (the whole BOOT content is
//!   checked again when the FAT is built).
//!
//! After all overlays, a Raspberry Pi board's `config.txt` (a board whose firmware comes from
//! `raspi-firmware`) must set `arm_64bit=1`, `kernel=u-boot.bin` and `enable_uart=1`: a
//! missing setting names the file, a later line that sets another value names its overlay
//! file and line. Sections (`[pi4]`, `[all]`) are not evaluated: any assignment counts, which
//! errs on the side of refusing.
//!
//! Everything is read and checked before the build starts, so a broken overlay costs no
//! build time and leaves no output. Folders are walked in sorted byte order and the FAT
//! gets fixed timestamps, so overlay files keep builds reproducible; nothing of the overlay
//! file's own metadata (mtime, mode, owner) reaches the image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use basalt_boards::{Board, BootloaderFamily, PartitionRole};

use super::fat_volume::FatContent;

/// The Raspberry Pi firmware's configuration file on BOOT.
pub const CONFIG_TXT: &str = "config.txt";

/// Settings every Raspberry Pi `config.txt` must have for Basalt to boot.
pub const PI_REQUIRED: [(&str, &str); 3] = [
    ("arm_64bit", "1"),
    ("kernel", "u-boot.bin"),
    ("enable_uart", "1"),
];

/// The board overlays of the repository: (board, path on BOOT, content).
pub const BOARD_OVERLAYS: &[(&str, &str, &[u8])] = &[
    (
        "rpi3",
        "config.txt",
        include_bytes!("../../../overlays/rpi3/config.txt"),
    ),
    (
        "rpi4",
        "config.txt",
        include_bytes!("../../../overlays/rpi4/config.txt"),
    ),
];

/// A broken overlay. Every variant names the file or folder.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The overlay folder does not exist or is not a folder.
    #[error("overlay {0} is not a folder")]
    NotAFolder(PathBuf),
    /// Reading an overlay file or folder failed.
    #[error("overlay file {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symlink points outside its overlay folder.
    #[error("overlay file {link} is a symlink to {target}, outside the overlay folder {dir}")]
    SymlinkOutside {
        /// The symlink.
        link: PathBuf,
        /// Where it points (resolved).
        target: PathBuf,
        /// The overlay folder.
        dir: PathBuf,
    },
    /// Not a regular file (device, FIFO, socket, symlink to a folder).
    #[error(
        "overlay file {0} is not a regular file (only files and folders can be laid onto BOOT)"
    )]
    NotAFile(PathBuf),
    /// A file name that is not UTF-8 (FAT long names are Unicode).
    #[error("overlay file {0} has a name that is not UTF-8")]
    BadName(PathBuf),
    /// The file would replace one the boot needs.
    #[error(
        "overlay file {file} would replace {dest} on BOOT, which the boot needs and \
         basalt-image writes; pass --allow-replace {dest} if that is intended"
    )]
    Protected {
        /// The overlay file.
        file: PathBuf,
        /// Its path on BOOT.
        dest: String,
    },
    /// The file is larger than the BOOT partition.
    #[error("overlay file {file} ({size} bytes) does not fit BOOT ({boot_size} bytes)")]
    TooBig {
        /// The overlay file.
        file: PathBuf,
        /// Its size.
        size: u64,
        /// The BOOT partition's size.
        boot_size: u64,
    },
    /// `config.txt` of an overlay is not UTF-8.
    #[error("overlay file {0} is not UTF-8 text; config.txt lines are appended as text")]
    NotUtf8(PathBuf),
    /// A required Raspberry Pi setting is missing.
    #[error("{file}: the Raspberry Pi config.txt lacks the line `{key}={value}`")]
    PiMissing {
        /// Where config.txt came from.
        file: String,
        /// The setting.
        key: &'static str,
        /// Its required value.
        value: &'static str,
    },
    /// A line changes a required Raspberry Pi setting.
    #[error(
        "{file} line {line}: `{text}` changes the required Raspberry Pi setting `{key}={value}`"
    )]
    PiChanged {
        /// The file holding the line.
        file: String,
        /// 1-based line number in that file.
        line: usize,
        /// The line.
        text: String,
        /// The setting.
        key: &'static str,
        /// Its required value.
        value: &'static str,
    },
}

/// The user's overlays and which composer-written files they may replace.
#[derive(Debug, Clone, Default)]
pub struct UserOverlays {
    /// Overlay folders, applied in order after the board overlay.
    pub dirs: Vec<PathBuf>,
    /// Paths on BOOT that overlays may replace although the composer writes them.
    pub allow_replace: Vec<String>,
}

/// One line of the final `config.txt`, with where it came from.
#[derive(Debug, Clone)]
struct ConfigLine {
    origin: String,
    number: usize,
    text: String,
}

/// The checked result of all overlays: files by path on BOOT, and `config.txt`.
#[derive(Debug, Clone, Default)]
pub struct BootOverlay {
    /// Lowercased path → (path as given, content).
    files: BTreeMap<String, (String, Vec<u8>)>,
    config: Vec<ConfigLine>,
}

impl BootOverlay {
    /// Reads the board overlay and `user` overlays for `board`, and checks them.
    pub fn collect(board: &Board, user: &UserOverlays) -> Result<Self, OverlayError> {
        let mut overlay = BootOverlay::default();
        for (_, dest, data) in BOARD_OVERLAYS.iter().filter(|o| o.0 == board.name) {
            let origin = format!("overlays/{}/{dest}", board.name);
            if *dest == CONFIG_TXT {
                let text = std::str::from_utf8(data)
                    .map_err(|_| OverlayError::NotUtf8(PathBuf::from(&origin)))?;
                overlay.append_config(&origin, text);
            } else {
                overlay.insert(dest, data.to_vec());
            }
        }
        let protected = protected_paths(board);
        let boot_size = boot_size(board);
        for dir in &user.dirs {
            if !dir.is_dir() {
                return Err(OverlayError::NotAFolder(dir.clone()));
            }
            let root = dir.canonicalize().map_err(|source| OverlayError::Read {
                path: dir.clone(),
                source,
            })?;
            let mut files = Vec::new();
            walk(dir, &root, "", &mut files)?;
            for (dest, path) in files {
                let read = |path: &Path| {
                    let path = path.to_path_buf();
                    move |source| OverlayError::Read { path, source }
                };
                let size = std::fs::metadata(&path).map_err(read(&path))?.len();
                if size > boot_size {
                    return Err(OverlayError::TooBig {
                        file: path,
                        size,
                        boot_size,
                    });
                }
                let data = std::fs::read(&path).map_err(read(&path))?;
                if dest == CONFIG_TXT {
                    let Ok(text) = String::from_utf8(data) else {
                        return Err(OverlayError::NotUtf8(path));
                    };
                    overlay.append_config(&path.display().to_string(), &text);
                    continue;
                }
                let lower = dest.to_lowercase();
                let allowed = user.allow_replace.iter().any(|a| a.to_lowercase() == lower);
                if lower == CONFIG_TXT || (!allowed && is_protected(&protected, &lower)) {
                    return Err(OverlayError::Protected { file: path, dest });
                }
                overlay.insert(&dest, data);
            }
        }
        if is_raspberry_pi(board) {
            overlay.check_pi_config(&format!("config.txt of board {}", board.name))?;
        }
        Ok(overlay)
    }

    fn insert(&mut self, dest: &str, data: Vec<u8>) {
        self.files
            .insert(dest.to_lowercase(), (dest.to_string(), data));
    }

    fn append_config(&mut self, origin: &str, text: &str) {
        for (i, line) in text.lines().enumerate() {
            self.config.push(ConfigLine {
                origin: origin.to_string(),
                number: i + 1,
                text: line.to_string(),
            });
        }
    }

    /// The final `config.txt` (lines joined with `\n`), if any overlay has one.
    pub fn config_txt(&self) -> Option<String> {
        if self.config.is_empty() {
            return None;
        }
        let mut text = String::new();
        for line in &self.config {
            text.push_str(&line.text);
            text.push('\n');
        }
        Some(text)
    }

    fn check_pi_config(&self, what: &str) -> Result<(), OverlayError> {
        for (key, value) in PI_REQUIRED {
            let last = self.config.iter().rev().find(|l| {
                l.text
                    .split_once('=')
                    .is_some_and(|(k, _)| k.trim() == key && !l.text.trim().starts_with('#'))
            });
            match last {
                None => {
                    return Err(OverlayError::PiMissing {
                        file: what.to_string(),
                        key,
                        value,
                    });
                }
                Some(l) if l.text.split_once('=').map(|(_, v)| v.trim()) != Some(value) => {
                    return Err(OverlayError::PiChanged {
                        file: l.origin.clone(),
                        line: l.number,
                        text: l.text.clone(),
                        key,
                        value,
                    });
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Lays the overlay over `files` (path on BOOT → content): a file with the same path
    /// (compared case-insensitively, as FAT does) is replaced in place, others are added
    /// in sorted order, then `config.txt`.
    pub fn lay_over(&self, files: &mut Vec<(String, FatContent)>) {
        let mut extra = self.files.clone();
        if let Some(text) = self.config_txt() {
            extra.insert(
                CONFIG_TXT.to_string(),
                (CONFIG_TXT.to_string(), text.into_bytes()),
            );
        }
        for (dest, content) in files.iter_mut() {
            if let Some((_, data)) = extra.remove(&dest.to_lowercase()) {
                *content = FatContent::Bytes(data);
            }
        }
        files.extend(
            extra
                .into_values()
                .map(|(dest, data)| (dest, FatContent::Bytes(data))),
        );
    }
}

/// Whether `board` boots through the Raspberry Pi firmware (which reads config.txt).
pub fn is_raspberry_pi(board: &Board) -> bool {
    board.firmware.iter().any(|f| f.package == "raspi-firmware")
}

fn boot_size(board: &Board) -> u64 {
    board
        .disk
        .partitions
        .iter()
        .find(|p| p.label == PartitionRole::Boot)
        .map_or(0, |p| p.size_mib * crate::disk::MIB)
}

/// Lowercased paths (exact) and folders (ending in `/`) the composer writes for the boot.
fn protected_paths(board: &Board) -> Vec<String> {
    match board.boot.family {
        BootloaderFamily::UefiSystemdBoot => {
            vec!["efi/boot/".into(), "loader/".into(), "basalt/".into()]
        }
        _ => {
            let mut p = vec!["boot.scr".to_string()];
            if let Some(file) = board.uboot.as_ref().and_then(|u| u.env.file.as_ref()) {
                p.push(file.to_lowercase());
            }
            p
        }
    }
}

fn is_protected(protected: &[String], lower: &str) -> bool {
    protected.iter().any(|p| {
        if p.ends_with('/') {
            lower.starts_with(p.as_str())
        } else {
            lower == p
        }
    })
}

/// Collects the regular files under `dir` (sorted by name at each level) as
/// (path on BOOT, file), following symlinks only to files inside `root`.
fn walk(
    dir: &Path,
    root: &Path,
    prefix: &str,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), OverlayError> {
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OverlayError::Read { path, source }
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(read(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read(dir))?;
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| OverlayError::BadName(path.clone()))?;
        let dest = format!("{prefix}{name}");
        let meta = std::fs::symlink_metadata(&path).map_err(read(&path))?;
        if meta.file_type().is_symlink() {
            let target = path.canonicalize().map_err(read(&path))?;
            if !target.starts_with(root) {
                return Err(OverlayError::SymlinkOutside {
                    link: path,
                    target,
                    dir: root.to_path_buf(),
                });
            }
            if !target.is_file() {
                return Err(OverlayError::NotAFile(path));
            }
            out.push((dest, path));
        } else if meta.is_dir() {
            walk(&path, root, &format!("{dest}/"), out)?;
        } else if meta.is_file() {
            out.push((dest, path));
        } else {
            return Err(OverlayError::NotAFile(path));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlay_dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn user(dirs: &[&Path]) -> UserOverlays {
        UserOverlays {
            dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
            allow_replace: Vec::new(),
        }
    }

    #[test]
    fn board_overlay_table_lists_every_file_of_the_overlay_folders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&root).unwrap() {
            let entry = entry.unwrap();
            let board = entry.file_name().into_string().unwrap();
            if board == "common" {
                continue;
            }
            assert!(
                Board::load(&board).is_ok(),
                "overlays/{board} names no board"
            );
            let mut files = Vec::new();
            walk(&entry.path(), &entry.path(), "", &mut files).unwrap();
            for (dest, path) in files {
                found.push((board.clone(), dest, std::fs::read(path).unwrap()));
            }
        }
        found.sort();
        let mut table: Vec<_> = BOARD_OVERLAYS
            .iter()
            .map(|(b, d, c)| (b.to_string(), d.to_string(), c.to_vec()))
            .collect();
        table.sort();
        assert!(
            found == table,
            "BOARD_OVERLAYS differs from overlays/<board>/"
        );
    }

    #[test]
    fn pi_boards_get_a_config_txt_with_the_required_settings() {
        for name in ["rpi3", "rpi4"] {
            let board = Board::load(name).unwrap();
            let overlay = BootOverlay::collect(&board, &UserOverlays::default()).unwrap();
            let text = overlay.config_txt().unwrap();
            for (k, v) in PI_REQUIRED {
                assert!(text.contains(&format!("\n{k}={v}\n")), "{name}: {text}");
            }
        }
        let qemu = Board::load("qemu-arm64").unwrap();
        assert!(
            BootOverlay::collect(&qemu, &UserOverlays::default())
                .unwrap()
                .config_txt()
                .is_none()
        );
    }

    #[test]
    fn user_config_txt_is_appended_and_files_replace_case_insensitively() {
        let a = overlay_dir();
        std::fs::write(a.path().join("config.txt"), "dtparam=i2c_arm=on\n").unwrap();
        std::fs::create_dir(a.path().join("extra")).unwrap();
        std::fs::write(a.path().join("extra/x.txt"), "one").unwrap();
        std::fs::write(a.path().join("Start4.ELF"), "new firmware").unwrap();
        let b = overlay_dir();
        std::fs::create_dir(b.path().join("extra")).unwrap();
        std::fs::write(b.path().join("extra/x.txt"), "two").unwrap();
        std::fs::write(b.path().join("config.txt"), "gpu_mem=16").unwrap();
        let board = Board::load("rpi4").unwrap();
        let overlay = BootOverlay::collect(&board, &user(&[a.path(), b.path()])).unwrap();
        let text = overlay.config_txt().unwrap();
        assert!(
            text.ends_with("upstream_kernel=1\ndtparam=i2c_arm=on\ngpu_mem=16\n"),
            "{text}"
        );
        let mut files = vec![
            ("boot.scr".to_string(), FatContent::Bytes(b"scr".to_vec())),
            ("start4.elf".to_string(), FatContent::Bytes(b"old".to_vec())),
        ];
        overlay.lay_over(&mut files);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["boot.scr", "start4.elf", "config.txt", "extra/x.txt"]
        );
        assert!(matches!(&files[1].1, FatContent::Bytes(b) if b == b"new firmware"));
        assert!(matches!(&files[3].1, FatContent::Bytes(b) if b == b"two"));
    }

    #[test]
    fn broken_overlays_are_refused_naming_the_file() {
        let board = Board::load("rpi4").unwrap();
        let err = |dir: &Path| {
            BootOverlay::collect(&board, &user(&[dir]))
                .unwrap_err()
                .to_string()
        };
        let missing = Path::new("/nonexistent/overlay");
        assert!(err(missing).contains("/nonexistent/overlay is not a folder"));

        let d = overlay_dir();
        std::fs::write(d.path().join("BOOT.SCR"), "x").unwrap();
        let e = err(d.path());
        assert!(
            e.contains("BOOT.SCR") && e.contains("--allow-replace"),
            "{e}"
        );
        let mut allowed = user(&[d.path()]);
        allowed.allow_replace.push("boot.scr".into());
        BootOverlay::collect(&board, &allowed).unwrap();

        let d = overlay_dir();
        std::fs::write(d.path().join("uboot.env"), "x").unwrap();
        assert!(err(d.path()).contains("uboot.env"));

        let d = overlay_dir();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("leak")).unwrap();
        let e = err(d.path());
        assert!(
            e.contains("leak") && e.contains("outside the overlay folder"),
            "{e}"
        );

        let d = overlay_dir();
        std::fs::write(d.path().join("config.txt"), b"ok\n\xff\xfe\n").unwrap();
        let e = err(d.path());
        assert!(e.contains("config.txt is not UTF-8"), "{e}");

        let d = overlay_dir();
        std::fs::write(d.path().join("config.txt"), "# mine\narm_64bit=0\n").unwrap();
        let e = err(d.path());
        assert!(e.contains("config.txt line 2: `arm_64bit=0`"), "{e}");

        let d = overlay_dir();
        let big = std::fs::File::create(d.path().join("big.bin")).unwrap();
        big.set_len(boot_size(&board) + 1).unwrap();
        let e = err(d.path());
        assert!(
            e.contains("big.bin") && e.contains("does not fit BOOT"),
            "{e}"
        );
    }

    #[test]
    fn uefi_boards_protect_the_loader_folders() {
        let board = Board::load("qemu-x86_64").unwrap();
        let d = overlay_dir();
        std::fs::create_dir_all(d.path().join("loader/entries")).unwrap();
        std::fs::write(d.path().join("loader/entries/evil.conf"), "x").unwrap();
        let e = BootOverlay::collect(&board, &user(&[d.path()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("loader/entries/evil.conf"), "{e}");
    }
}
