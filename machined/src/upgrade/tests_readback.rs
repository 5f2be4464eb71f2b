//! Issue 6 test f(i): a byte flipped in the inactive slot *after* it was written must stop
//! the upgrade before activation.
//!
//! [`FlipAfterWrite`] wraps memory slots: writes go through unchanged, and when the engine
//! drops the slot's cache to read it back (after the last write and the final sync), one
//! byte on the "medium" is inverted — a medium that loses data after accepting it, which
//! no check during the write can see. The engine must find it in the read-back, never call
//! `activate`, leave the bootloader exactly as `prepare_update` left it (target out of the
//! order, the booted slot next, no trial), not reboot, and rewind its progress so the next
//! attempt rewrites from the bad chunk and then activates.

use super::device::{DeviceError, MemorySlotDevices, SlotDevice, SlotDevices};
use super::engine::*;
use super::progress::ProgressStore;
use super::tests::{SLOT, TestCtx, bundle, feed_all, image, meta};
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_bootloader::{Bootloader, Slot};
use basalt_image::bundle::SigningKey;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Memory slots whose slot `target` has the byte at `flip_at` inverted once, when the
/// engine starts its read-back (`drop_cache`).
#[derive(Clone)]
struct FlipAfterWrite {
    inner: MemorySlotDevices,
    target: Slot,
    flip_at: u64,
    flipped: Arc<AtomicBool>,
    /// Set once any write reached the slot after the flip (there must be none).
    writes_after_flip: Arc<Mutex<Vec<(u64, usize)>>>,
}

struct FlipDevice {
    inner: Box<dyn SlotDevice>,
    set: FlipAfterWrite,
}

impl SlotDevice for FlipDevice {
    fn slot(&self) -> Slot {
        self.inner.slot()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn len(&self) -> Result<u64, DeviceError> {
        self.inner.len()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if self.set.flipped.load(Ordering::SeqCst) {
            self.set
                .writes_after_flip
                .lock()
                .unwrap()
                .push((offset, data.len()));
        }
        self.inner.write_at(offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        self.inner.read_at(offset, buf)
    }
    fn sync(&mut self) -> Result<(), DeviceError> {
        self.inner.sync()
    }
    fn drop_cache(&mut self) -> Result<(), DeviceError> {
        self.inner.drop_cache()?;
        if self.slot() == self.set.target && !self.set.flipped.swap(true, Ordering::SeqCst) {
            // the medium changes under the written data: bypass the write log
            let mut medium = self.set.inner.slot(self.set.target).clone();
            let mut b = [0u8; 1];
            medium.read_at(self.set.flip_at, &mut b)?;
            b[0] ^= 0x80;
            medium.write_at(self.set.flip_at, &b)?;
            medium.writes.lock().unwrap().pop();
        }
        Ok(())
    }
}

impl SlotDevices for FlipAfterWrite {
    fn open(&self, slot: Slot) -> Result<Box<dyn SlotDevice>, DeviceError> {
        Ok(Box::new(FlipDevice {
            inner: self.inner.open(slot)?,
            set: self.clone(),
        }))
    }
    fn name(&self, slot: Slot) -> String {
        self.inner.name(slot)
    }
}

fn engine(dir: &std::path::Path, devices: Arc<dyn SlotDevices>) -> UpgradeEngine {
    let target = UpgradeTarget {
        board: "qemu-arm64".into(),
        booted_version: "1.1.0".into(),
        booted_slot: Slot::A,
        slot_devices: ["/unused/a".into(), "/unused/b".into()],
    };
    let mut e = UpgradeEngine::with_devices(target, &dir.join("state"), devices);
    e.set_persist_every(8192);
    e
}

#[test]
fn byte_flipped_after_the_write_is_never_activated() {
    let key = SigningKey::from_bytes(&[7; 32]);
    let img = image(SLOT - 1000, 9);
    // chunk size 4096: the first byte, one in the middle of chunk 5, a chunk's last byte,
    // and the image's last byte (in the short last chunk)
    for flip_at in [0u64, 5 * 4096 + 77, 12 * 4096 - 1, img.len() as u64 - 1] {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path(), &img, meta("qemu-arm64", "1.2.0"), &key);
        let devices = FlipAfterWrite {
            inner: MemorySlotDevices::new(SLOT),
            target: Slot::B,
            flip_at,
            flipped: Arc::new(AtomicBool::new(false)),
            writes_after_flip: Arc::new(Mutex::new(Vec::new())),
        };
        let ctx = TestCtx::new(&key);
        let e = engine(dir.path(), Arc::new(devices.clone()));
        let mut s = e
            .begin(ctx.clone(), UpgradeOptions::default(), "t")
            .unwrap();
        feed_all(&mut s, &b, 0, 3000).unwrap();
        let err = s.readback().unwrap_err();
        assert!(devices.flipped.load(Ordering::SeqCst), "flip at {flip_at}");
        let chunk = flip_at / 4096;
        match &err {
            UpgradeError::ReadbackMismatch {
                slot: Slot::B,
                chunk: c,
                offset,
                ..
            } => {
                assert_eq!(*c, chunk, "{err}");
                assert_eq!(*offset, chunk * 4096, "{err}");
            }
            other => panic!("flip at {flip_at}: expected a read-back mismatch, got {other}"),
        }
        // Asking for the activation anyway is refused, and reaches no bootloader.
        let refused = s.activate().unwrap_err();
        assert!(matches!(refused, UpgradeError::State(_)), "{refused}");
        assert_eq!(
            ctx.activations.load(Ordering::SeqCst),
            0,
            "flip at {flip_at}"
        );
        assert_eq!(ctx.reboots.load(Ordering::SeqCst), 0, "flip at {flip_at}");
        // The bootloader is exactly as prepare_update left it: B out of the order.
        let mut expected = UbootBootloader::in_memory(Some(Slot::A));
        expected.prepare_update(Slot::B).unwrap();
        let st = ctx.status();
        assert_eq!(st, expected.status().unwrap(), "flip at {flip_at}");
        assert_eq!(st.order, vec![Slot::A]);
        assert_eq!(st.trial, None);
        assert_eq!(st.next_boot(), Some(Slot::A));
        assert!(devices.writes_after_flip.lock().unwrap().is_empty());
        let log = ctx.log.lock().unwrap().join("\n");
        assert!(!log.contains("activated on trial"), "{log}");
        // The progress is rewound to the bad chunk ...
        let p = ProgressStore::new(&dir.path().join("state"))
            .load()
            .unwrap()
            .unwrap();
        assert_eq!(p.verified, chunk * 4096, "flip at {flip_at}");
        // ... so the next attempt rewrites from there and activates a correct slot.
        let e = engine(dir.path(), Arc::new(devices.inner.clone()));
        let mut s = e
            .begin(ctx.clone(), UpgradeOptions::default(), "t")
            .unwrap();
        let header_len = u64::from(u32::from_le_bytes(b[12..16].try_into().unwrap()));
        s.feed(0, &b[..header_len as usize]).unwrap();
        assert_eq!(s.resume_offset(), header_len + chunk * 4096);
        let from = s.resume_offset();
        feed_all(&mut s, &b, from, 3000).unwrap();
        let o = s.finish().unwrap();
        assert_eq!(o.slot, Slot::B);
        assert_eq!(ctx.activations.load(Ordering::SeqCst), 1);
        assert_eq!(
            &devices.inner.slot(Slot::B).contents()[..img.len()],
            &img[..]
        );
        assert_eq!(ctx.status().trial, Some(Slot::B));
    }
}
