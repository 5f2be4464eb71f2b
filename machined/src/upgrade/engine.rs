//! The upgrade engine: one signed bundle into the inactive slot, then the bootloader.
//!
//! [`UpgradeEngine`] holds what does not change between upgrades (the node's board,
//! booted version and slot, the slot devices, the progress file) and admits one upgrade
//! at a time. [`UpgradeEngine::begin`] returns an [`UpgradeSession`], which is fed the
//! bundle's bytes in file order by whatever transport carries them (the `Upgrade` stream,
//! the HTTP fetcher of `UpgradeFromUrl`, a test) and then finishes:
//!
//! 1. **Header**: bytes are collected until the whole header parsed; its signature is
//!    verified against the keys of the stored `UpdateConfig` (none → refused); the board,
//!    the version (newer than the booted one unless `allow_downgrade`; the bundle's
//!    `min_version` always), the boot state (booted slot committed, target not booted),
//!    the tries and the slot size are checked. Nothing is written before this.
//! 2. **Prepare**: the bootloader's `prepare_update(target)` takes the target out of the
//!    boot order; the progress record (bundle identity, slot, offset) is written. When a
//!    record of the same bundle and slot exists, the write resumes at its offset.
//! 3. **Write**: payload bytes are buffered chunk by chunk; a chunk is written to the slot
//!    only after its sha256 matched the signed chunk table. Every `persist_every` bytes
//!    (4 MiB) the slot is fsynced and then the progress record is replaced atomically.
//! 4. **Read-back** ([`UpgradeSession::readback`]): fsync, drop the slot's cached pages,
//!    read the whole slot and hash it chunk by chunk and whole; a mismatch refuses the
//!    activation, names the first bad chunk and rewinds the progress to it.
//! 5. **Activate** ([`UpgradeSession::activate`]): the bootloader copies what it needs from
//!    the verified slot (`install_slot_boot_files`: on UEFI boards the kernel and initramfs
//!    onto the ESP and the slot's loader entry, still marked bad), then `activate(target,
//!    tries)` in one bootloader write, the progress record is removed, and the node reboots through
//!    [`UpgradeContext::reboot`] unless the upgrade is staged.
//!
//! Dropping a session before it finished (a cut stream) syncs the slot and records the
//! verified offset, so the next session of the same bundle continues there.

use super::device::{FileSlotDevices, SlotDevice, SlotDevices};
pub use super::error::UpgradeError;
use super::plan::{BootedSlotIndex, admit};
use super::progress::{ProgressError, ProgressStore, UpgradeProgress};
pub use super::types::{UpgradeContext, UpgradeOptions, UpgradeOutcome, UpgradeTarget};
use basalt_bootloader::Slot;
use basalt_image::bundle::{
    BundleError, BundleHeader, ChunkSource, PayloadVerifier, VerifiedManifest,
};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Default bytes between two progress checkpoints (slot fsync + progress record).
pub const DEFAULT_PERSIST_EVERY: u64 = 4 << 20;
/// Bytes asked for at a time while the header is incomplete.
pub const HEADER_PROBE: u64 = 64 << 10;
/// Largest number of boot tries a bootloader counter holds.
pub const MAX_TRIES: u32 = 9;

/// Admits one upgrade at a time; see the module docs.
pub struct UpgradeEngine {
    target: UpgradeTarget,
    pub(super) devices: Arc<dyn SlotDevices>,
    pub(super) booted_index: BootedSlotIndex,
    store: ProgressStore,
    busy: Arc<AtomicBool>,
    persist_every: u64,
}

impl std::fmt::Debug for UpgradeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeEngine")
            .field("target", &self.target)
            .field("progress", &self.store.path())
            .finish_non_exhaustive()
    }
}

struct BusyGuard(Arc<AtomicBool>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl UpgradeEngine {
    /// An engine writing the slot devices of `target`, keeping progress in `state_dir`.
    pub fn new(target: UpgradeTarget, state_dir: &Path) -> Self {
        let devices = Arc::new(FileSlotDevices::new(target.slot_devices.clone()));
        Self::with_devices(target, state_dir, devices)
    }

    /// An engine over other slot devices (tests: memory slots).
    pub fn with_devices(
        target: UpgradeTarget,
        state_dir: &Path,
        devices: Arc<dyn SlotDevices>,
    ) -> Self {
        UpgradeEngine {
            target,
            devices,
            booted_index: BootedSlotIndex::default(),
            store: ProgressStore::new(state_dir),
            busy: Arc::new(AtomicBool::new(false)),
            persist_every: DEFAULT_PERSIST_EVERY,
        }
    }

    /// Checkpoints every `bytes` payload bytes (at least one chunk is always written).
    pub fn set_persist_every(&mut self, bytes: u64) {
        self.persist_every = bytes.max(1);
    }

    /// The node the engine upgrades.
    pub fn target(&self) -> &UpgradeTarget {
        &self.target
    }

    /// Whether an upgrade is running.
    pub fn is_running(&self) -> bool {
        self.busy.load(Ordering::SeqCst)
    }

    /// The recorded progress of an unfinished upgrade. A record for the booted slot is
    /// stale (that slot was activated and booted since) and is not reported.
    pub fn progress(&self) -> Result<Option<UpgradeProgress>, UpgradeError> {
        Ok(self
            .store
            .load()?
            .filter(|p| p.slot() == Some(self.target.booted_slot.other())))
    }

    /// Starts an upgrade from `source` (a file name or URL, for messages). Refused with
    /// [`UpgradeError::Busy`] while another runs.
    pub fn begin(
        &self,
        ctx: Arc<dyn UpgradeContext>,
        options: UpgradeOptions,
        source: &str,
    ) -> Result<UpgradeSession, UpgradeError> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(UpgradeError::Busy);
        }
        let busy = BusyGuard(self.busy.clone());
        if let Some(t) = options.tries
            && !(1..=MAX_TRIES).contains(&t)
        {
            return Err(UpgradeError::BadTries(t));
        }
        ctx.log(&format!("upgrade: receiving bundle {source}"));
        Ok(UpgradeSession {
            ctx,
            options,
            source: source.to_string(),
            target: self.target.clone(),
            devices: self.devices.clone(),
            booted_index: self.booted_index.clone(),
            store: self.store.clone(),
            persist_every: self.persist_every,
            header: Vec::new(),
            payload: None,
            finished: false,
            _busy: busy,
        })
    }
}

struct Payload {
    manifest: VerifiedManifest,
    identity: String,
    header_len: u64,
    slot: Slot,
    device: Box<dyn SlotDevice>,
    verifier: PayloadVerifier,
    /// Bytes of the chunk being received, from `written_to`.
    buf: Vec<u8>,
    /// Payload bytes verified and written (not necessarily synced).
    written_to: u64,
    /// Payload bytes synced and recorded.
    persisted: u64,
    /// Payload bytes written by this session.
    written: u64,
    tries: u32,
    readback_ok: bool,
    /// A write failed: nothing after `written_to` may be recorded.
    poisoned: bool,
    /// Where each chunk comes from, once [`UpgradeSession::plan_reuse`] ran.
    sources: Option<Vec<ChunkSource>>,
    /// The booted slot, read for chunks it shares with the new image.
    active: Option<Box<dyn SlotDevice>>,
}

impl Payload {
    fn record(&self) -> UpgradeProgress {
        let m = self.manifest.manifest();
        UpgradeProgress {
            bundle_sha256: self.identity.clone(),
            board: m.board.clone(),
            version: m.version.clone(),
            slot: self.slot.to_string(),
            header_len: self.header_len,
            slot_size: m.slot_size,
            verified: self.written_to,
        }
    }

    fn checkpoint(&mut self, store: &ProgressStore) -> Result<(), UpgradeError> {
        self.device.sync()?;
        store.save(&self.record())?;
        self.persisted = self.written_to;
        Ok(())
    }
}

/// One upgrade in progress; see the module docs.
pub struct UpgradeSession {
    ctx: Arc<dyn UpgradeContext>,
    options: UpgradeOptions,
    source: String,
    target: UpgradeTarget,
    devices: Arc<dyn SlotDevices>,
    booted_index: BootedSlotIndex,
    store: ProgressStore,
    persist_every: u64,
    header: Vec<u8>,
    payload: Option<Payload>,
    finished: bool,
    _busy: BusyGuard,
}

impl std::fmt::Debug for UpgradeSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeSession")
            .field("source", &self.source)
            .field("next_offset", &self.next_offset())
            .finish_non_exhaustive()
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl UpgradeSession {
    /// Bundle offset the session expects next.
    pub fn next_offset(&self) -> u64 {
        match &self.payload {
            None => self.header.len() as u64,
            Some(p) => p.header_len + p.written_to + p.buf.len() as u64,
        }
    }

    /// Bundle offset up to which everything is verified and written.
    pub fn resume_offset(&self) -> u64 {
        match &self.payload {
            None => 0,
            Some(p) => p.header_len + p.written_to,
        }
    }

    /// Payload bytes verified and written, and the payload size (0 before the header).
    pub fn written(&self) -> (u64, u64) {
        match &self.payload {
            None => (0, 0),
            Some(p) => (p.written_to, p.manifest.manifest().slot_size),
        }
    }

    /// Whether the header is verified.
    pub fn header_verified(&self) -> bool {
        self.payload.is_some()
    }

    /// Whether every payload chunk is verified and written.
    pub fn is_complete(&self) -> bool {
        self.payload
            .as_ref()
            .is_some_and(|p| p.written_to == p.manifest.manifest().slot_size)
    }

    /// The verified manifest, once the header is verified.
    pub fn manifest(&self) -> Option<&VerifiedManifest> {
        self.payload.as_ref().map(|p| &p.manifest)
    }

    /// The slot being written, once the header is verified.
    pub fn slot(&self) -> Option<Slot> {
        self.payload.as_ref().map(|p| p.slot)
    }

    /// Takes `data` found at bundle offset `offset`. Data the session already has is
    /// skipped; data beyond [`UpgradeSession::next_offset`] is refused as a gap.
    pub fn feed(&mut self, offset: u64, data: &[u8]) -> Result<(), UpgradeError> {
        if self.payload.is_some() {
            if offset > self.next_offset() {
                // A client sending only what UpgradePlan listed skips the chunks the
                // booted slot holds: copy them now (a real gap stays one).
                self.copy_local()?;
            }
            return self.feed_payload(offset, data);
        }
        let have = self.header.len() as u64;
        if offset > have {
            return Err(UpgradeError::Gap {
                offset,
                expected: have,
            });
        }
        let skip = (have - offset) as usize;
        if skip >= data.len() {
            return Ok(());
        }
        self.header.extend_from_slice(&data[skip..]);
        let header = match BundleHeader::parse_named(&self.header, &self.source) {
            Ok(h) => h,
            Err(BundleError::NeedMoreBytes { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let header_len = header.header_len();
        let rest = self.header.split_off(header_len as usize);
        self.start(&header)?;
        self.header.clear();
        if self.options.reuse_booted_slot {
            self.plan_reuse()?;
        }
        if rest.is_empty() {
            Ok(())
        } else {
            self.feed_payload(header_len, &rest)
        }
    }

    fn start(&mut self, header: &BundleHeader) -> Result<(), UpgradeError> {
        let admitted = admit(
            &*self.ctx,
            &self.options,
            &self.target,
            &*self.devices,
            header,
        )?;
        let (manifest, slot, tries, device) = (
            admitted.manifest,
            admitted.slot,
            admitted.tries,
            admitted.device,
        );
        let m = manifest.manifest().clone();
        let header_len = header.header_len();
        let identity = sha256_hex(&self.header[..header_len as usize]);
        let verified = match self.store.load() {
            Ok(Some(p))
                if p.bundle_sha256 == identity
                    && p.slot() == Some(slot)
                    && p.slot_size == m.slot_size
                    && p.header_len == header_len =>
            {
                p.verified
            }
            Ok(_) => 0,
            Err(ProgressError::Corrupt { path, message }) => {
                self.ctx.log(&format!(
                    "upgrade: ignoring unreadable progress record {} ({message}); starting over",
                    path.display()
                ));
                0
            }
            Err(e) => return Err(e.into()),
        };
        let verifier = if verified > 0 {
            PayloadVerifier::resume(&manifest, verified)?
        } else {
            PayloadVerifier::new(&manifest)
        };
        self.ctx.log(&format!(
            "upgrade: bundle {} version {} for {} verified (signed by {}, {} bytes in {} chunks); slot {slot} ({}) taken out of the boot order",
            &identity[..16],
            m.version,
            m.board,
            basalt_image::bundle::verifying_key_base64(manifest.signer()),
            m.slot_size,
            m.chunk_count,
            device.name()
        ));
        self.ctx.prepare_update(slot)?;
        let mut payload = Payload {
            manifest,
            identity,
            header_len,
            slot,
            device,
            verifier,
            buf: Vec::new(),
            written_to: verified,
            persisted: verified,
            written: 0,
            tries,
            readback_ok: false,
            poisoned: false,
            sources: None,
            active: None,
        };
        if verified > 0 {
            self.ctx.log(&format!(
                "upgrade: resuming slot {slot} at payload offset {verified} of {}",
                m.slot_size
            ));
        } else {
            payload.checkpoint(&self.store)?;
        }
        self.payload = Some(payload);
        Ok(())
    }

    fn feed_payload(&mut self, offset: u64, data: &[u8]) -> Result<(), UpgradeError> {
        let persist_every = self.persist_every;
        let Some(p) = self.payload.as_mut() else {
            return Err(UpgradeError::State("payload before header"));
        };
        if p.poisoned {
            return Err(UpgradeError::State("a slot write failed; start again"));
        }
        let total = p.manifest.manifest().slot_size;
        let bundle_len = p.header_len + total;
        let end = offset + data.len() as u64;
        if end > bundle_len {
            return Err(UpgradeError::PastEnd { end, bundle_len });
        }
        let expected = p.header_len + p.written_to + p.buf.len() as u64;
        if offset > expected {
            return Err(UpgradeError::Gap { offset, expected });
        }
        if end <= expected {
            return Ok(());
        }
        let mut data = &data[(expected - offset) as usize..];
        let chunk_size = u64::from(p.manifest.chunks().chunk_size());
        while !data.is_empty() {
            let index = p.written_to / chunk_size;
            let chunk_len = p.manifest.chunks().chunk_len(index) as usize;
            let take = (chunk_len - p.buf.len()).min(data.len());
            p.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if p.buf.len() < chunk_len {
                break;
            }
            let start = p.written_to;
            if let Err(e) = p.verifier.feed(start, &p.buf) {
                p.buf.clear();
                p.verifier = PayloadVerifier::resume(&p.manifest, p.written_to)?;
                return Err(e.into());
            }
            if let Err(e) = p.device.write_at(start, &p.buf) {
                p.poisoned = true;
                return Err(e.into());
            }
            p.written_to += chunk_len as u64;
            p.written += chunk_len as u64;
            p.buf.clear();
            if p.written_to - p.persisted >= persist_every || p.written_to == total {
                p.checkpoint(&self.store)?;
            }
        }
        Ok(())
    }

    /// Indexes the booted slot with the bundle's chunk size and plans which chunks of the
    /// new image can be copied from it (same sha256) instead of being fetched. Returns the
    /// number of chunks to copy and the payload bytes still to fetch. The booted slot is
    /// only read; copied chunks are verified like fetched ones.
    ///
    /// When the booted slot cannot be read, everything is fetched (logged, not an error).
    pub fn plan_reuse(&mut self) -> Result<(u64, u64), UpgradeError> {
        match self.index_booted_slot() {
            Ok(r) => Ok(r),
            Err(e @ (UpgradeError::Device(_) | UpgradeError::Bundle(_))) => {
                self.ctx.log(&format!(
                    "upgrade: not reusing chunks of the booted slot ({e}); fetching everything"
                ));
                let total = self.written().1;
                Ok((0, total - self.written().0))
            }
            Err(e) => Err(e),
        }
    }

    fn index_booted_slot(&mut self) -> Result<(u64, u64), UpgradeError> {
        let booted = self.target.booted_slot;
        let Some(p) = self.payload.as_mut() else {
            return Err(UpgradeError::State("plan_reuse before the header"));
        };
        // Bytes of a partly received chunk are dropped: that chunk may now be copied.
        p.buf.clear();
        let active = self.devices.open_read(booted)?;
        let chunks = p.manifest.chunks();
        let have =
            self.booted_index
                .get(&*self.devices, booted, chunks.chunk_size(), chunks.len())?;
        let diff = p.manifest.chunks().diff(&have);
        let reuse = diff.reuse_count();
        let fetch = diff.fetch_bytes();
        p.sources = Some(diff.sources().to_vec());
        p.active = Some(active);
        self.ctx.log(&format!(
            "upgrade: {reuse} chunks are copied from the booted slot {booted}, {fetch} bytes are fetched"
        ));
        Ok((reuse, fetch))
    }

    fn source(&self, index: u64) -> ChunkSource {
        self.payload
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .and_then(|s| s.get(index as usize).copied())
            .unwrap_or(ChunkSource::Fetch)
    }

    /// Copies the chunks planned by [`UpgradeSession::plan_reuse`] that come next, from the
    /// booted slot, through the same verification and write as fetched data. Returns how
    /// many were copied (0 without a plan, or when the next chunk must be fetched).
    pub fn copy_local(&mut self) -> Result<u64, UpgradeError> {
        let mut copied = 0;
        loop {
            let Some(p) = self.payload.as_mut() else {
                return Ok(copied);
            };
            let chunks = p.manifest.chunks();
            let chunk_size = u64::from(chunks.chunk_size());
            if !p.buf.is_empty() || p.written_to == chunks.len() {
                return Ok(copied);
            }
            let index = p.written_to / chunk_size;
            let len = chunks.chunk_len(index) as usize;
            let at = p.header_len + p.written_to;
            let ChunkSource::Local { chunk } = self.source(index) else {
                return Ok(copied);
            };
            let mut data = vec![0u8; len];
            let Some(p) = self.payload.as_mut() else {
                return Ok(copied);
            };
            let Some(active) = p.active.as_mut() else {
                return Ok(copied);
            };
            active.read_at(chunk * chunk_size, &mut data)?;
            if let Err(e) = self.feed_payload(at, &data) {
                self.booted_index.forget();
                self.ctx.log(&format!(
                    "upgrade: chunk {index} copied from the booted slot was refused: {e}"
                ));
                return Err(e);
            }
            copied += 1;
        }
    }

    /// The bundle byte range to fetch next: from [`UpgradeSession::next_offset`] to the end
    /// of the run of chunks that must be fetched (the bundle end without a plan). `None`
    /// once everything is there, or when the next chunk is to be copied.
    pub fn fetch_range(&self) -> Option<std::ops::Range<u64>> {
        let next = self.next_offset();
        let Some(p) = self.payload.as_ref() else {
            // The header: probe 64 KiB at a time (a 512 MiB image in 1 MiB chunks has a
            // 20 KiB header) and fetch no payload the booted slot may already hold.
            return Some(next..next + HEADER_PROBE);
        };
        let chunks = p.manifest.chunks();
        let chunk_size = u64::from(chunks.chunk_size());
        let total = chunks.len();
        let mut index = (next - p.header_len) / chunk_size;
        if next - p.header_len >= total || self.source(index) != ChunkSource::Fetch {
            return None;
        }
        while index < chunks.count() && self.source(index) == ChunkSource::Fetch {
            index += 1;
        }
        Some(next..p.header_len + (index * chunk_size).min(total))
    }

    /// Syncs the slot and records the verified offset now.
    pub fn checkpoint(&mut self) -> Result<(), UpgradeError> {
        match self.payload.as_mut() {
            Some(p) if !p.poisoned && p.written_to > p.persisted => p.checkpoint(&self.store),
            _ => Ok(()),
        }
    }

    /// Syncs the slot, reads it back bypassing the page cache and compares it with the
    /// signed chunk hashes and `slot_sha256`. A mismatch rewinds the progress to the first
    /// bad chunk.
    pub fn readback(&mut self) -> Result<(), UpgradeError> {
        // Chunks planned to be copied at the end of the payload (a client sending only
        // what UpgradePlan listed stops before them).
        self.copy_local()?;
        let resume_offset = self.resume_offset();
        let Some(p) = self.payload.as_mut() else {
            return Err(UpgradeError::Incomplete {
                verified: 0,
                total: 0,
                resume_offset: self.next_offset().min(resume_offset),
            });
        };
        let total = p.manifest.manifest().slot_size;
        if p.written_to != total {
            return Err(UpgradeError::Incomplete {
                verified: p.written_to,
                total,
                resume_offset,
            });
        }
        p.checkpoint(&self.store)?;
        self.ctx.log(&format!(
            "upgrade: slot {} ({}) written and synced, reading it back",
            p.slot,
            p.device.name()
        ));
        p.device.drop_cache()?;
        let chunks = p.manifest.chunks().clone();
        let mut whole = Sha256::new();
        let mut buf = vec![0u8; chunks.chunk_size() as usize];
        for index in 0..chunks.count() {
            let range = chunks
                .chunk_range(index)
                .ok_or(UpgradeError::State("chunk index out of range"))?;
            let b = &mut buf[..(range.end - range.start) as usize];
            p.device.read_at(range.start, b)?;
            whole.update(&*b);
            let digest: [u8; 32] = Sha256::digest(&*b).into();
            if Some(&digest) != chunks.hash(index) {
                p.written_to = range.start;
                p.persisted = range.start;
                p.verifier = PayloadVerifier::resume(&p.manifest, range.start)?;
                self.store.save(&p.record())?;
                let e = UpgradeError::ReadbackMismatch {
                    slot: p.slot,
                    device: p.device.name(),
                    chunk: index,
                    offset: range.start,
                };
                self.ctx.log(&format!("upgrade: {e}"));
                return Err(e);
            }
        }
        let found: [u8; 32] = whole.finalize().into();
        if found != p.manifest.manifest().slot_sha256 {
            p.written_to = 0;
            p.persisted = 0;
            p.verifier = PayloadVerifier::new(&p.manifest);
            self.store.save(&p.record())?;
            return Err(UpgradeError::SlotHashMismatch {
                slot: p.slot,
                device: p.device.name(),
                found: hex::encode(found),
            });
        }
        p.readback_ok = true;
        self.ctx.log(&format!(
            "upgrade: slot {} read back: matches the signed slot_sha256",
            p.slot
        ));
        Ok(())
    }

    /// Activates the verified slot on trial and reboots unless staged.
    pub fn activate(mut self) -> Result<UpgradeOutcome, UpgradeError> {
        let Some(p) = self.payload.as_ref() else {
            return Err(UpgradeError::State("activate before the header"));
        };
        if !p.readback_ok {
            return Err(UpgradeError::State(
                "activate before a successful read-back",
            ));
        }
        let device = &self.target.slot_devices[match p.slot {
            Slot::A => 0,
            Slot::B => 1,
        }];
        self.ctx.install_slot_boot_files(p.slot, device)?;
        self.ctx.activate(p.slot, p.tries)?;
        self.finished = true;
        self.store.clear()?;
        let m = p.manifest.manifest();
        let mut outcome = UpgradeOutcome {
            slot: p.slot,
            version: m.version.clone(),
            board: m.board.clone(),
            bytes_written: p.written,
            slot_size: m.slot_size,
            tries: p.tries,
            rebooting: false,
        };
        self.ctx.log(&format!(
            "upgrade: slot {} activated on trial with {} tries (version {})",
            p.slot, p.tries, m.version
        ));
        if self.options.stage {
            self.ctx
                .log("upgrade: staged: the new slot boots at the next reboot");
        } else {
            self.ctx.log("upgrade: rebooting into the new slot");
            self.ctx.reboot().map_err(UpgradeError::Reboot)?;
            outcome.rebooting = true;
        }
        Ok(outcome)
    }

    /// [`UpgradeSession::readback`] then [`UpgradeSession::activate`].
    pub fn finish(mut self) -> Result<UpgradeOutcome, UpgradeError> {
        self.readback()?;
        self.activate()
    }
}

impl Drop for UpgradeSession {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let Some(p) = self.payload.as_mut() else {
            return;
        };
        if p.poisoned || p.written_to <= p.persisted {
            self.ctx.log(&format!(
                "upgrade: interrupted; progress recorded at payload offset {}",
                p.persisted
            ));
            return;
        }
        match p.checkpoint(&self.store) {
            Ok(()) => self.ctx.log(&format!(
                "upgrade: interrupted; progress recorded at payload offset {}",
                p.written_to
            )),
            Err(e) => self.ctx.log(&format!(
                "upgrade: interrupted; recording progress failed: {e}"
            )),
        }
    }
}
