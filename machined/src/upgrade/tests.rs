//! Engine tests with memory slots, a memory U-Boot environment and real signed bundles.

use super::device::MemorySlotDevices;
use super::engine::*;
use super::progress::ProgressStore;
use super::trust::UpdateTrust;
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_bootloader::{BootStatus, Bootloader, BootloaderError, Slot};
use basalt_image::bundle::{BundleError, BundleMeta, BundleWriter, SigningKey};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

pub(super) const SLOT: usize = 128 << 10;

pub(super) struct TestCtx {
    keys: Mutex<Option<UpdateTrust>>,
    boot: Mutex<Box<dyn Bootloader + Send>>,
    pub(super) reboots: AtomicU32,
    /// `activate` calls that reached the bootloader.
    pub(super) activations: AtomicU32,
    pub(super) log: Mutex<Vec<String>>,
}

impl TestCtx {
    pub(super) fn new(key: &SigningKey) -> Arc<TestCtx> {
        Arc::new(TestCtx {
            keys: Mutex::new(Some(UpdateTrust {
                keys: vec![key.verifying_key()],
                tries: 3,
            })),
            boot: Mutex::new(Box::new(UbootBootloader::in_memory(Some(Slot::A)))),
            reboots: AtomicU32::new(0),
            activations: AtomicU32::new(0),
            log: Mutex::new(Vec::new()),
        })
    }

    pub(super) fn status(&self) -> BootStatus {
        self.boot.lock().unwrap().status().unwrap()
    }
}

impl UpgradeContext for TestCtx {
    fn trust(&self) -> Result<Option<UpdateTrust>, String> {
        Ok(self.keys.lock().unwrap().clone())
    }
    fn boot_status(&self) -> Result<BootStatus, BootloaderError> {
        self.boot.lock().unwrap().status()
    }
    fn prepare_update(&self, target: Slot) -> Result<(), BootloaderError> {
        self.boot.lock().unwrap().prepare_update(target)
    }
    fn install_slot_boot_files(&self, target: Slot, device: &Path) -> Result<(), BootloaderError> {
        self.boot
            .lock()
            .unwrap()
            .install_slot_boot_files(target, device)
    }
    fn activate(&self, target: Slot, tries: u32) -> Result<(), BootloaderError> {
        self.activations.fetch_add(1, Ordering::SeqCst);
        self.boot.lock().unwrap().activate(target, tries)
    }
    fn reboot(&self) -> Result<(), String> {
        self.reboots.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn log(&self, message: &str) {
        self.log.lock().unwrap().push(message.to_string());
    }
}

/// Deterministic pseudo-random bytes.
pub(super) fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub(super) fn bundle(dir: &Path, img: &[u8], meta: BundleMeta, key: &SigningKey) -> Vec<u8> {
    let src = dir.join(format!("slot-{}.img", meta.version));
    let out = dir.join(format!("{}-{}.bundle", meta.board, meta.version));
    std::fs::write(&src, img).unwrap();
    BundleWriter::write(&src, &meta, key, &out).unwrap();
    std::fs::read(out).unwrap()
}

pub(super) fn meta(board: &str, version: &str) -> BundleMeta {
    let mut m = BundleMeta::new(board, version, "aarch64", 1_700_000_000, [3; 32]);
    m.chunk_size = 4096;
    m
}

pub(super) struct Fx {
    pub(super) dir: tempfile::TempDir,
    pub(super) key: SigningKey,
    pub(super) img: Vec<u8>,
    pub(super) devices: MemorySlotDevices,
}

impl Fx {
    pub(super) fn new() -> Fx {
        Fx {
            dir: tempfile::tempdir().unwrap(),
            key: SigningKey::from_bytes(&[42; 32]),
            // Not a multiple of the chunk size: the last chunk is short.
            img: image(SLOT - 1000, 1),
            devices: MemorySlotDevices::new(SLOT),
        }
    }

    pub(super) fn bundle(&self, board: &str, version: &str) -> Vec<u8> {
        bundle(self.dir.path(), &self.img, meta(board, version), &self.key)
    }

    pub(super) fn engine(&self) -> UpgradeEngine {
        let target = UpgradeTarget {
            board: "qemu-arm64".into(),
            booted_version: "1.1.0".into(),
            booted_slot: Slot::A,
            slot_devices: ["/unused/a".into(), "/unused/b".into()],
        };
        let mut e = UpgradeEngine::with_devices(
            target,
            &self.dir.path().join("state"),
            Arc::new(self.devices.clone()),
        );
        e.set_persist_every(8192);
        e
    }

    pub(super) fn writes(&self) -> Vec<(u64, u64)> {
        self.devices.slot(Slot::B).writes.lock().unwrap().clone()
    }
}

pub(super) fn feed_all(
    s: &mut UpgradeSession,
    data: &[u8],
    from: u64,
    piece: usize,
) -> Result<(), UpgradeError> {
    let mut off = from as usize;
    while off < data.len() {
        let end = (off + piece).min(data.len());
        s.feed(off as u64, &data[off..end])?;
        off = end;
    }
    Ok(())
}

fn install(
    fx: &Fx,
    bundle: &[u8],
    opts: UpgradeOptions,
) -> (Arc<TestCtx>, Result<UpgradeOutcome, UpgradeError>) {
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    let r = engine.begin(ctx.clone(), opts, "test").and_then(|mut s| {
        feed_all(&mut s, bundle, 0, 5000)?;
        s.finish()
    });
    (ctx, r)
}

#[test]
fn success_writes_the_slot_and_activates_it_on_trial() {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let (ctx, r) = install(
        &fx,
        &b,
        UpgradeOptions {
            tries: Some(5),
            ..Default::default()
        },
    );
    let o = r.unwrap();
    assert_eq!(o.slot, Slot::B);
    assert_eq!(o.version, "1.2.0");
    assert_eq!(o.bytes_written, fx.img.len() as u64);
    assert_eq!(o.tries, 5);
    assert!(o.rebooting);
    assert_eq!(ctx.reboots.load(Ordering::SeqCst), 1);
    assert_eq!(
        &fx.devices.slot(Slot::B).contents()[..fx.img.len()],
        &fx.img[..]
    );
    // Slot A untouched.
    assert!(fx.devices.slot(Slot::A).contents().iter().all(|b| *b == 0));
    let st = ctx.status();
    assert_eq!(st.trial, Some(Slot::B));
    assert_eq!(st.next_boot(), Some(Slot::B));
    assert_eq!(st.order, vec![Slot::B, Slot::A]);
    let b_state = st.slots.iter().find(|s| s.slot == Slot::B).unwrap();
    assert_eq!(b_state.tries_left, Some(5));
    assert!(b_state.bootable);
    // Progress is gone once activated.
    assert_eq!(
        ProgressStore::new(&fx.dir.path().join("state"))
            .load()
            .unwrap(),
        None
    );
    let log = ctx.log.lock().unwrap().join("\n");
    for phase in ["verified", "reading it back", "activated", "rebooting"] {
        assert!(log.contains(phase), "{phase} missing from {log}");
    }
}

#[test]
fn staged_upgrade_does_not_reboot_and_default_tries_come_from_config() {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let (ctx, r) = install(
        &fx,
        &b,
        UpgradeOptions {
            stage: true,
            ..Default::default()
        },
    );
    let o = r.unwrap();
    assert!(!o.rebooting);
    assert_eq!(o.tries, 3);
    assert_eq!(ctx.reboots.load(Ordering::SeqCst), 0);
    assert_eq!(ctx.status().trial, Some(Slot::B));
}

fn assert_untouched(fx: &Fx, ctx: &TestCtx) {
    assert!(
        fx.writes().is_empty(),
        "nothing may be written: {:?}",
        fx.writes()
    );
    let fresh = UbootBootloader::in_memory(Some(Slot::A)).status().unwrap();
    assert_eq!(ctx.status(), fresh, "the bootloader must be untouched");
    assert_eq!(ctx.reboots.load(Ordering::SeqCst), 0);
}

#[test]
fn wrong_board_is_refused_before_writing() {
    let fx = Fx::new();
    let b = fx.bundle("rpi4", "1.2.0");
    let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
    let e = r.unwrap_err();
    assert!(matches!(e, UpgradeError::WrongBoard { .. }), "{e}");
    assert!(
        e.to_string().contains("rpi4") && e.to_string().contains("qemu-arm64"),
        "{e}"
    );
    assert_untouched(&fx, &ctx);
}

#[test]
fn older_or_equal_version_is_refused_unless_allowed() {
    let fx = Fx::new();
    for v in ["1.0.9", "1.1.0", "1.1.0-rc1"] {
        let b = fx.bundle("qemu-arm64", v);
        let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
        let e = r.unwrap_err();
        assert!(matches!(e, UpgradeError::NotNewer { .. }), "{v}: {e}");
        assert!(e.to_string().contains("allow-downgrade"), "{e}");
        assert_untouched(&fx, &ctx);
    }
    let b = fx.bundle("qemu-arm64", "1.0.9");
    let (_, r) = install(
        &fx,
        &b,
        UpgradeOptions {
            allow_downgrade: true,
            ..Default::default()
        },
    );
    assert_eq!(r.unwrap().version, "1.0.9");
}

#[test]
fn min_version_is_honoured_even_with_allow_downgrade() {
    let fx = Fx::new();
    let mut m = meta("qemu-arm64", "2.0.0");
    m.min_version = Some("1.5.0".into());
    let b = bundle(fx.dir.path(), &fx.img, m, &fx.key);
    let (ctx, r) = install(
        &fx,
        &b,
        UpgradeOptions {
            allow_downgrade: true,
            ..Default::default()
        },
    );
    let e = r.unwrap_err();
    assert!(matches!(e, UpgradeError::TooOld { .. }), "{e}");
    assert_untouched(&fx, &ctx);
}

#[test]
fn untrusted_key_and_missing_keys_are_refused() {
    let fx = Fx::new();
    let other = SigningKey::from_bytes(&[9; 32]);
    let b = bundle(fx.dir.path(), &fx.img, meta("qemu-arm64", "1.2.0"), &other);
    let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
    let e = r.unwrap_err();
    assert!(
        matches!(e, UpgradeError::Bundle(BundleError::UntrustedKey { .. })),
        "{e}"
    );
    assert_untouched(&fx, &ctx);

    let b = fx.bundle("qemu-arm64", "1.2.0");
    let ctx = TestCtx::new(&fx.key);
    *ctx.keys.lock().unwrap() = None;
    let engine = fx.engine();
    let mut s = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "t")
        .unwrap();
    let e = feed_all(&mut s, &b, 0, 1 << 20).unwrap_err();
    assert!(matches!(e, UpgradeError::NoTrustedKeys), "{e}");
    assert!(e.to_string().contains("trustedSigningKeys"), "{e}");
    drop(s);
    assert_untouched(&fx, &ctx);
}

#[test]
fn tampered_header_is_refused() {
    let fx = Fx::new();
    let mut b = fx.bundle("qemu-arm64", "1.2.0");
    // Inside the manifest JSON: the version string "1.2.0" → "1.3.0".
    let at = b.windows(5).position(|w| w == b"1.2.0").unwrap();
    b[at + 2] = b'3';
    let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
    let e = r.unwrap_err();
    assert!(
        matches!(e, UpgradeError::Bundle(BundleError::BadSignature { .. })),
        "{e}"
    );
    assert_untouched(&fx, &ctx);
}

#[test]
fn tampered_chunk_is_never_written() {
    let fx = Fx::new();
    let mut b = fx.bundle("qemu-arm64", "1.2.0");
    let header_len = u64::from(u32::from_le_bytes(b[12..16].try_into().unwrap()));
    let bad_chunk = 3u64;
    b[(header_len + bad_chunk * 4096 + 17) as usize] ^= 0xFF;
    let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            UpgradeError::Bundle(BundleError::ChunkMismatch { index: 3, .. })
        ),
        "{e}"
    );
    let writes = fx.writes();
    assert_eq!(writes, vec![(0, 4096), (4096, 4096), (8192, 4096)]);
    assert_eq!(ctx.status().trial, None);
    assert_eq!(ctx.reboots.load(Ordering::SeqCst), 0);
}

#[test]
fn upgrade_during_a_trial_boot_is_refused() {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    // Slot A activated slot B, and B is now booted on trial.
    let mut boot = UbootBootloader::in_memory(Some(Slot::A));
    boot.prepare_update(Slot::B).unwrap();
    boot.activate(Slot::B, 3).unwrap();
    let boot = UbootBootloader::new(boot.into_env(), Some(Slot::B));
    let ctx = TestCtx::new(&fx.key);
    *ctx.boot.lock().unwrap() = Box::new(boot);
    let before = ctx.status();
    let target = UpgradeTarget {
        board: "qemu-arm64".into(),
        booted_version: "1.1.0".into(),
        booted_slot: Slot::B,
        slot_devices: ["/a".into(), "/b".into()],
    };
    let engine = UpgradeEngine::with_devices(target, fx.dir.path(), Arc::new(fx.devices.clone()));
    let mut s = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "t")
        .unwrap();
    let e = feed_all(&mut s, &b, 0, 1 << 20).unwrap_err();
    assert!(
        matches!(
            e,
            UpgradeError::TrialBoot {
                booted: Slot::B,
                target: Slot::A
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("not committed"), "{e}");
    drop(s);
    assert_eq!(ctx.status(), before);
    assert!(fx.devices.slot(Slot::A).writes.lock().unwrap().is_empty());
}

#[test]
fn resumes_after_a_cut_from_the_persisted_offset() {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let header_len = u64::from(u32::from_le_bytes(b[12..16].try_into().unwrap()));
    let ctx = TestCtx::new(&fx.key);
    {
        let engine = fx.engine();
        let mut s = engine
            .begin(ctx.clone(), UpgradeOptions::default(), "t")
            .unwrap();
        // Half the payload plus a partial chunk, then the stream is cut.
        let half = (header_len as usize + SLOT / 2 + 1234).min(b.len());
        s.feed(0, &b[..half]).unwrap();
        // The session is dropped: it syncs and records the verified offset.
    }
    let progress = ProgressStore::new(&fx.dir.path().join("state"))
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(progress.verified, (SLOT / 2) as u64);
    assert_eq!(progress.slot, "B");
    // A new engine (machined restarted) continues from there.
    let engine = fx.engine();
    assert_eq!(engine.progress().unwrap(), Some(progress.clone()));
    let mut s = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "t")
        .unwrap();
    s.feed(0, &b[..header_len as usize]).unwrap();
    assert_eq!(s.resume_offset(), progress.resume_offset());
    // A gap is refused.
    let e = s
        .feed(progress.resume_offset() + 4096, &b[..10])
        .unwrap_err();
    assert!(matches!(e, UpgradeError::Gap { .. }), "{e}");
    feed_all(&mut s, &b, progress.resume_offset(), 7000).unwrap();
    let o = s.finish().unwrap();
    assert_eq!(o.bytes_written, fx.img.len() as u64 - (SLOT / 2) as u64);
    assert_eq!(
        &fx.devices.slot(Slot::B).contents()[..fx.img.len()],
        &fx.img[..]
    );
    assert_eq!(ctx.status().trial, Some(Slot::B));
    // Chunks before the cut were written once.
    let first_half_writes = fx.writes().iter().filter(|(o, _)| *o == 0).count();
    assert_eq!(first_half_writes, 1);
}

#[test]
fn readback_mismatch_refuses_activation_and_names_the_chunk() {
    let mut fx = Fx::new();
    let bad = 5 * 4096 + 100;
    fx.devices.slots[1].corrupt_write_at = Some(bad);
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let (ctx, r) = install(&fx, &b, UpgradeOptions::default());
    let e = r.unwrap_err();
    assert!(
        matches!(
            e,
            UpgradeError::ReadbackMismatch {
                slot: Slot::B,
                chunk: 5,
                offset: 20480,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("offset 20480"), "{e}");
    let st = ctx.status();
    assert_eq!(st.trial, None, "not activated");
    assert_eq!(st.next_boot(), Some(Slot::A));
    assert_eq!(ctx.reboots.load(Ordering::SeqCst), 0);
    let p = ProgressStore::new(&fx.dir.path().join("state"))
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(
        p.verified, 20480,
        "the next attempt rewrites from the bad chunk"
    );
}

#[test]
fn one_upgrade_at_a_time() {
    let fx = Fx::new();
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    let s = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "t")
        .unwrap();
    assert!(engine.is_running());
    let e = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "t")
        .unwrap_err();
    assert!(matches!(e, UpgradeError::Busy));
    drop(s);
    assert!(!engine.is_running());
    engine.begin(ctx, UpgradeOptions::default(), "t").unwrap();
}

#[test]
fn bad_tries_are_refused() {
    let fx = Fx::new();
    let ctx = TestCtx::new(&fx.key);
    let e = fx
        .engine()
        .begin(
            ctx,
            UpgradeOptions {
                tries: Some(10),
                ..Default::default()
            },
            "t",
        )
        .unwrap_err();
    assert!(matches!(e, UpgradeError::BadTries(10)));
}

/// A UEFI node: the engine writes a FAT slot image into slot B's file, the systemd-boot
/// backend copies its kernel and initramfs onto the (directory) ESP and activates B's entry
/// on trial; after the trial boot the entry is blessed, and a rollback returns to A.
#[test]
fn uefi_upgrade_installs_the_kernel_on_the_esp_and_activates_the_entry() {
    use basalt_bootloader::systemd_boot::{
        DirEsp, EntrySet, EspFs, FatEsp, InactiveSlot, LoaderConfig, SlotBootFiles, SlotEntry,
        SystemdBoot, format_fat, install_entry_set,
    };
    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let fx = Fx::new();
    let dir = fx.dir.path();
    // the new release's slot, as basalt-image writes it
    let size: u64 = 4 << 20;
    let slot_src = dir.join("slot-2.0.0.img");
    std::fs::File::create(&slot_src)
        .unwrap()
        .set_len(size)
        .unwrap();
    format_fat(&slot_src, 0, size, None, "SYSTEM").unwrap();
    let mut fat = FatEsp::open(&slot_src, 0, size).unwrap();
    for (path, data) in [
        ("vmlinuz", &b"kernel 2.0.0"[..]),
        ("initrd.img", b"initramfs 2.0.0"),
        (
            "basalt/slot.env",
            format!("basalt_roothash={HASH}\n").as_bytes(),
        ),
        ("basalt/cmdline", b"console=ttyS0,115200 panic=10\n"),
        ("basalt/version", b"2.0.0\n"),
    ] {
        fat.write_file_atomic(path, data).unwrap();
    }
    let img = std::fs::read(&slot_src).unwrap();
    let b = bundle(dir, &img, meta("qemu-x86_64", "2.0.0"), &fx.key);
    // the node: slot files, a fresh ESP with A blessed and B empty
    let slots = [dir.join("system-a"), dir.join("system-b")];
    for s in &slots {
        std::fs::File::create(s).unwrap().set_len(size).unwrap();
    }
    let esp_dir = dir.join("esp");
    let mut esp = DirEsp::new(&esp_dir);
    esp.write_file_atomic("basalt/a/vmlinuz", b"kernel 1.0.0")
        .unwrap();
    esp.write_file_atomic("basalt/a/initrd.img", b"initramfs 1.0.0")
        .unwrap();
    install_entry_set(
        &mut esp,
        &EntrySet {
            active: Slot::A,
            a: SlotEntry::standard(Slot::A, "Basalt OS 1.0.0", HASH, "console=ttyS0,115200"),
            b: SlotEntry::standard(Slot::B, "Basalt OS", HASH, "console=ttyS0,115200"),
            inactive: InactiveSlot::Empty,
            loader: LoaderConfig::default(),
        },
    )
    .unwrap();
    let ctx = TestCtx::new(&fx.key);
    *ctx.boot.lock().unwrap() = Box::new(
        SystemdBoot::new(DirEsp::new(&esp_dir), Some(Slot::A))
            .with_slot_files(SlotBootFiles::new("vmlinuz")),
    );
    let engine = UpgradeEngine::new(
        UpgradeTarget {
            board: "qemu-x86_64".into(),
            booted_version: "1.0.0".into(),
            booted_slot: Slot::A,
            slot_devices: slots.clone(),
        },
        &dir.join("state"),
    );
    let outcome = engine
        .begin(ctx.clone(), UpgradeOptions::default(), "test")
        .and_then(|mut s| {
            feed_all(&mut s, &b, 0, 64 << 10)?;
            s.finish()
        })
        .unwrap();
    assert_eq!(outcome.slot, Slot::B);
    assert_eq!(std::fs::read(&slots[1]).unwrap(), img);
    assert_eq!(
        std::fs::read(esp_dir.join("basalt/b/vmlinuz")).unwrap(),
        b"kernel 2.0.0"
    );
    assert_eq!(
        std::fs::read(esp_dir.join("basalt/b/initrd.img")).unwrap(),
        b"initramfs 2.0.0"
    );
    let entry = std::fs::read_to_string(esp_dir.join("loader/entries/basalt-b+3.conf")).unwrap();
    assert!(
        entry.contains("title Basalt OS 2.0.0 (slot B)\n"),
        "{entry}"
    );
    assert!(
        entry.contains(&format!(
            "options basalt.slot=B basalt.roothash={HASH} console=ttyS0,115200 panic=10\n"
        )),
        "{entry}"
    );
    let st = ctx.status();
    assert_eq!(st.next_boot(), Some(Slot::B));
    assert_eq!(st.trial, Some(Slot::B));
    // systemd-boot boots B (renames +3 to +2-1); machined on B commits it
    std::fs::rename(
        esp_dir.join("loader/entries/basalt-b+3.conf"),
        esp_dir.join("loader/entries/basalt-b+2-1.conf"),
    )
    .unwrap();
    let mut on_b = SystemdBoot::new(DirEsp::new(&esp_dir), Some(Slot::B));
    on_b.mark_good(Slot::B).unwrap();
    assert!(esp_dir.join("loader/entries/basalt-b.conf").exists());
    let st = on_b.status().unwrap();
    assert!(st.committed && st.next_boot() == Some(Slot::B), "{st:?}");
    assert_eq!(on_b.rollback().unwrap(), Slot::A);
    assert_eq!(on_b.status().unwrap().next_boot(), Some(Slot::A));
}
