//! Update bundles end to end: write, read, verify; tampering anywhere, wrong keys,
//! truncation, reproducibility, partial headers, and OpenSSL key/signature interop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use basalt_image::bundle::{
    BundleError, BundleHeader, BundleMeta, BundleReader, BundleWriter, SigningKey, VerifyingKey,
    generate_signing_key, load_signing_key, load_verifying_key,
};

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// A few MiB of slot image, not a multiple of the chunk size, with zero runs.
fn slot_image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut data = noise(7, 3 * 1024 * 1024 + 12345);
    data[1024 * 1024..1024 * 1024 + 300_000].fill(0);
    let path = dir.join("system-a.img");
    fs::write(&path, &data).expect("write slot");
    (path, data)
}

fn meta() -> BundleMeta {
    let mut m = BundleMeta::new("qemu-arm64", "1.2.0", "aarch64", 1_700_000_000, [0xab; 32]);
    m.min_version = Some("1.0.0".into());
    m
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    key: SigningKey,
    public: VerifyingKey,
    bundle: PathBuf,
    bytes: Vec<u8>,
    slot: Vec<u8>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let key = generate_signing_key(&dir.join("signing.pem")).expect("key");
    let (slot_path, slot) = slot_image(&dir);
    let bundle = dir.join("update.bundle");
    BundleWriter::write(&slot_path, &meta(), &key, &bundle).expect("write bundle");
    let bytes = fs::read(&bundle).expect("read bundle");
    Fixture {
        _dir: tmp,
        dir,
        public: key.verifying_key(),
        key,
        bundle,
        bytes,
        slot,
    }
}

/// Opens, verifies the signature and the whole payload.
fn check(path: &Path, trusted: &[VerifyingKey]) -> Result<(), BundleError> {
    let mut reader = BundleReader::open(path)?;
    let verified = reader.verify(trusted)?;
    reader.verify_payload(&verified)
}

#[test]
fn round_trip() {
    let f = fixture();
    let mut reader = BundleReader::open(&f.bundle).expect("open");
    let header = reader.header().clone();
    assert_eq!(header.payload_offset() % 4096, 0);
    assert_eq!(header.bundle_len(), f.bytes.len() as u64);
    assert_eq!(&f.bytes[..8], b"BASALTB1");
    let v = reader.verify(&[f.public]).expect("verify");
    let m = v.manifest();
    assert_eq!(
        (m.board.as_str(), m.version.as_str(), m.arch.as_str()),
        ("qemu-arm64", "1.2.0", "aarch64")
    );
    assert_eq!(
        (m.created, m.slot_size, m.chunk_size, m.chunk_count),
        (1_700_000_000, f.slot.len() as u64, 1 << 20, 4)
    );
    assert_eq!(m.min_version.as_deref(), Some("1.0.0"));
    assert_eq!(m.verity_root_hash, [0xab; 32]);
    let sha: [u8; 32] = Sha256::digest(&f.slot).into();
    assert_eq!(m.slot_sha256, sha);
    assert_eq!(v.signer(), &f.public);
    reader.verify_payload(&v).expect("payload");
    let mut out = Vec::new();
    assert_eq!(
        reader.copy_payload(&v, &mut out).expect("copy"),
        f.slot.len() as u64
    );
    assert_eq!(out, f.slot);
    let r = reader.payload_range(3).expect("range");
    assert_eq!(
        (r.start, r.end),
        (
            header.payload_offset() + 3 * (1 << 20),
            f.bytes.len() as u64
        )
    );
    assert_eq!(reader.read_chunk(&v, 3).expect("chunk"), f.slot[3 << 20..]);
    assert!(reader.payload_range(4).is_none());

    // The manifest is plain JSON at offset 64.
    let json_len = u32::from_le_bytes(f.bytes[28..32].try_into().expect("4")) as usize;
    let json: serde_json::Value =
        serde_json::from_slice(&f.bytes[64..64 + json_len]).expect("json");
    assert_eq!(json["board"], "qemu-arm64");
    assert_eq!(json["chunk_count"], 4);
}

#[test]
fn header_from_partial_download() {
    let f = fixture();
    let need = |n: usize| {
        BundleHeader::parse(&f.bytes[..n])
            .expect_err("short")
            .needed_bytes()
    };
    assert_eq!(need(0), Some(64));
    assert_eq!(need(63), Some(64));
    let header_len = BundleHeader::parse(&f.bytes).expect("parse").header_len();
    assert_eq!(need(64), Some(header_len));
    assert_eq!(need(header_len as usize - 1), Some(header_len));
    let err = BundleHeader::parse(&f.bytes[..64]).expect_err("short");
    assert!(
        err.to_string()
            .contains(&format!("need more bytes: {header_len}")),
        "{err}"
    );
    // Exactly the header, or the header and the start of the payload.
    for n in [header_len as usize, header_len as usize + 1000] {
        let h = BundleHeader::parse(&f.bytes[..n]).expect("parse");
        assert_eq!(h.unverified_manifest().board, "qemu-arm64");
        h.verify(&[f.public]).expect("verify");
    }
}

#[test]
fn tampering_anywhere_is_detected() {
    let f = fixture();
    let header = BundleHeader::parse(&f.bytes).expect("parse");
    let sig = header.signature_offset() as usize;
    let table = sig + 96;
    let table_end = table + 4 * 32;
    let payload = header.payload_offset() as usize;
    let end = f.bytes.len();
    let regions: [(&str, Vec<usize>); 7] = [
        ("prelude", vec![0, 7, 8, 12, 16, 23, 28, 32, 36, 40, 44, 63]),
        (
            "manifest",
            vec![64, 65, 100, (64 + sig) / 2, sig - 2, sig - 1],
        ),
        ("signer key", vec![sig, sig + 17, sig + 31]),
        ("signature", vec![sig + 32, sig + 60, sig + 95]),
        ("chunk table", vec![table, table + 33, table_end - 1]),
        (
            "padding",
            vec![table_end, (table_end + payload) / 2, payload - 1],
        ),
        (
            "payload",
            vec![
                payload,
                payload + (1 << 20) + 5,
                payload + (2 << 20) + 77_777,
                end - 1,
            ],
        ),
    ];
    let path = f.dir.join("tampered.bundle");
    for (region, positions) in regions {
        for pos in positions {
            let mut bytes = f.bytes.clone();
            bytes[pos] ^= 0x01;
            fs::write(&path, &bytes).expect("write");
            let err = check(&path, &[f.public])
                .err()
                .unwrap_or_else(|| panic!("flipping byte {pos} ({region}) went undetected"));
            let ok = match region {
                "prelude" if pos < 8 => matches!(err, BundleError::BadMagic { .. }),
                "prelude" if pos < 12 => matches!(err, BundleError::UnsupportedVersion { .. }),
                "prelude" => matches!(
                    err,
                    BundleError::Malformed { .. }
                        | BundleError::NeedMoreBytes { .. }
                        | BundleError::Truncated { .. }
                        | BundleError::TrailingData { .. }
                ),
                "manifest" => matches!(
                    err,
                    BundleError::Malformed { .. }
                        | BundleError::BadSignature { .. }
                        | BundleError::Truncated { .. }
                ),
                "signer key" => matches!(err, BundleError::UntrustedKey { .. }),
                "signature" => matches!(err, BundleError::BadSignature { .. }),
                "chunk table" => matches!(err, BundleError::ChunkTableMismatch { .. }),
                "padding" => {
                    matches!(err, BundleError::Malformed { offset, .. } if offset == pos as u64)
                }
                _ => {
                    let index = ((pos - payload) >> 20) as u64;
                    matches!(err, BundleError::ChunkMismatch { index: i, bundle_offset, .. } if i == index && bundle_offset == payload as u64 + (index << 20))
                }
            };
            assert!(ok, "byte {pos} ({region}): unexpected error {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("tampered.bundle"),
                "error does not name the file: {msg}"
            );
        }
    }
}

#[test]
fn wrong_or_missing_key() {
    let f = fixture();
    let other = generate_signing_key(&f.dir.join("other.pem"))
        .expect("key")
        .verifying_key();
    let err = check(&f.bundle, &[other]).expect_err("untrusted");
    assert!(matches!(err, BundleError::UntrustedKey { .. }), "{err:?}");
    assert!(err.to_string().contains("untrusted key"), "{err}");
    assert!(matches!(
        check(&f.bundle, &[]),
        Err(BundleError::UntrustedKey { .. })
    ));
    check(&f.bundle, &[other, f.public]).expect("one of several trusted keys");

    // A trusted key named as signer but the signature is someone else's: bad signature.
    let mut bytes = f.bytes.clone();
    let sig = BundleHeader::parse(&bytes)
        .expect("parse")
        .signature_offset() as usize;
    bytes[sig..sig + 32].copy_from_slice(other.as_bytes());
    let path = f.dir.join("forged.bundle");
    fs::write(&path, &bytes).expect("write");
    let err = check(&path, &[other, f.public]).expect_err("forged");
    assert!(matches!(err, BundleError::BadSignature { .. }), "{err:?}");
}

#[test]
fn truncated_or_extended_file() {
    let f = fixture();
    let path = f.dir.join("cut.bundle");
    let header_len = BundleHeader::parse(&f.bytes).expect("parse").header_len() as usize;
    for len in [
        0,
        5,
        8,
        63,
        64,
        200,
        header_len - 1,
        header_len,
        f.bytes.len() - 1,
    ] {
        fs::write(&path, &f.bytes[..len]).expect("write");
        let err = check(&path, &[f.public]).expect_err("truncated");
        assert!(
            matches!(err, BundleError::Truncated { .. }),
            "length {len}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    let mut longer = f.bytes.clone();
    longer.push(0);
    fs::write(&path, &longer).expect("write");
    assert!(matches!(
        check(&path, &[f.public]),
        Err(BundleError::TrailingData { extra: 1, .. })
    ));
}

#[test]
fn reproducible() {
    let f = fixture();
    let key = load_signing_key(&f.dir.join("signing.pem")).expect("load");
    assert_eq!(key.to_bytes(), f.key.to_bytes());
    let again = f.dir.join("again.bundle");
    let v = BundleWriter::write(&f.dir.join("system-a.img"), &meta(), &key, &again).expect("write");
    assert_eq!(
        fs::read(&again).expect("read"),
        f.bytes,
        "two writes differ"
    );
    assert_eq!(
        v,
        BundleReader::open(&again)
            .expect("open")
            .verify(&[f.public])
            .expect("verify")
    );
    let mut later = meta();
    later.created += 1;
    BundleWriter::write(&f.dir.join("system-a.img"), &later, &key, &again).expect("write");
    assert_ne!(fs::read(&again).expect("read"), f.bytes);
    let leftovers: Vec<_> = fs::read_dir(&f.dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn bad_input_is_refused() {
    let f = fixture();
    let slot = f.dir.join("system-a.img");
    let out = f.dir.join("x.bundle");
    let mut m = meta();
    m.chunk_size = 1000;
    assert!(matches!(
        BundleWriter::write(&slot, &m, &f.key, &out),
        Err(BundleError::Invalid { .. })
    ));
    let mut m = meta();
    m.board = String::new();
    assert!(BundleWriter::write(&slot, &m, &f.key, &out).is_err());
    fs::write(f.dir.join("empty.img"), b"").expect("write");
    assert!(BundleWriter::write(&f.dir.join("empty.img"), &meta(), &f.key, &out).is_err());
    assert!(!out.exists());
}

fn openssl(args: &[&str]) -> Option<Vec<u8>> {
    let out = Command::new("openssl").args(args).output().ok()?;
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(out.stdout)
}

#[test]
fn openssl_keys_and_signature_interop() {
    let f = fixture();
    let dir = f.dir.display().to_string();
    let (key, public) = (format!("{dir}/ossl.pem"), format!("{dir}/ossl.pub.pem"));
    if openssl(&["genpkey", "-algorithm", "ed25519", "-out", &key]).is_none() {
        eprintln!("openssl not installed: skipping the OpenSSL interop check");
        return;
    }
    openssl(&["pkey", "-in", &key, "-pubout", "-out", &public]);
    let signing = load_signing_key(Path::new(&key)).expect("OpenSSL private key");
    assert_eq!(
        load_verifying_key(Path::new(&public)).expect("OpenSSL public key"),
        signing.verifying_key()
    );

    // Our signature is OpenSSL's Ed25519 signature of bytes [0, signature offset).
    let bundle = f.dir.join("ossl.bundle");
    BundleWriter::write(&f.dir.join("system-a.img"), &meta(), &signing, &bundle).expect("write");
    let bytes = fs::read(&bundle).expect("read");
    let sig = BundleHeader::parse(&bytes)
        .expect("parse")
        .signature_offset() as usize;
    let signed = format!("{dir}/signed.bin");
    fs::write(&signed, &bytes[..sig]).expect("write");
    let theirs =
        openssl(&["pkeyutl", "-sign", "-rawin", "-inkey", &key, "-in", &signed]).expect("sign");
    assert_eq!(theirs, bytes[sig + 32..sig + 96]);
    assert_eq!(&bytes[sig..sig + 32], signing.verifying_key().as_bytes());
}
