//! Our bmap files against the real bmaptool (package bmap-tools): `bmaptool copy` accepts
//! them (it checks the file checksum and every range checksum) and reproduces the image,
//! and `bmaptool create` on the same image maps exactly the same ranges.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basalt_image::bmap::{Bmap, BmapError, write_bmap};

fn bmaptool(args: &[&str]) -> Output {
    match Command::new("bmaptool").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("bmaptool not found ({e}): run scripts/setup-host (package bmap-tools)"),
    }
}

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

/// A sparse image of 16 MiB + 1234 bytes: data at the start, a random MiB, explicitly
/// written zeros (data, not a hole), a small unaligned write and a partial last block.
fn sparse_image(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    let f = File::create(&path).expect("create");
    let size = (16 << 20) + 1234;
    f.set_len(size).expect("set_len");
    f.write_all_at(&noise(1, 512), 0).expect("write");
    f.write_all_at(&noise(2, 1 << 20), 1 << 20).expect("write");
    f.write_all_at(&[0u8; 65536], 4 << 20).expect("write");
    f.write_all_at(b"0123456789", (8 << 20) + 100)
        .expect("write");
    f.write_all_at(&noise(3, 3000), size - 3000).expect("write");
    f.sync_all().expect("sync");
    path
}

fn run_ok(args: &[&str]) -> Output {
    let out = bmaptool(args);
    assert!(
        out.status.success(),
        "bmaptool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Copies with our bmap and compares the result with the image.
fn copy_and_compare(image: &Path, bmap: &Path, out: &Path) {
    let _ = fs::remove_file(out);
    run_ok(&[
        "copy",
        "--bmap",
        &bmap.display().to_string(),
        &image.display().to_string(),
        &out.display().to_string(),
    ]);
    let (a, b) = (
        fs::read(image).expect("image"),
        fs::read(out).expect("copy"),
    );
    assert_eq!(a.len(), b.len(), "copy has another size");
    assert!(a == b, "bmaptool copy did not reproduce the image");
}

/// Compares our bmap with `bmaptool create` on the same image.
fn compare_with_bmaptool_create(image: &Path, ours: &Bmap) {
    let theirs_path = image.with_extension("theirs.bmap");
    run_ok(&[
        "create",
        "-o",
        &theirs_path.display().to_string(),
        &image.display().to_string(),
    ]);
    let text = fs::read_to_string(&theirs_path).expect("read");
    let theirs = Bmap::parse(&text, &theirs_path).expect("parse bmaptool's bmap");
    assert_eq!(theirs.image_size, ours.image_size);
    assert_eq!(theirs.blocks_count(), ours.blocks_count());
    assert_eq!(theirs.mapped_blocks_count(), ours.mapped_blocks_count());
    assert_eq!(
        theirs.ranges, ours.ranges,
        "ranges or checksums differ from bmaptool create"
    );
}

#[test]
fn bmaptool_copy_accepts_our_bmap_and_create_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path());
    let bmap_path = dir.path().join("disk.bmap");
    let ours = write_bmap(&image, &bmap_path).expect("bmap");
    let text = fs::read_to_string(&bmap_path).expect("read");
    assert!(text.contains("<bmap version=\"2.0\">"), "{text}");
    assert_eq!(Bmap::parse(&text, &bmap_path).expect("parse"), ours);
    let blocks: Vec<_> = ours.ranges.iter().map(|r| (r.first, r.last)).collect();
    assert_eq!(
        blocks,
        vec![(0, 0), (256, 511), (1024, 1039), (2048, 2048), (4095, 4096)],
        "{text}"
    );
    assert_eq!(ours.blocks_count(), 4097);
    copy_and_compare(&image, &bmap_path, &dir.path().join("out.img"));
    compare_with_bmaptool_create(&image, &ours);
}

#[test]
fn bmaptool_rejects_tampered_bmaps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = sparse_image(dir.path());
    let bmap_path = dir.path().join("disk.bmap");
    let ours = write_bmap(&image, &bmap_path).expect("bmap");
    let args = |bmap: &Path| {
        vec![
            "copy".to_string(),
            "--bmap".into(),
            bmap.display().to_string(),
            image.display().to_string(),
            dir.path().join("out.img").display().to_string(),
        ]
    };
    let run = |bmap: &Path| {
        let a = args(bmap);
        bmaptool(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Edited text: the file checksum no longer matches (bmaptool and our parser see it).
    let text = fs::read_to_string(&bmap_path).expect("read");
    let edited = text.replacen("> 0 </Range>", "> 1 </Range>", 1);
    assert_ne!(edited, text);
    let edited_path = dir.path().join("edited.bmap");
    fs::write(&edited_path, &edited).expect("write");
    let out = run(&edited_path);
    assert!(!out.status.success(), "bmaptool accepted an edited bmap");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"),
        "{out:?}"
    );
    assert!(matches!(
        Bmap::parse(&edited, &edited_path),
        Err(BmapError::ChecksumMismatch { .. })
    ));

    // A consistent file whose range checksum is wrong: bmaptool refuses the data.
    let mut wrong = ours.clone();
    wrong.ranges[1].sha256 = Some([0x5a; 32]);
    let wrong_path = dir.path().join("wrong.bmap");
    fs::write(&wrong_path, wrong.to_xml()).expect("write");
    let out = run(&wrong_path);
    assert!(
        !out.status.success(),
        "bmaptool accepted a wrong range checksum"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("256-511"),
        "{out:?}"
    );
}

#[test]
fn all_hole_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("empty.img");
    File::create(&image)
        .expect("create")
        .set_len(8 << 20)
        .expect("set_len");
    let bmap_path = dir.path().join("empty.bmap");
    let ours = write_bmap(&image, &bmap_path).expect("bmap");
    assert_eq!((ours.mapped_blocks_count(), ours.blocks_count()), (0, 2048));
    copy_and_compare(&image, &bmap_path, &dir.path().join("out.img"));
    compare_with_bmaptool_create(&image, &ours);
}

#[test]
fn real_filesystem_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("ext4.img");
    File::create(&image)
        .expect("create")
        .set_len(64 << 20)
        .expect("set_len");
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-L", "DATA"])
        .arg(&image)
        .output()
        .unwrap_or_else(|e| panic!("mkfs.ext4 not found ({e}): run scripts/setup-host"));
    assert!(mkfs.status.success(), "{mkfs:?}");
    let bmap_path = dir.path().join("ext4.bmap");
    let ours = write_bmap(&image, &bmap_path).expect("bmap");
    assert!(ours.ranges.len() > 2, "{ours:?}");
    assert!(ours.mapped_blocks_count() < ours.blocks_count() / 2);
    copy_and_compare(&image, &bmap_path, &dir.path().join("out.img"));
    compare_with_bmaptool_create(&image, &ours);
}
