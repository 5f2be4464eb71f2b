//! A board's kernel, device trees, modules and package files, gathered into a work
//! directory from the pinned Debian packages or from a user's kernel folder.
//!
//! Work directory layout written by [`prepare_inputs`]:
//!
//! ```text
//! kernel/<slot_file>                       kernel image (arm64: uncompressed Image)
//! kernel/config                            kernel config, when the source has one
//! kernel/dtbs/<dtb path>                   device trees, e.g. dtbs/broadcom/bcm2711-rpi-4-b.dtb
//! kernel/modules/lib/modules/<release>/    modules (package source only; a kernel folder's
//!                                          modules are used in place)
//! boot/<dest>                              firmware, U-Boot, EFI loader for BOOT
//! firmware/<dest>                          Linux firmware for the root filesystem
//! ```
//!
//! Package source: each package is checked against `scripts/inputs.lock` and read once; the
//! kernel package's files needed on BOOT (the Pi firmware's device trees) are taken in the
//! same pass as the kernel. arm64 kernels must end up as a raw `Image` (U-Boot's `booti`
//! and systemd-boot load it as is): a gzip-compressed image is decompressed; Debian's arm64
//! `vmlinuz` is already a raw Image. The image's format is checked against the board's
//! architecture (arm64 `Image` magic `ARM\x64` at 0x38, x86 `HdrS` at 0x202).
//!
//! Kernel folder (`--kernel-dir`): `Image`, `Image.gz`, `vmlinuz` or `bzImage` (or the
//! board's slot file name), `dtbs/<dtb path>` as `make dtbs_install` writes it, and
//! `modules/` holding `lib/modules/<release>/`, `<release>/`, or the module tree itself (then
//! the release comes from the modules' `vermagic`).

use super::InputsError;
use super::deb::Extract;
use super::lock::DebCache;
use super::modules::ModuleIndex;
use basalt_boards::{Arch, Board, PackageFile};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where the kernel comes from.
#[derive(Debug, Clone)]
pub enum KernelSource {
    /// The board's pinned kernel package in the cache.
    Package,
    /// A user's kernel folder (`--kernel-dir`).
    Dir(PathBuf),
}

/// Format of a kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImageKind {
    /// arm64 `Image` (possibly with an EFI stub).
    Arm64Image,
    /// x86 `bzImage`.
    X86BzImage,
    /// gzip-compressed data.
    Gzip,
    /// Not recognised.
    Unknown,
}

impl KernelImageKind {
    /// Detects the format from the first bytes of an image.
    pub fn detect(data: &[u8]) -> KernelImageKind {
        if data.get(0x38..0x3c) == Some(b"ARM\x64") {
            KernelImageKind::Arm64Image
        } else if data.get(0x202..0x206) == Some(b"HdrS") {
            KernelImageKind::X86BzImage
        } else if data.starts_with(&[0x1f, 0x8b]) {
            KernelImageKind::Gzip
        } else {
            KernelImageKind::Unknown
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KernelImageKind::Arm64Image => "an arm64 Image",
            KernelImageKind::X86BzImage => "an x86 bzImage",
            KernelImageKind::Gzip => "gzip data",
            KernelImageKind::Unknown => "not a kernel image this tool knows",
        }
    }
}

/// The kernel of a board, ready to be put into a slot.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    /// Kernel release (`uname -r`).
    pub release: String,
    /// Where it came from (package file name or folder), for messages.
    pub origin: String,
    /// The kernel image (uncompressed on arm64), named as the board's slot file.
    pub image: PathBuf,
    /// Its format.
    pub image_kind: KernelImageKind,
    /// Device trees: (path as listed by the board, file).
    pub dtbs: Vec<(String, PathBuf)>,
    /// The kernel config, when the source has one.
    pub config: Option<PathBuf>,
    /// Index of the modules (`lib/modules/<release>`).
    pub modules: ModuleIndex,
}

/// A file placed from a package (or kernel folder) onto a partition or into the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedFile {
    /// Destination relative to the partition (or `/lib/firmware`).
    pub dest: String,
    /// The extracted file.
    pub source: PathBuf,
    /// The package it came from.
    pub package: String,
}

/// Everything a board's image needs from its inputs.
#[derive(Debug, Clone)]
pub struct BoardInputs {
    /// Kernel, device trees and modules.
    pub kernel: KernelFiles,
    /// Files for BOOT: firmware, then U-Boot, then the EFI loader.
    pub boot_files: Vec<PlacedFile>,
    /// Linux firmware for the root filesystem (`/lib/firmware/<dest>`).
    pub linux_firmware: Vec<PlacedFile>,
}

/// Gathers the kernel, BOOT files and Linux firmware of `board` into `work`.
pub fn prepare_inputs(
    board: &Board,
    source: &KernelSource,
    cache: &DebCache,
    work: &Path,
) -> Result<BoardInputs, InputsError> {
    let arch = board.arch.debian_arch();
    let kernel_pkg = board.kernel.package.as_str();
    let mut boot_files: Vec<PlacedFile> = Vec::new();
    let mut rootfs_files: Vec<PlacedFile> = Vec::new();
    // package -> selections; kernel package selections join the kernel extraction
    let mut per_package: BTreeMap<&str, Vec<Extract>> = BTreeMap::new();
    let mut kernel_extra: Vec<Extract> = Vec::new();
    let mut dir_copies: Vec<(PathBuf, PathBuf)> = Vec::new();
    let boot_list = boot_package_files(board);
    let firmware_list: Vec<&PackageFile> = board.linux_firmware.iter().collect();
    for (list, sub, out) in [
        (&boot_list, "boot", &mut boot_files),
        (&firmware_list, "firmware", &mut rootfs_files),
    ] {
        for f in list.iter() {
            let dest = work.join(sub).join(&f.dest);
            out.push(PlacedFile {
                dest: f.dest.clone(),
                source: dest.clone(),
                package: f.package.clone(),
            });
            let ex = Extract::file(
                format!("{} (for {})", f.path, f.dest),
                &f.path,
                dest.clone(),
            );
            if f.package == kernel_pkg {
                match source {
                    KernelSource::Package => kernel_extra.push(ex),
                    KernelSource::Dir(dir) => {
                        dir_copies.push((kernel_dir_file(board, dir, f)?, dest));
                    }
                }
            } else {
                per_package.entry(f.package.as_str()).or_default().push(ex);
            }
        }
    }
    let kernel = match source {
        KernelSource::Package => kernel_from_package(board, cache, work, kernel_extra)?,
        KernelSource::Dir(dir) => kernel_from_dir(board, dir, work)?,
    };
    for (from, to) in dir_copies {
        copy_file(&from, &to)?;
    }
    for (package, selections) in per_package {
        let deb = cache.open(package, arch)?;
        deb.extract(&selections, Path::new("/"))?;
    }
    Ok(BoardInputs {
        kernel,
        boot_files,
        linux_firmware: rootfs_files,
    })
}

fn boot_package_files(board: &Board) -> Vec<&PackageFile> {
    let mut list: Vec<&PackageFile> = board.firmware.iter().collect();
    if let Some(bin) = board.uboot.as_ref().and_then(|u| u.binary.as_ref()) {
        list.push(bin);
    }
    if let Some(efi) = &board.efi {
        list.push(&efi.loader);
    }
    list
}

/// A kernel-package file (a device tree for the Pi firmware) taken from a kernel folder.
fn kernel_dir_file(board: &Board, dir: &Path, f: &PackageFile) -> Result<PathBuf, InputsError> {
    let prefix = format!("/usr/lib/linux-image-{}/", board.kernel_release());
    match f.path.strip_prefix(&prefix) {
        Some(rest) => Ok(dir.join("dtbs").join(rest)),
        None => Err(InputsError::Kernel {
            origin: dir.display().to_string(),
            reason: format!(
                "{} wants {} from the kernel package; a kernel folder only provides device trees ({prefix}…)",
                f.dest, f.path
            ),
        }),
    }
}

fn kernel_from_package(
    board: &Board,
    cache: &DebCache,
    work: &Path,
    extra: Vec<Extract>,
) -> Result<KernelFiles, InputsError> {
    let release = board.kernel_release();
    let deb = cache.open(&board.kernel.package, board.arch.debian_arch())?;
    let kdir = work.join("kernel");
    let raw_image = kdir.join(format!("{}.orig", board.kernel.slot_file));
    let image_path = board.kernel_image_path();
    let mut selections = vec![
        Extract::file(
            format!("kernel image {image_path}"),
            &image_path,
            raw_image.clone(),
        ),
        Extract::tree(
            format!("modules directory /lib/modules/{release}/"),
            &format!("lib/modules/{release}"),
            kdir.join("modules/lib/modules").join(&release),
        ),
    ];
    let mut dtbs = Vec::new();
    for dtb in &board.kernel.dtbs {
        let out = kdir.join("dtbs").join(dtb);
        selections.push(Extract::file(
            format!("DTB {dtb}"),
            &board.dtb_package_path(dtb),
            out.clone(),
        ));
        dtbs.push((dtb.clone(), out));
    }
    let config = kdir.join("config");
    selections.push(Extract::optional_file(
        "kernel config",
        &format!("boot/config-{release}"),
        config.clone(),
    ));
    selections.extend(extra);
    let written = deb.extract(&selections, Path::new("/"))?;
    let config = written.contains(&config).then_some(config);
    let origin = deb.name().to_string();
    let image = kdir.join(&board.kernel.slot_file);
    let kind = finish_image(
        board,
        &raw_image,
        &image,
        &format!("kernel image {image_path} in {origin}"),
    )?;
    let _ = fs::remove_file(&raw_image);
    let modules = ModuleIndex::scan(
        &kdir.join("modules/lib/modules").join(&release),
        Some(&release),
        &origin,
    )?;
    Ok(KernelFiles {
        release,
        origin,
        image,
        image_kind: kind,
        dtbs,
        config,
        modules,
    })
}

fn kernel_from_dir(board: &Board, dir: &Path, work: &Path) -> Result<KernelFiles, InputsError> {
    let origin = dir.display().to_string();
    let kerr = |reason: String| InputsError::Kernel {
        origin: origin.clone(),
        reason,
    };
    let candidates = [
        board.kernel.slot_file.as_str(),
        "Image",
        "Image.gz",
        "vmlinuz",
        "bzImage",
    ];
    let found = candidates
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            kerr(format!(
                "no kernel image (looked for {})",
                candidates.join(", ")
            ))
        })?;
    let kdir = work.join("kernel");
    let image = kdir.join(&board.kernel.slot_file);
    let what = format!("kernel image {}", found.display());
    let kind = finish_image(board, &found, &image, &what)?;

    let mut dtbs = Vec::new();
    let mut missing = Vec::new();
    for dtb in &board.kernel.dtbs {
        let p = dir.join("dtbs").join(dtb);
        if p.is_file() {
            dtbs.push((dtb.clone(), p));
        } else {
            missing.push(format!("DTB {dtb}"));
        }
    }
    if !missing.is_empty() {
        return Err(kerr(format!(
            "{} not found in {}",
            missing.join(", "),
            dir.join("dtbs").display()
        )));
    }
    let (root, release) = find_modules_root(&dir.join("modules"))
        .ok_or_else(|| kerr(format!("no modules in {}", dir.join("modules").display())))?;
    let modules = ModuleIndex::scan(&root, release.as_deref(), &origin)?;
    let config = ["config", ".config"]
        .iter()
        .map(|c| dir.join(c))
        .find(|p| p.is_file());
    Ok(KernelFiles {
        release: modules.release().to_string(),
        origin,
        image,
        image_kind: kind,
        dtbs,
        config,
        modules,
    })
}

/// The modules root inside a kernel folder's `modules/` and its release, when the layout
/// names it.
fn find_modules_root(modules: &Path) -> Option<(PathBuf, Option<String>)> {
    let is_tree = |p: &Path| p.join("kernel").is_dir() || p.join("modules.dep").is_file();
    let single_subdir = |p: &Path| -> Option<PathBuf> {
        let dirs: Vec<PathBuf> = fs::read_dir(p)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        if dirs.len() == 1 {
            dirs.into_iter().next()
        } else {
            None
        }
    };
    let name_of = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let lib = modules.join("lib/modules");
    if lib.is_dir()
        && let Some(r) = single_subdir(&lib)
    {
        return Some((r.clone(), name_of(&r)));
    }
    if is_tree(modules) {
        return Some((modules.to_path_buf(), None));
    }
    let r = single_subdir(modules)?;
    is_tree(&r).then(|| (r.clone(), name_of(&r)))
}

/// Writes the slot kernel from `src`: decompresses gzip, checks the format for the arch.
fn finish_image(
    board: &Board,
    src: &Path,
    dest: &Path,
    what: &str,
) -> Result<KernelImageKind, InputsError> {
    let io = |path: &Path, source| InputsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut data = fs::read(src).map_err(|e| io(src, e))?;
    let mut kind = KernelImageKind::detect(&data);
    if kind == KernelImageKind::Gzip {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..])
            .read_to_end(&mut out)
            .map_err(|e| io(src, e))?;
        data = out;
        kind = KernelImageKind::detect(&data);
    }
    let want = match board.arch {
        Arch::Aarch64 => KernelImageKind::Arm64Image,
        Arch::X86_64 => KernelImageKind::X86BzImage,
    };
    if kind != want {
        return Err(InputsError::Kernel {
            origin: what.to_string(),
            reason: format!(
                "is {}, but board {} is {} and needs {}",
                kind.describe(),
                board.name,
                board.arch.as_str(),
                want.describe()
            ),
        });
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    fs::write(dest, &data).map_err(|e| io(dest, e))?;
    Ok(kind)
}

fn copy_file(from: &Path, to: &Path) -> Result<(), InputsError> {
    let io = |path: &Path, source| InputsError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    }
    fs::copy(from, to).map_err(|e| io(from, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_image_formats() {
        let mut arm = vec![0u8; 0x40];
        arm[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(KernelImageKind::detect(&arm), KernelImageKind::Arm64Image);
        let mut x86 = vec![0u8; 0x210];
        x86[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(KernelImageKind::detect(&x86), KernelImageKind::X86BzImage);
        assert_eq!(
            KernelImageKind::detect(&[0x1f, 0x8b, 8]),
            KernelImageKind::Gzip
        );
        assert_eq!(KernelImageKind::detect(b"hello"), KernelImageKind::Unknown);
    }

    #[test]
    fn finds_module_roots() {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("modules");
        fs::create_dir_all(m.join("lib/modules/6.1.0-x/kernel")).unwrap();
        let (root, rel) = find_modules_root(&m).unwrap();
        assert_eq!(rel.as_deref(), Some("6.1.0-x"));
        assert!(root.ends_with("lib/modules/6.1.0-x"));
        let d2 = tempfile::tempdir().unwrap();
        fs::create_dir_all(d2.path().join("6.2.0/kernel")).unwrap();
        assert_eq!(
            find_modules_root(d2.path()).unwrap().1.as_deref(),
            Some("6.2.0")
        );
        let d3 = tempfile::tempdir().unwrap();
        fs::create_dir_all(d3.path().join("kernel")).unwrap();
        assert_eq!(find_modules_root(d3.path()).unwrap().1, None);
    }
}
