//! Admitting a bundle header, and planning which of its chunks the node already holds.
//!
//! [`admit`] is every check an upgrade makes before anything is written: the signature
//! against the trusted keys, the board, the version (and `min_version`), the boot state
//! (booted slot committed, the target not booted), the tries and the size of the target
//! slot. The `Upgrade` and `UpgradeFromUrl` sessions call it when the header is complete;
//! [`UpgradeEngine::plan`] (the `UpgradePlan` RPC) calls it without starting anything.
//!
//! A new image mostly repeats the booted one (same kernel and initramfs, the unused tail of
//! the slot all zeros), so a node copies those chunks from its booted slot instead of
//! receiving them: [`UpgradeEngine::plan`] answers which bundle byte ranges a client still
//! has to send, and a session started with `reuse_booted_slot` copies the rest. Copied
//! chunks go through the same sha256 check against the signed chunk table as received ones,
//! so a changed booted slot can only make the upgrade fail, never install other bytes.
//!
//! [`BootedSlotIndex`] hashes the booted slot once per chunk size and keeps the result:
//! machined never writes the slot it booted from (it is the verity-protected root), so the
//! index stays true until the next boot. Reading a 512 MiB slot under QEMU TCG takes
//! seconds; the plan and the session that follows share one index.

use super::device::SlotDevice;
use super::device::SlotDevices;
use super::engine::{MAX_TRIES, UpgradeEngine, UpgradeError};
use super::types::{UpgradeContext, UpgradeOptions, UpgradeTarget};
use super::version::Version;
use basalt_bootloader::Slot;
use basalt_image::bundle::{BundleHeader, ChunkIndex, VerifiedManifest};
use sha2::{Digest, Sha256};
use std::ops::Range;
use std::sync::{Arc, Mutex};

/// A bundle header that passed every check of an upgrade, and where it would go.
pub(super) struct Admitted {
    /// The verified manifest.
    pub manifest: VerifiedManifest,
    /// The slot to write (the one not booted).
    pub slot: Slot,
    /// Boot tries of the new slot.
    pub tries: u32,
    /// The target slot's device.
    pub device: Box<dyn SlotDevice>,
}

/// Checks `header` for an upgrade of `target` with `options`; see the module docs.
pub(super) fn admit(
    ctx: &dyn UpgradeContext,
    options: &UpgradeOptions,
    target: &UpgradeTarget,
    devices: &dyn SlotDevices,
    header: &BundleHeader,
) -> Result<Admitted, UpgradeError> {
    let trust = ctx
        .trust()
        .map_err(UpgradeError::Config)?
        .unwrap_or_default();
    if trust.keys.is_empty() {
        return Err(UpgradeError::NoTrustedKeys);
    }
    let manifest = header.verify(&trust.keys)?;
    let m = manifest.manifest().clone();
    if m.board != target.board {
        return Err(UpgradeError::WrongBoard {
            bundle: m.board,
            node: target.board.clone(),
        });
    }
    let booted = Version::parse(&target.booted_version)?;
    let new = Version::parse(&m.version)?;
    if let Some(min) = &m.min_version
        && booted < Version::parse(min)?
    {
        return Err(UpgradeError::TooOld {
            bundle: m.version,
            min_version: min.clone(),
            booted: booted.to_string(),
        });
    }
    if new <= booted && !options.allow_downgrade {
        return Err(UpgradeError::NotNewer {
            bundle: m.version,
            booted: booted.to_string(),
        });
    }
    let status = ctx.boot_status()?;
    let booted_slot = status.booted.unwrap_or(target.booted_slot);
    let slot = target.booted_slot.other();
    if booted_slot == slot {
        return Err(UpgradeError::TargetIsBooted(slot));
    }
    if !status.committed {
        return Err(UpgradeError::TrialBoot {
            booted: booted_slot,
            target: slot,
        });
    }
    let tries = options.tries.unwrap_or(trust.tries);
    if !(1..=MAX_TRIES).contains(&tries) {
        return Err(UpgradeError::BadTries(tries));
    }
    let device = devices.open(slot)?;
    let size = device.len()?;
    if size < m.slot_size {
        return Err(UpgradeError::SlotTooSmall {
            slot,
            device: device.name(),
            size,
            needed: m.slot_size,
        });
    }
    Ok(Admitted {
        manifest,
        slot,
        tries,
        device,
    })
}

/// The booted slot's chunk hashes, computed once per chunk size; see the module docs.
#[derive(Debug, Clone, Default)]
pub(super) struct BootedSlotIndex(Arc<Mutex<Option<ChunkIndex>>>);

impl BootedSlotIndex {
    /// The index of the first `len` bytes of `booted` (at most its size) in chunks of
    /// `chunk_size`, from the cache when one with that chunk size and length is kept.
    pub fn get(
        &self,
        devices: &dyn SlotDevices,
        booted: Slot,
        chunk_size: u32,
        len: u64,
    ) -> Result<ChunkIndex, UpgradeError> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut active = devices.open_read(booted)?;
        let len = active.len()?.min(len);
        if let Some(index) = cache.as_ref()
            && index.chunk_size() == chunk_size
            && index.len() == len
        {
            return Ok(index.clone());
        }
        let mut hashes = Vec::new();
        let mut buf = vec![0u8; chunk_size as usize];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(u64::from(chunk_size)) as usize;
            active.read_at(off, &mut buf[..n])?;
            hashes.push(Sha256::digest(&buf[..n]).into());
            off += n as u64;
        }
        let index = ChunkIndex::new(chunk_size, len, hashes)?;
        *cache = Some(index.clone());
        Ok(index)
    }

    /// Forgets the index (a copied chunk did not match: the slot changed after all).
    pub fn forget(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What a client still has to send of a bundle; see [`UpgradeEngine::plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradePlan {
    /// Bundle byte ranges (end exclusive) to send after the header, in order, adjacent
    /// chunks merged.
    pub send: Vec<Range<u64>>,
    /// Payload bytes in `send`.
    pub send_bytes: u64,
    /// Chunks the node copies from its booted slot.
    pub reuse_chunks: u64,
    /// Chunks of the payload.
    pub chunk_count: u64,
    /// The slot an upgrade would write.
    pub slot: Slot,
    /// The bundle's version.
    pub version: String,
}

/// Bytes at the start of a slot that a written slot image never leaves all zero (its
/// filesystem's boot sector / superblock).
const BLANK_PROBE: usize = 64 << 10;

impl UpgradeEngine {
    /// The device of `slot` when its first 64 KiB are all zero: a slot that was never
    /// written (a fresh disk image leaves SYSTEM-B empty). `None` when it holds data.
    pub fn blank_slot(&self, slot: Slot) -> Result<Option<String>, UpgradeError> {
        let mut device = self.devices.open_read(slot)?;
        let len = device.len()?.min(BLANK_PROBE as u64) as usize;
        let mut buf = vec![0u8; len];
        device.read_at(0, &mut buf)?;
        Ok(buf.iter().all(|b| *b == 0).then(|| device.name()))
    }

    /// Checks a bundle `header` (its bytes from offset 0, at least up to the header length)
    /// as an upgrade with `options` would, and answers which payload chunks the booted
    /// slot does not hold. Reads only; nothing is written and no upgrade is started. When
    /// the booted slot cannot be read, the plan says to send everything (logged).
    pub fn plan(
        &self,
        ctx: &dyn UpgradeContext,
        options: &UpgradeOptions,
        header: &[u8],
    ) -> Result<UpgradePlan, UpgradeError> {
        let parsed = BundleHeader::parse_named(header, "the bundle header sent for a plan")?;
        let admitted = admit(ctx, options, self.target(), &*self.devices, &parsed)?;
        let chunks = admitted.manifest.chunks();
        let header_len = parsed.header_len();
        let payload = |r: Range<u64>| header_len + r.start..header_len + r.end;
        let booted = self.target().booted_slot;
        let (send, reuse_chunks) = match self.booted_index.get(
            &*self.devices,
            booted,
            chunks.chunk_size(),
            chunks.len(),
        ) {
            Ok(have) => {
                let diff = chunks.diff(&have);
                let send = diff.fetch_ranges().into_iter().map(payload).collect();
                (send, diff.reuse_count())
            }
            Err(e @ (UpgradeError::Device(_) | UpgradeError::Bundle(_))) => {
                ctx.log(&format!(
                        "upgrade plan: cannot index the booted slot {booted} ({e}); the whole payload is needed"
                    ));
                (vec![payload(0..chunks.len())], 0)
            }
            Err(e) => return Err(e),
        };
        let send_bytes = send.iter().map(|r: &Range<u64>| r.end - r.start).sum();
        let m = admitted.manifest.manifest();
        ctx.log(&format!(
            "upgrade plan: bundle {} {} for slot {}: {reuse_chunks} of {} chunks are in the booted slot {booted}, {send_bytes} bytes to send",
            m.board,
            m.version,
            admitted.slot,
            chunks.count()
        ));
        Ok(UpgradePlan {
            send,
            send_bytes,
            reuse_chunks,
            chunk_count: chunks.count(),
            slot: admitted.slot,
            version: m.version.clone(),
        })
    }
}
