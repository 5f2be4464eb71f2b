//! `UpgradePlan` and an `Upgrade` stream that skips what the booted slot holds: the plan
//! lists only the chunks the booted slot lacks, a session fed the header and those ranges
//! copies the rest and installs exactly the signed image, a gap over a chunk the booted
//! slot lacks stays an error, and the plan refuses what the upgrade would refuse.

use super::device::SlotDevice;
use super::engine::*;
use super::tests::{Fx, TestCtx, feed_all};
use basalt_bootloader::Slot;

/// The booted slot A holds chunks 8..24 of the new image (4096-byte chunks), and chunks
/// 0..8 of another image; returns the header length of the bundle.
fn booted_holds_the_middle(fx: &Fx, b: &[u8]) -> u64 {
    let mut a = fx.devices.slot(Slot::A).clone();
    a.write_at(0, &super::tests::image(8 * 4096, 9)).unwrap();
    a.write_at(8 * 4096, &fx.img[8 * 4096..24 * 4096]).unwrap();
    u64::from(u32::from_le_bytes(b[12..16].try_into().unwrap()))
}

/// A node booted from slot A holding chunks 8..24 of a signed 1.2.0 bundle `b` with header
/// length `h`.
fn planned_setup() -> (Fx, Vec<u8>, u64, std::sync::Arc<TestCtx>, UpgradeEngine) {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let h = booted_holds_the_middle(&fx, &b);
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    (fx, b, h, ctx, engine)
}

#[test]
fn plan_lists_only_the_chunks_the_booted_slot_lacks() {
    let (fx, b, h, ctx, engine) = planned_setup();
    let plan = engine
        .plan(&*ctx, &UpgradeOptions::default(), &b[..h as usize])
        .unwrap();
    let end = b.len() as u64;
    assert_eq!(plan.send, vec![h..h + 8 * 4096, h + 24 * 4096..end]);
    assert_eq!(plan.send_bytes, 8 * 4096 + (end - h - 24 * 4096));
    assert_eq!(plan.reuse_chunks, 16);
    assert_eq!(plan.chunk_count, 32);
    assert_eq!((plan.slot, plan.version.as_str()), (Slot::B, "1.2.0"));
    // reads only: the target slot and the boot order are untouched
    assert!(fx.writes().is_empty());
    assert_eq!(ctx.status().order, vec![Slot::A]);
}

#[test]
fn stream_of_the_planned_ranges_installs_the_signed_image() {
    let (fx, b, h, ctx, engine) = planned_setup();
    let plan = engine
        .plan(&*ctx, &UpgradeOptions::default(), &b[..h as usize])
        .unwrap();
    let options = UpgradeOptions {
        reuse_booted_slot: true,
        ..Default::default()
    };
    let mut s = engine.begin(ctx.clone(), options, "test").unwrap();
    feed_all(&mut s, &b[..h as usize], 0, 5000).unwrap();
    for r in &plan.send {
        feed_all(&mut s, &b[..r.end as usize], r.start, 3000).unwrap();
    }
    let o = s.finish().unwrap();
    assert_eq!(o.slot, Slot::B);
    assert_eq!(
        &fx.devices.slot(Slot::B).contents()[..fx.img.len()],
        &fx.img[..]
    );
    assert_eq!(ctx.activations.load(std::sync::atomic::Ordering::SeqCst), 1);
    let log = ctx.log.lock().unwrap().join("\n");
    assert!(
        log.contains("16 chunks are copied from the booted slot A"),
        "{log}"
    );
}

#[test]
fn a_gap_over_a_chunk_the_booted_slot_lacks_is_refused() {
    let fx = Fx::new();
    let b = fx.bundle("qemu-arm64", "1.2.0");
    let h = booted_holds_the_middle(&fx, &b);
    let ctx = TestCtx::new(&fx.key);
    let options = UpgradeOptions {
        reuse_booted_slot: true,
        ..Default::default()
    };
    let mut s = fx.engine().begin(ctx.clone(), options, "test").unwrap();
    feed_all(&mut s, &b[..h as usize], 0, 5000).unwrap();
    // chunks 0..8 are not in slot A: jumping to chunk 24 is a gap
    let at = h + 24 * 4096;
    let e = s.feed(at, &b[at as usize..at as usize + 4096]).unwrap_err();
    assert!(
        matches!(e, UpgradeError::Gap { offset, expected } if offset == at && expected == h),
        "{e}"
    );
    // without reuse the middle is a gap too
    let fx2 = Fx::new();
    let b2 = fx2.bundle("qemu-arm64", "1.2.0");
    let h2 = booted_holds_the_middle(&fx2, &b2);
    let mut s = fx2
        .engine()
        .begin(TestCtx::new(&fx2.key), UpgradeOptions::default(), "t")
        .unwrap();
    feed_all(&mut s, &b2[..(h2 + 8 * 4096) as usize], 0, 5000).unwrap();
    let at = h2 + 24 * 4096;
    assert!(matches!(
        s.feed(at, &b2[at as usize..at as usize + 10]),
        Err(UpgradeError::Gap { .. })
    ));
    // and a stream that stops before the end is incomplete, not installed
    let mut s = fx2
        .engine()
        .begin(TestCtx::new(&fx2.key), UpgradeOptions::default(), "t")
        .unwrap();
    feed_all(&mut s, &b2[..(h2 + 8 * 4096) as usize], 0, 5000).unwrap();
    assert!(matches!(s.finish(), Err(UpgradeError::Incomplete { .. })));
}

#[test]
fn plan_refuses_what_an_upgrade_refuses() {
    let fx = Fx::new();
    let ctx = TestCtx::new(&fx.key);
    let engine = fx.engine();
    let older = fx.bundle("qemu-arm64", "1.0.0");
    let h = booted_holds_the_middle(&fx, &older) as usize;
    let e = engine
        .plan(&*ctx, &UpgradeOptions::default(), &older[..h])
        .unwrap_err();
    assert!(matches!(e, UpgradeError::NotNewer { .. }), "{e}");
    let allowed = UpgradeOptions {
        allow_downgrade: true,
        ..Default::default()
    };
    assert!(engine.plan(&*ctx, &allowed, &older[..h]).is_ok());
    let other = fx.bundle("rpi4", "1.2.0");
    let e = engine
        .plan(&*ctx, &UpgradeOptions::default(), &other[..h])
        .unwrap_err();
    assert!(matches!(e, UpgradeError::WrongBoard { .. }), "{e}");
    let e = engine
        .plan(&*ctx, &UpgradeOptions::default(), &older[..100])
        .unwrap_err();
    assert!(matches!(e, UpgradeError::Bundle(_)), "{e}");
}

#[test]
fn a_slot_never_written_is_blank() {
    let fx = Fx::new();
    let engine = fx.engine();
    assert!(engine.blank_slot(Slot::B).unwrap().is_some());
    let mut b = fx.devices.slot(Slot::B).clone();
    b.write_at(60 << 10, &[1]).unwrap();
    assert_eq!(engine.blank_slot(Slot::B).unwrap(), None);
}
