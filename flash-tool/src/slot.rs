//! `write-slot`: one system slot of an already-flashed card from a signed update bundle,
//! then the bootloader told to try that slot on the next boot.
//!
//! 1. the bundle's signature is checked with the `--trusted-key` public key
//!    ([`basalt_image::bundle`]), its board must be the `--board` named (the card does not
//!    record its board) and its payload must fit the `SYSTEM-A`/`SYSTEM-B` partition;
//! 2. the bootloader marks the slot as being updated (`prepare_update`), so an interrupted
//!    write never leaves it bootable;
//! 3. each payload chunk is read and checked against the signed chunk table before it is
//!    written; fdatasync; read-back verification against the same hashes;
//! 4. on systemd-boot (UEFI boards), which loads kernels only from the ESP, the slot's
//!    kernel and initramfs are copied from the written slot onto the ESP and its loader
//!    entry rewritten, still marked bad
//!    ([`basalt_bootloader::systemd_boot::install_slot_boot`]);
//! 5. `activate(slot, tries)`: the next boot tries the new slot with boot counting, and
//!    falls back to the other one if it never commits.
//!
//! The bootloader is found on the BOOT partition as `basalt-boot` does: a U-Boot env file
//! (`uboot.env`), systemd-boot loader entries, or a Raspberry Pi `autoboot.txt`, read and
//! written inside the FAT without mounting ([`basalt_bootloader::systemd_boot::FatEsp`]).

use std::path::{Path, PathBuf};

use basalt_bootloader::backend::Bootloader;
use basalt_bootloader::env::{EnvLayout, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::partition_table::PartitionTable;
use basalt_bootloader::slot::Slot;
use basalt_bootloader::systemd_boot::{
    EspFs, FatEsp, SlotBootFiles, SystemdBoot, install_slot_boot,
};
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_image::bundle::{BundleReader, load_verifying_key};

use crate::blockdev::{AlignedBuf, DeviceFile, Target};
use crate::progress::{Phase, Reporter};
use crate::writer::Written;

/// A failed slot write.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The bundle or key is unusable, badly signed, for another board, or too large.
    #[error("bundle {path} rejected: {reason}")]
    Rejected {
        /// The bundle.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The card has no such partition or no bootloader state.
    #[error("{device}: {reason}")]
    Card {
        /// The device.
        device: String,
        /// What is missing.
        reason: String,
    },
    /// Writing failed.
    #[error(transparent)]
    Block(#[from] crate::blockdev::BlockError),
    /// Verification failed.
    #[error(transparent)]
    Verify(#[from] crate::verify::VerifyError),
    /// The bootloader refused or failed.
    #[error("bootloader on {device}: {reason}")]
    Bootloader {
        /// The device.
        device: String,
        /// The error.
        reason: String,
    },
}

/// What to write.
#[derive(Debug, Clone)]
pub struct SlotOptions {
    /// The device (whole disk).
    pub device: PathBuf,
    /// Slot A or B.
    pub slot: Slot,
    /// The signed bundle.
    pub bundle: PathBuf,
    /// The trusted public key (PEM or base64).
    pub trusted_key: PathBuf,
    /// The board the card is for.
    pub board: String,
    /// Boot attempts before falling back.
    pub tries: u32,
    /// Read back and compare.
    pub verify: bool,
    /// Use O_DIRECT.
    pub direct: bool,
    /// Open without O_EXCL (regular files in tests).
    pub exclusive: bool,
}

/// What a slot write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotReport {
    /// Bytes written.
    pub bytes: u64,
    /// The bundle's version.
    pub version: String,
    /// The bootloader that was switched.
    pub bootloader: String,
}

fn open_bootloader(
    device: &Path,
    boot: (u64, u64),
    env_size: usize,
) -> Result<(String, Box<dyn Bootloader>), String> {
    let esp = FatEsp::open(device, boot.0, boot.1)
        .map_err(|e| e.to_string())?
        .with_label(&format!("BOOT of {}", device.display()));
    let what = esp.describe();
    if esp.exists("uboot.env").map_err(|e| e.to_string())? {
        let store = EspFileStore::new(esp, "uboot.env");
        let env = UbootEnv::load(store, EnvLayout::single(env_size)).map_err(|e| e.to_string())?;
        return Ok((
            format!("u-boot env on {what}"),
            Box::new(UbootBootloader::new(env, None)),
        ));
    }
    if esp.exists("loader/entries").map_err(|e| e.to_string())? {
        return Ok((
            format!("systemd-boot on {what}"),
            Box::new(SystemdBoot::new(esp, None)),
        ));
    }
    if esp.exists("autoboot.txt").map_err(|e| e.to_string())? {
        let t = basalt_bootloader::tryboot::Tryboot::new(esp, Default::default(), None, None)
            .map_err(|e| e.to_string())?;
        return Ok((format!("tryboot on {what}"), Box::new(t)));
    }
    Err(format!(
        "{what} has no uboot.env, loader/entries/ or autoboot.txt"
    ))
}

/// On a systemd-boot ESP: copies the kernel and initramfs of the slot just written (the FAT
/// in `part`) onto the ESP and rewrites its entry (still bad until `activate`). Other
/// bootloaders read the slot partition themselves: nothing to do.
fn install_esp_kernel(
    device: &Path,
    boot: (u64, u64),
    part: &basalt_bootloader::partition_table::Partition,
    slot: Slot,
    board: &basalt_boards::Board,
) -> Result<(), String> {
    let esp = FatEsp::open(device, boot.0, boot.1)
        .map_err(|e| e.to_string())?
        .with_label(&format!("BOOT of {}", device.display()));
    if esp.exists("uboot.env").map_err(|e| e.to_string())?
        || !esp.exists("loader/entries").map_err(|e| e.to_string())?
    {
        return Ok(());
    }
    let source = FatEsp::open(device, part.start, part.size)
        .map_err(|e| e.to_string())?
        .with_label(&format!(
            "{} of {}",
            slot.partition_label(),
            device.display()
        ));
    let mut sd = SystemdBoot::new(esp, None);
    install_slot_boot(
        &mut sd,
        slot,
        &source,
        &SlotBootFiles::new(&board.kernel.slot_file),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Writes one slot (module documentation).
pub fn write_slot(opts: &SlotOptions, reporter: &dyn Reporter) -> Result<SlotReport, SlotError> {
    let rejected = |reason: String| SlotError::Rejected {
        path: opts.bundle.clone(),
        reason,
    };
    let dev_name = opts.device.display().to_string();
    let card = |reason: String| SlotError::Card {
        device: dev_name.clone(),
        reason,
    };
    let key = load_verifying_key(&opts.trusted_key).map_err(|e| rejected(e.to_string()))?;
    let mut reader = BundleReader::open(&opts.bundle).map_err(|e| rejected(e.to_string()))?;
    let manifest = reader.verify(&[key]).map_err(|e| rejected(e.to_string()))?;
    let m = manifest.manifest();
    if m.board != opts.board {
        return Err(rejected(format!(
            "it is for board {}, the card is {}",
            m.board, opts.board
        )));
    }
    let board = basalt_boards::Board::load(&opts.board).map_err(|e| card(e.to_string()))?;
    let env_size = board.uboot.as_ref().map_or(0x4000, |u| u.env.size as usize);
    let mut f = std::fs::File::open(&opts.device).map_err(|e| card(e.to_string()))?;
    let table = PartitionTable::read(&mut f, &dev_name).map_err(|e| card(e.to_string()))?;
    drop(f);
    let label = opts.slot.partition_label();
    let part = table
        .by_label(label)
        .ok_or_else(|| card(format!("no partition labelled {label}")))?
        .clone();
    let boot = table
        .by_label("BOOT")
        .or_else(|| table.by_number(1))
        .ok_or_else(|| card("no BOOT partition".into()))?
        .clone();
    if manifest.payload_len() > part.size {
        return Err(rejected(format!(
            "its slot image has {} bytes, {label} only {}",
            manifest.payload_len(),
            part.size
        )));
    }
    let bl_err = |reason: String| SlotError::Bootloader {
        device: dev_name.clone(),
        reason,
    };
    let (bl_name, mut bl) =
        open_bootloader(&opts.device, (boot.start, boot.size), env_size).map_err(bl_err)?;
    bl.prepare_update(opts.slot)
        .map_err(|e| bl_err(e.to_string()))?;
    drop(bl);

    let mut target = DeviceFile::open(&opts.device, opts.exclusive, opts.direct)?;
    let total = manifest.payload_len();
    reporter.phase(&dev_name, Phase::Write, Some(total));
    let mut written = Vec::new();
    let mut done = 0u64;
    for i in 0..manifest.chunks().count() {
        let data = reader
            .read_chunk(&manifest, i)
            .map_err(|e| rejected(e.to_string()))?;
        let mut buf = AlignedBuf::new(data.len());
        buf.as_mut_slice().copy_from_slice(&data);
        let off = part.start + i * u64::from(manifest.chunks().chunk_size());
        target.write_at(buf.as_slice(), off)?;
        written.push(Written {
            offset: off,
            len: data.len() as u64,
            sha256: *manifest.chunks().hash(i).unwrap_or(&[0; 32]),
        });
        done += data.len() as u64;
        reporter.progress(&dev_name, Phase::Write, done);
    }
    target.sync()?;
    reporter.done(&dev_name, Phase::Write, done);
    if opts.verify {
        target.release();
        crate::verify::verify(&mut target, &written, reporter, &dev_name)?;
    }
    drop(target);
    install_esp_kernel(
        &opts.device,
        (boot.start, boot.size),
        &part,
        opts.slot,
        &board,
    )
    .map_err(bl_err)?;
    let (_, mut bl) =
        open_bootloader(&opts.device, (boot.start, boot.size), env_size).map_err(bl_err)?;
    bl.activate(opts.slot, opts.tries)
        .map_err(|e| bl_err(e.to_string()))?;
    drop(bl);
    if let Ok(mut t) = DeviceFile::open(&opts.device, false, false) {
        let _ = t.sync();
        t.release();
    }
    Ok(SlotReport {
        bytes: done,
        version: m.version.clone(),
        bootloader: bl_name,
    })
}
