//! Composes a board's disk image from its inputs: the build pipeline behind
//! `basalt-image build`.
//!
//! 1. inputs: kernel, modules and DTBs, BOOT files (firmware, U-Boot) from the pinned
//!    Debian packages ([`crate::inputs`]);
//! 2. initramfs: `machined` as `/init` plus the board's early modules ([`crate::initramfs`]);
//! 3. root filesystem: squashfs with the remaining modules, the Linux firmware, the empty
//!    STATE template ([`STATE_TEMPLATE`]) and the system extensions the build carries (the
//!    container runtime, [`extension`]), with a dm-verity hash tree appended
//!    ([`crate::squashfs`], [`crate::verity`]);
//! 4. system slot: a FAT partition image with the kernel, DTBs, initramfs, `rootfs.img`
//!    (squashfs + hash tree) and `basalt/slot.env` (the verity root hash, read by the boot
//!    script and passed as `basalt.roothash=`);
//! 5. BOOT: on U-Boot boards FAT with the boot script (`boot.scr`), the initial U-Boot env
//!    (slot A active and committed), firmware, U-Boot and overlay files ([`overlay`]: the
//!    board's `overlays/<board>/`, then `--overlay` folders); on UEFI boards the
//!    EFI system partition with systemd-boot, `loader.conf`, one entry per slot with boot
//!    counting (slot A blessed) and slot A's kernel and initramfs ([`uefi`]);
//! 6. STATE and DATA: empty ext4;
//! 7. the disk: partition table and partitions, written sparse.
//!
//! Everything is built in a temporary folder next to the output and renamed into place at
//! the end, so a failed build leaves no partial output. Identifiers (GUIDs, UUIDs, salts)
//! derive from the board name and version, and every timestamp from `SOURCE_DATE_EPOCH`,
//! so the same inputs give byte-identical artefacts.
//!
//! On UEFI boards the slot also carries `basalt/cmdline` (console and kernel arguments), so
//! an upgrade can write the new slot's loader entry from the slot alone.
//!
//! Limits: U-Boot script and UEFI systemd-boot boards are composed here; firmware tryboot
//! boards are refused with a clear error until their BOOT layout lands.

pub mod assemble;
pub mod ext4;
pub mod extension;
pub mod fat_volume;
pub mod outputs;
pub mod overlay;
pub mod uefi;

use std::path::{Path, PathBuf};

use basalt_boards::{
    Board, BootloaderFamily, EnvManager, PartitionRole, PartitionTable, UbootDevice,
};
use basalt_bootloader::boot_counting::initial_vars;
use basalt_bootloader::env::{EnvLayout, serialize};
use basalt_bootloader::script::{
    BootScriptParams, DeviceType, EnvStorage, build_boot_scr, render_slot_env,
};

use crate::disk::{self, DiskPlan, MIB, PartitionKind, PartitionRequest, TableType};
use crate::initramfs::{InitramfsCompression, early_initramfs};
use crate::inputs::{BoardInputs, DebCache, KernelSource, ResolvedModules, prepare_inputs};
use crate::squashfs::{SquashTree, SquashfsCompression, SquashfsOptions, write_squashfs};
use crate::verity::{Salt, append_hash_tree};
use extension::ExtensionReport;
use fat_volume::{FatContent, build_fat};
use overlay::{BootOverlay, UserOverlays};

/// The boot script template shipped with the repository.
const BOOT_CMD_TEMPLATE: &str = include_str!("../../../overlays/common/u-boot/boot.cmd");

/// File names inside a system slot.
pub const SLOT_INITRD: &str = "initrd.img";
/// The console and kernel arguments inside a slot of a UEFI board.
pub use basalt_bootloader::systemd_boot::slot_boot::SLOT_CMDLINE;
/// The root filesystem (squashfs + dm-verity hash tree) inside a slot.
pub const SLOT_ROOTFS: &str = "rootfs.img";
/// The empty ext4 (label STATE, [`STATE_TEMPLATE_SIZE`] bytes, made by `mke2fs` like the
/// disk's STATE) in the root filesystem, from which machined recreates a blank STATE and
/// then grows it online to the partition's size.
pub const STATE_TEMPLATE: &str = "lib/basalt/state.ext4";
/// Size of [`STATE_TEMPLATE`]: small (its zeroes compress to nothing in the squashfs), with
/// room for the journal mke2fs gives it.
pub const STATE_TEMPLATE_SIZE: u64 = 8 << 20;

/// Failure of a build step. Each variant names the step; the source names the object.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// The board cannot be composed (yet).
    #[error("board {board}: {reason}")]
    Unsupported {
        /// Board name.
        board: String,
        /// Why.
        reason: String,
    },
    /// A filesystem or I/O step failed.
    #[error("{step}: {source}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A board or user overlay is broken.
    #[error(transparent)]
    Overlay(#[from] overlay::OverlayError),
    /// The output folder exists and is not empty.
    #[error("output folder {0} exists and is not empty; remove it or choose another")]
    OutputExists(PathBuf),
}

fn step<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> ComposeError {
    move |e| ComposeError::Step {
        step,
        source: Box::new(e),
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    /// The board.
    pub board: Board,
    /// Release version, e.g. `1.2.0`.
    pub version: String,
    /// Output folder (must not exist or be empty).
    pub out: PathBuf,
    /// The `machined` binary for the board's architecture.
    pub machined: PathBuf,
    /// Where the kernel comes from.
    pub kernel: KernelSource,
    /// Input packages (lock file and cache).
    pub cache: DebCache,
    /// `SOURCE_DATE_EPOCH`: every timestamp in the artefacts.
    pub epoch: u64,
    /// Ed25519 key (PKCS#8 PEM) that signs the update bundle; no bundle without it.
    pub signing_key: Option<PathBuf>,
    /// Whether the root filesystem carries the container runtime ([`extension`]): `true`
    /// unless the build leaves it out (`basalt-image build --no-containers`). A board with
    /// `[extensions] containers = false` leaves it out whatever this says
    /// ([`BuildRequest::includes_containers`]).
    pub containers: bool,
}

impl BuildRequest {
    /// Whether this build puts the container runtime into the root filesystem: asked for by
    /// the request and not turned off by the board.
    pub fn includes_containers(&self) -> bool {
        self.containers && self.board.extensions.containers
    }
}

/// What a build produced, for the manifest.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The disk image.
    pub disk_image: PathBuf,
    /// The system slot image (the payload of an update bundle).
    pub slot_image: PathBuf,
    /// dm-verity root hash of the slot's root filesystem (hex).
    pub root_hash: String,
    /// The disk layout.
    pub plan: DiskPlan,
    /// Kernel release.
    pub kernel_release: String,
    /// The system extensions in the root filesystem (empty when none).
    pub extensions: Vec<ExtensionReport>,
}

fn partition_requests(board: &Board) -> Vec<PartitionRequest> {
    board
        .disk
        .partitions
        .iter()
        .map(|p| PartitionRequest {
            label: p.label.label().to_string(),
            size: p.size_mib * MIB,
            kind: match p.label {
                PartitionRole::Boot => PartitionKind::Boot,
                PartitionRole::SystemA | PartitionRole::SystemB => PartitionKind::System,
                PartitionRole::State | PartitionRole::Data => PartitionKind::LinuxData,
            },
            fat: p.filesystem.as_str() == "vfat",
        })
        .collect()
}

/// The disk layout of `board`'s image (the same for every build of the board).
pub fn disk_plan(board: &Board) -> Result<DiskPlan, ComposeError> {
    let table = match board.disk.table {
        PartitionTable::Gpt => TableType::Gpt,
        PartitionTable::Mbr => TableType::Mbr,
    };
    disk::plan(table, &partition_requests(board)).map_err(step("plan the disk layout"))
}

fn script_params(board: &Board, plan: &DiskPlan) -> Result<BootScriptParams, ComposeError> {
    let uboot = board
        .uboot
        .as_ref()
        .ok_or_else(|| ComposeError::Unsupported {
            board: board.name.clone(),
            reason: "a u-boot-script board needs a [uboot] section".into(),
        })?;
    let mut params = match uboot.device {
        UbootDevice::Virtio => BootScriptParams::qemu_arm64_virt(),
        _ => BootScriptParams::raspberry_pi(),
    };
    params.device_type = match uboot.device {
        UbootDevice::Mmc => DeviceType::Mmc,
        UbootDevice::Virtio => DeviceType::Virtio,
        UbootDevice::Usb => DeviceType::Usb,
        UbootDevice::Scsi => DeviceType::Scsi,
        UbootDevice::Nvme => DeviceType::Nvme,
    };
    params.device_number = uboot.device_number;
    let number = |label: &str| plan.by_label(label).map_or(0, |p| p.number);
    params.boot_partition = number("BOOT");
    params.slot_a_partition = number("SYSTEM-A");
    params.slot_b_partition = number("SYSTEM-B");
    params.kernel = board.kernel.slot_file.clone();
    params.initrd = SLOT_INITRD.to_string();
    params.console = board.boot.console.clone();
    params.extra_args = board.boot.kernel_args.join(" ");
    if let Some(addresses) = &uboot.load_addresses {
        params.addresses.kernel = addresses.kernel.clone();
        params.addresses.fdt = addresses.fdt.clone();
        params.addresses.ramdisk = addresses.ramdisk.clone();
    }
    let by_script = uboot.env.managed_by == EnvManager::BootScript;
    params.env_storage = match (&uboot.env.file, by_script) {
        (Some(file), true) => EnvStorage::FatFile {
            file_name: file.clone(),
            size: uboot.env.size,
        },
        _ => EnvStorage::SaveEnv,
    };
    Ok(params)
}

/// BOOT of a U-Boot board at `boot_image`: boot script, initial env, firmware and U-Boot.
fn uboot_boot(
    board: &Board,
    plan: &DiskPlan,
    inputs: &BoardInputs,
    overlay: &BootOverlay,
    mtime: u32,
    boot_image: &Path,
    boot_size: u64,
) -> Result<(), ComposeError> {
    let params = script_params(board, plan)?;
    let boot_scr = build_boot_scr(BOOT_CMD_TEMPLATE, &params, "Basalt boot script", mtime)
        .map_err(step("build boot.scr"))?;
    let mut boot_files = vec![("boot.scr".to_string(), FatContent::Bytes(boot_scr))];
    if let EnvStorage::FatFile { file_name, size } = &params.env_storage {
        let env = serialize(&EnvLayout::single(*size as usize), &initial_vars(), 0)
            .map_err(step("serialize the initial U-Boot env"))?;
        boot_files.push((file_name.clone(), FatContent::Bytes(env)));
    }
    for f in &inputs.boot_files {
        boot_files.push((f.dest.clone(), FatContent::File(f.source.clone())));
    }
    overlay.lay_over(&mut boot_files);
    build_fat(boot_image, boot_size, "BOOT", &boot_files).map_err(step("build BOOT"))
}

/// Builds every artefact of `req` into `req.out`, with the board overlay only.
pub fn build(req: &BuildRequest) -> Result<BuildOutput, ComposeError> {
    build_overlaid(req, &UserOverlays::default())
}

/// Builds every artefact of `req` into `req.out`, laying the board overlay and then `user`'s
/// overlays over BOOT ([`overlay`]). Overlays are read and checked before anything is built.
pub fn build_overlaid(
    req: &BuildRequest,
    user: &UserOverlays,
) -> Result<BuildOutput, ComposeError> {
    let board = &req.board;
    if board.boot.family == BootloaderFamily::RpiTryboot {
        return Err(ComposeError::Unsupported {
            board: board.name.clone(),
            reason: format!(
                "composing {} boards is not implemented yet (u-boot-script and \
                 uefi-systemd-boot boards are)",
                board.boot.family.as_str()
            ),
        });
    }
    if req.out.exists()
        && std::fs::read_dir(&req.out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ComposeError::OutputExists(req.out.clone()));
    }
    let overlay = BootOverlay::collect(board, user)?;
    let parent = req
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(step("create the output's parent folder"))?;
    let work = tempfile::Builder::new()
        .prefix(".basalt-build-")
        .tempdir_in(parent)
        .map_err(step("create the build folder"))?;
    let staging = work.path().join("out");
    std::fs::create_dir(&staging).map_err(step("create the staging folder"))?;
    let output = compose(req, &overlay, work.path(), &staging)?;
    outputs::write_release_files(req, &staging, &output)?;
    if req.out.exists() {
        std::fs::remove_dir(&req.out).map_err(step("replace the empty output folder"))?;
    }
    std::fs::rename(&staging, &req.out).map_err(step("move the artefacts into place"))?;
    Ok(BuildOutput {
        disk_image: req.out.join("disk.img"),
        slot_image: req.out.join("slot.img"),
        ..output
    })
}

/// The tree of the slot's root filesystem: the modules not in the initramfs (`early`),
/// their index, the Linux firmware, the STATE template and the extensions `req` carries.
fn root_tree(
    req: &BuildRequest,
    inputs: &BoardInputs,
    early: &ResolvedModules,
    work: &Path,
    seed: &str,
) -> Result<(SquashTree, Vec<ExtensionReport>), ComposeError> {
    let index = &inputs.kernel.modules;
    let mut tree = SquashTree::new();
    let base = format!("lib/modules/{}", index.release());
    let early_paths: Vec<&str> = early.modules.iter().map(|m| m.installed_path()).collect();
    for m in index.modules() {
        if early_paths.contains(&m.installed_path()) {
            continue;
        }
        let dest = format!("{base}/{}", m.installed_path());
        let src = index.root().join(&m.path);
        if m.path == m.installed_path() {
            tree.add_file_from(&dest, 0o644, &src)
        } else {
            tree.add_decompressed_from(&dest, 0o644, &src)
        }
        .map_err(step("add a module to the root filesystem"))?;
    }
    for (name, text) in [
        ("modules.dep", index.modules_dep()),
        ("modules.alias", index.modules_alias()),
        ("modules.softdep", index.modules_softdep()),
    ] {
        tree.add_file(&format!("{base}/{name}"), 0o644, text.into_bytes())
            .map_err(step("add the module index to the root filesystem"))?;
    }
    for f in &inputs.linux_firmware {
        tree.add_file_from(&format!("lib/firmware/{}", f.dest), 0o644, &f.source)
            .map_err(step("add firmware to the root filesystem"))?;
    }
    let state_template = work.join("state-template.ext4");
    let uuid = ext4::guid_text(&disk::derived_guid(seed, "STATE fs"));
    ext4::make_ext4(
        &state_template,
        STATE_TEMPLATE_SIZE,
        "STATE",
        &uuid,
        req.epoch,
    )
    .map_err(step("create the STATE template"))?;
    tree.add_file_from(STATE_TEMPLATE, 0o644, &state_template)
        .map_err(step("add the STATE template to the root filesystem"))?;
    let mut extensions = Vec::new();
    if req.includes_containers() {
        let report = extension::add_containers(
            &mut tree,
            req.board.arch,
            &req.cache,
            &work.join("extensions"),
        )
        .map_err(step("add the container runtime to the root filesystem"))?;
        extensions.push(report);
    }
    Ok((tree, extensions))
}

fn compose(
    req: &BuildRequest,
    overlay: &BootOverlay,
    work: &Path,
    out: &Path,
) -> Result<BuildOutput, ComposeError> {
    let board = &req.board;
    let seed = format!("{} {}", board.name, req.version);
    let mtime = u32::try_from(req.epoch).unwrap_or(u32::MAX);
    let plan = disk_plan(board)?;
    let uefi = board.boot.family == BootloaderFamily::UefiSystemdBoot;

    // 1. inputs
    let inputs: BoardInputs = prepare_inputs(board, &req.kernel, &req.cache, &work.join("inputs"))
        .map_err(step("gather the board inputs"))?;
    let index = &inputs.kernel.modules;

    // 2. initramfs
    let early = index
        .resolve(&board.kernel.early_modules)
        .map_err(step("resolve the early kernel modules"))?;
    let initrd = work.join(SLOT_INITRD);
    early_initramfs(&req.machined, index, &early)
        .map_err(step("compose the initramfs"))?
        .write_file(&initrd, InitramfsCompression::Gzip, mtime)
        .map_err(step("write the initramfs"))?;

    // 3. root filesystem
    let (tree, extensions) = root_tree(req, &inputs, &early, work, &seed)?;
    let rootfs = work.join(SLOT_ROOTFS);
    let options = SquashfsOptions {
        compression: SquashfsCompression::Zstd,
        level: 3,
        block_size: 128 * 1024,
        mtime,
    };
    write_squashfs(&tree, &rootfs, &options).map_err(step("write the root squashfs"))?;
    let verity = append_hash_tree(&rootfs, Salt::FromContent)
        .map_err(step("append the dm-verity hash tree"))?;
    let root_hash = verity.root_hash_hex();

    // 4. system slot
    let slot_size = plan
        .by_label("SYSTEM-A")
        .map(|p| p.request.size)
        .unwrap_or(0);
    let mut slot_files = vec![
        (
            board.kernel.slot_file.clone(),
            FatContent::File(inputs.kernel.image.clone()),
        ),
        (SLOT_INITRD.to_string(), FatContent::File(initrd.clone())),
        (
            "basalt/slot.env".to_string(),
            FatContent::Bytes(
                render_slot_env(&root_hash)
                    .map_err(step("render the slot env"))?
                    .into_bytes(),
            ),
        ),
        (
            "basalt/version".to_string(),
            FatContent::Bytes(format!("{}\n", req.version).into_bytes()),
        ),
        // machined opens the board's boot backend from this name (the A/B state's place)
        (
            "basalt/board".to_string(),
            FatContent::Bytes(format!("{}\n", board.name).into_bytes()),
        ),
    ];
    if uefi {
        slot_files.push((
            SLOT_CMDLINE.to_string(),
            FatContent::Bytes(format!("{}\n", uefi::kernel_args(board)).into_bytes()),
        ));
    }
    for (name, file) in &inputs.kernel.dtbs {
        slot_files.push((format!("dtbs/{name}"), FatContent::File(file.clone())));
    }
    slot_files.push((SLOT_ROOTFS.to_string(), FatContent::File(rootfs)));
    let slot_image = out.join("slot.img");
    build_fat(&slot_image, slot_size, "SYSTEM", &slot_files)
        .map_err(step("build the system slot"))?;

    // 5. BOOT
    let boot_size = plan.by_label("BOOT").map(|p| p.request.size).unwrap_or(0);
    let boot_image = work.join("boot.img");
    if uefi {
        uefi::build_esp(
            &boot_image,
            boot_size,
            board,
            &req.version,
            &inputs,
            uefi::SlotA {
                initrd: &initrd,
                root_hash: &root_hash,
            },
            overlay,
        )?;
    } else {
        uboot_boot(
            board,
            &plan,
            &inputs,
            overlay,
            mtime,
            &boot_image,
            boot_size,
        )?;
    }

    // 6. STATE and DATA
    let mut images = vec![("BOOT".to_string(), boot_image)];
    images.push(("SYSTEM-A".to_string(), slot_image.clone()));
    for label in ["STATE", "DATA"] {
        if let Some(p) = plan.by_label(label) {
            let path = work.join(format!("{}.img", label.to_lowercase()));
            let uuid = ext4::guid_text(&disk::derived_guid(&seed, &format!("{label} fs")));
            ext4::make_ext4(&path, p.request.size, label, &uuid, req.epoch)
                .map_err(step("create an ext4 filesystem"))?;
            images.push((label.to_string(), path));
        }
    }

    // 7. the disk (SYSTEM-B stays empty: BOOT_ORDER lists only A).
    let disk_image = out.join("disk.img");
    assemble::assemble(&disk_image, &plan, &seed, &images).map_err(step("assemble the disk"))?;
    Ok(BuildOutput {
        disk_image,
        slot_image,
        root_hash,
        plan,
        kernel_release: index.release().to_string(),
        extensions,
    })
}
