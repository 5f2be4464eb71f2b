//! A node's side of an update: header from a partial download, payload fed in order over
//! a link that cuts and corrupts, resume at the last verified chunk, and adaptive download
//! reusing chunks of the active slot.

use std::fs;
use std::path::{Path, PathBuf};

use basalt_image::bundle::{
    BundleError, BundleHeader, BundleMeta, BundleWriter, ChunkIndex, ChunkSource, PayloadVerifier,
    SigningKey, VerifiedManifest, generate_signing_key,
};

const CHUNK: u32 = 64 * 1024;

/// Deterministic pseudo-random numbers (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 56) as u8).collect()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    key: SigningKey,
    slot: Vec<u8>,
    bundle: Vec<u8>,
    verified: VerifiedManifest,
}

fn write_bundle(
    dir: &Path,
    key: &SigningKey,
    name: &str,
    slot: &[u8],
) -> (Vec<u8>, VerifiedManifest) {
    let slot_path = dir.join(format!("{name}.img"));
    fs::write(&slot_path, slot).expect("write slot");
    let mut meta = BundleMeta::new("rpi4", name, "aarch64", 1_700_000_000, [1; 32]);
    meta.chunk_size = CHUNK;
    let out = dir.join(format!("{name}.bundle"));
    BundleWriter::write(&slot_path, &meta, key, &out).expect("write bundle");
    let bytes = fs::read(&out).expect("read");
    // What a node does: fetch a prefix, learn the header length, fetch it, verify.
    let need = BundleHeader::parse(&bytes[..64])
        .expect_err("short")
        .needed_bytes()
        .expect("need");
    let header = BundleHeader::parse(&bytes[..need as usize]).expect("parse");
    let verified = header.verify(&[key.verifying_key()]).expect("verify");
    (bytes, verified)
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let key = generate_signing_key(&dir.join("k.pem")).expect("key");
    let slot = Rng(3).bytes(3 * 1024 * 1024 + 4321);
    let (bundle, verified) = write_bundle(&dir, &key, "1.1.0", &slot);
    Fixture {
        _dir: tmp,
        dir,
        key,
        slot,
        bundle,
        verified,
    }
}

impl Fixture {
    fn payload(&self) -> &[u8] {
        &self.bundle[self.verified.payload_offset() as usize..]
    }
}

/// Feeds `payload[from..to]` in random-sized pieces.
fn stream(v: &mut PayloadVerifier, payload: &[u8], from: usize, to: usize, rng: &mut Rng) {
    let mut pos = from;
    while pos < to {
        let n = (1 + rng.below(100_000) as usize).min(to - pos);
        v.feed(pos as u64, &payload[pos..pos + n]).expect("feed");
        pos += n;
    }
}

#[test]
fn resume_after_a_cut_at_random_offsets() {
    let f = fixture();
    let payload = f.payload();
    assert_eq!(payload, &f.slot[..]);
    let total = payload.len();
    for seed in 1..=8u64 {
        let mut rng = Rng(seed * 7919);
        let cut = 1 + rng.below(total as u64 - 1) as usize;
        let mut v = PayloadVerifier::new(&f.verified);
        stream(&mut v, payload, 0, cut, &mut rng);
        let resume = v.resume_offset();
        assert_eq!(resume % u64::from(CHUNK), 0);
        assert!(resume <= cut as u64 && cut as u64 - resume < u64::from(CHUNK));
        assert!(v.finish().is_err(), "incomplete payload accepted");

        // Same process: the link comes back, the download restarts at the boundary.
        let mut same = v.clone();
        stream(&mut same, payload, resume as usize, total, &mut rng);
        assert!(same.is_complete());
        same.finish().expect("complete");

        // New process after a power cut: only the persisted offset survives.
        let mut fresh = PayloadVerifier::resume(&f.verified, resume).expect("resume");
        assert_eq!(fresh.resume_offset(), resume);
        // Resent bytes before the boundary are skipped.
        let from = resume.saturating_sub(1000) as usize;
        let p = fresh
            .feed(from as u64, &payload[from..resume as usize + 10])
            .expect("overlap");
        assert_eq!(p.received, resume + 10);
        stream(&mut fresh, payload, resume as usize + 10, total, &mut rng);
        let done = fresh.finish();
        assert!(done.is_ok(), "seed {seed}: {done:?}");
    }
}

#[test]
fn corrupted_chunk_is_rejected_and_refetched() {
    let f = fixture();
    let payload = f.payload();
    let mut rng = Rng(42);
    let bad_at = 5 * CHUNK as usize + 1234;
    let mut v = PayloadVerifier::new(&f.verified);
    stream(&mut v, payload, 0, bad_at, &mut rng);
    let mut corrupt = payload[bad_at..bad_at + 200_000].to_vec();
    corrupt[0] ^= 0x80;
    let err = v.feed(bad_at as u64, &corrupt).expect_err("corrupt chunk");
    match &err {
        BundleError::ChunkMismatch {
            index,
            offset,
            bundle_offset,
            ..
        } => {
            assert_eq!(*index, 5);
            assert_eq!(*offset, 5 * u64::from(CHUNK));
            assert_eq!(*bundle_offset, f.verified.payload_offset() + *offset);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains("chunk 5"), "{err}");
    assert_eq!(v.resume_offset(), 5 * u64::from(CHUNK));
    let resume = v.resume_offset() as usize;
    stream(&mut v, payload, resume, payload.len(), &mut rng);
    v.finish().expect("complete after refetch");
}

#[test]
fn out_of_order_and_bad_resume_are_refused() {
    let f = fixture();
    let payload = f.payload();
    let mut v = PayloadVerifier::new(&f.verified);
    v.feed(0, &payload[..1000]).expect("feed");
    let gap = v.feed(2000, &payload[2000..3000]).expect_err("gap");
    assert!(
        matches!(
            gap,
            BundleError::OutOfOrder {
                offset: 2000,
                expected: 1000,
                resume: 0,
                ..
            }
        ),
        "{gap:?}"
    );
    assert!(
        v.feed(500, &payload[500..600]).is_err(),
        "rewind inside an unverified chunk"
    );
    // Restarting the chunk at its boundary is fine.
    v.feed(0, &payload[..CHUNK as usize])
        .expect("restart chunk");
    assert_eq!(v.resume_offset(), u64::from(CHUNK));
    let past = payload.len() as u64;
    assert!(v.feed(u64::from(CHUNK), &payload[CHUNK as usize..]).is_ok());
    assert!(v.feed(past, &[0]).is_err(), "data past the end");
    assert!(PayloadVerifier::resume(&f.verified, 100).is_err());
    assert!(PayloadVerifier::resume(&f.verified, past + 1).is_err());
    assert!(
        PayloadVerifier::resume(&f.verified, past)
            .expect("end")
            .is_complete()
    );
}

#[test]
fn adaptive_download_reuses_active_slot_chunks() {
    let f = fixture();
    // The new release: a few chunks changed, one chunk moved, and a new tail.
    let mut new_slot = f.slot.clone();
    let c = CHUNK as usize;
    new_slot[2 * c + 10] ^= 1;
    new_slot[30 * c..30 * c + 5000].fill(9);
    new_slot.copy_within(40 * c..41 * c, 10 * c);
    new_slot.extend_from_slice(&Rng(5).bytes(100_000));
    let (bundle, verified) = write_bundle(&f.dir, &f.key, "1.2.0", &new_slot);

    // The node indexes its active slot (the old image) with the new chunk size.
    let have = ChunkIndex::compute(&mut &f.slot[..], CHUNK, f.slot.len() as u64).expect("index");
    assert_eq!(&have, f.verified.chunks());
    let diff = verified.chunks().diff(&have);
    let fetch = diff.fetch();
    // Changed: 2, 30; 48 (the old short last chunk, now full) and the new tail 49.
    assert_eq!(fetch, vec![2, 30, 48, 49], "{:?}", diff.sources());
    assert_eq!(diff.sources()[10], ChunkSource::Local { chunk: 40 });
    assert_eq!(diff.sources()[11], ChunkSource::Local { chunk: 11 });
    let ranges = diff.fetch_ranges();
    assert_eq!(ranges.len(), 3);
    assert_eq!(
        diff.fetch_bytes(),
        ranges.iter().map(|r| r.end - r.start).sum::<u64>()
    );

    // Assemble the new slot from local chunks and fetched ranges, verifying in order.
    let payload = &bundle[verified.payload_offset() as usize..];
    let mut v = PayloadVerifier::new(&verified);
    let mut written = Vec::new();
    for (i, source) in diff.sources().iter().enumerate() {
        let r = verified.chunks().chunk_range(i as u64).expect("range");
        let data = match source {
            ChunkSource::Fetch => {
                let abs = verified.payload_range(i as u64).expect("bundle range");
                bundle[abs.start as usize..abs.end as usize].to_vec()
            }
            ChunkSource::Local { chunk } => {
                let src = have.chunk_range(*chunk).expect("local");
                f.slot[src.start as usize..src.end as usize].to_vec()
            }
        };
        v.feed(r.start, &data).expect("verified chunk");
        written.extend_from_slice(&data);
    }
    v.finish().expect("complete");
    assert_eq!(written, payload);
    assert_eq!(written, new_slot);
}
