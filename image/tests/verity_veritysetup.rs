//! The Rust dm-verity hash tree against the real `veritysetup` (cryptsetup-bin): `verify`
//! accepts our images, `format` with the same salt and UUID writes byte-identical hash
//! areas, corruption is caught. veritysetup works on regular files for format, verify and
//! dump (no device-mapper needed).

use basalt_image::verity::{BLOCK_SIZE, Salt, VerityInfo, append_hash_tree};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn veritysetup(args: &[&str]) -> Output {
    match Command::new("veritysetup").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!("veritysetup cannot run ({e}): run scripts/setup-host"),
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn verify(path: &Path, info: &VerityInfo) -> Output {
    let p = path.to_str().unwrap();
    veritysetup(&[
        "verify",
        &format!("--hash-offset={}", info.hash_offset),
        &format!("--data-blocks={}", info.data_blocks),
        p,
        p,
        &info.root_hash_hex(),
    ])
}

#[test]
fn matches_veritysetup_format_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    // 1 block (no levels), 2, 128 (one level), 129 (two levels), an odd size, and
    // 128*128+1 blocks (three levels).
    let sizes: [usize; 6] = [
        100,
        8192,
        128 * 4096,
        129 * 4096,
        3 * 1024 * 1024 + 123,
        (128 * 128 + 1) * 4096,
    ];
    for (i, size) in sizes.into_iter().enumerate() {
        let data = pattern(size, i as u32 + 1);
        let ours = dir.path().join(format!("ours-{i}"));
        fs::write(&ours, &data).unwrap();
        let salt = pattern(32, 99 + i as u32);
        let info = append_hash_tree(&ours, Salt::Given(salt.clone())).unwrap();
        let blocks = (size as u64).div_ceil(BLOCK_SIZE);
        assert_eq!(info.data_blocks, blocks);
        assert_eq!(info.hash_offset, blocks * BLOCK_SIZE);
        assert_eq!(fs::metadata(&ours).unwrap().len(), info.total_size());

        let out = verify(&ours, &info);
        assert!(
            out.status.success(),
            "size {size}: verify failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // veritysetup format on the same padded data with the same salt and UUID
        let theirs = dir.path().join(format!("theirs-{i}"));
        let mut padded = data.clone();
        padded.resize((blocks * BLOCK_SIZE) as usize, 0);
        fs::write(&theirs, &padded).unwrap();
        let t = theirs.to_str().unwrap();
        let out = veritysetup(&[
            "format",
            &format!("--hash-offset={}", info.hash_offset),
            &format!("--data-blocks={blocks}"),
            &format!("--salt={}", hex::encode(&salt)),
            &format!("--uuid={}", info.uuid_string()),
            t,
            t,
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "format: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let root_line = stdout
            .lines()
            .find(|l| l.starts_with("Root hash:"))
            .unwrap();
        assert_eq!(
            root_line.split_whitespace().last().unwrap(),
            info.root_hash_hex(),
            "size {size}"
        );
        assert!(
            fs::read(&ours).unwrap() == fs::read(&theirs).unwrap(),
            "size {size}: files differ"
        );
    }
}

#[test]
fn content_salt_is_reproducible_and_dump_shows_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(300_000, 7);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::write(&a, &data).unwrap();
    fs::write(&b, &data).unwrap();
    let ia = append_hash_tree(&a, Salt::FromContent).unwrap();
    let ib = append_hash_tree(&b, Salt::FromContent).unwrap();
    assert_eq!(ia, ib);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert_eq!(ia.salt.len(), 32);
    assert!(verify(&a, &ia).status.success());

    let out = veritysetup(&[
        "dump",
        &format!("--hash-offset={}", ia.hash_offset),
        a.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        dump.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing in {dump}"))
    };
    assert_eq!(field("Hash type:"), "1");
    assert_eq!(field("Data blocks:"), ia.data_blocks.to_string());
    assert_eq!(field("Data block size:"), "4096");
    assert_eq!(field("Hash block size:"), "4096");
    assert_eq!(field("Hash algorithm:"), "sha256");
    assert_eq!(field("Salt:"), ia.salt_hex());
    assert_eq!(field("UUID:"), ia.uuid_string());

    // other content, other salt
    let c = dir.path().join("c");
    let mut other = data.clone();
    other[5] ^= 1;
    fs::write(&c, &other).unwrap();
    assert_ne!(
        append_hash_tree(&c, Salt::FromContent).unwrap().salt,
        ia.salt
    );
}

#[test]
fn corruption_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    fs::write(&f, pattern(200 * 4096, 3)).unwrap();
    let info = append_hash_tree(&f, Salt::Given(vec![1, 2, 3])).unwrap();
    assert!(verify(&f, &info).status.success());
    let mut bytes = fs::read(&f).unwrap();
    bytes[150 * 4096 + 17] ^= 0x40;
    fs::write(&f, &bytes).unwrap();
    let out = verify(&f, &info);
    assert!(!out.status.success(), "corrupted data verified");
    let mut wrong = info.clone();
    wrong.root_hash[0] ^= 1;
    bytes[150 * 4096 + 17] ^= 0x40;
    fs::write(&f, &bytes).unwrap();
    assert!(verify(&f, &info).status.success());
    assert!(!verify(&f, &wrong).status.success());
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("empty.img");
    fs::write(&f, b"").unwrap();
    let err = append_hash_tree(&f, Salt::FromContent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty.img") && err.contains("empty"), "{err}");
    fs::write(&f, b"x").unwrap();
    let err = append_hash_tree(&f, Salt::Given(vec![0; 257]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("salt of 257 bytes"), "{err}");
    let err = append_hash_tree(&dir.path().join("nope"), Salt::FromContent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}
