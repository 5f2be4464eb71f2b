//! basalt-flash against real loop devices and the reference tools (bmaptool, mke2fs,
//! debugfs, sfdisk, sgdisk). Runs as root (as CI does).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const IMG_MIB: u64 = 64;

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    layout: Layout,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let layout = make_image(&image, IMG_MIB);
    basalt_image::bmap::write_bmap(&image, &dir.path().join("disk.img.bmap")).unwrap();
    Fixture { dir, image, layout }
}

impl Fixture {
    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A loop device over a new backing file of `mib` MiB filled with `fill`.
    fn target(&self, name: &str, mib: u64, fill: u8) -> (PathBuf, Loop) {
        let f = self.p(name);
        blank(&f, mib * MIB, fill);
        let l = Loop::attach(&f);
        (f, l)
    }
}

fn compress(src: &Path, dst: &Path, tool: &str) {
    let out = Command::new(tool)
        .args(["-c", "-1"])
        .arg(src)
        .output()
        .unwrap();
    assert!(out.status.success());
    std::fs::write(dst, out.stdout).unwrap();
}

#[test]
fn every_input_format_round_trips() {
    let fx = fixture();
    let size = IMG_MIB * MIB;
    for (tool, ext) in [("gzip", "gz"), ("xz", "xz"), ("zstd", "zst")] {
        compress(&fx.image, &fx.p(&format!("disk.img.{ext}")), tool);
    }
    let mut cases: Vec<(String, Vec<String>)> = vec![
        ("raw+bmap".into(), vec![s(&fx.image).into()]),
        (
            "raw, no bmap".into(),
            vec![s(&fx.image).into(), "--no-bmap".into()],
        ),
    ];
    for ext in ["gz", "xz", "zst"] {
        cases.push((
            format!("{ext}+bmap"),
            vec![s(&fx.p(&format!("disk.img.{ext}"))).into()],
        ));
        cases.push((
            format!("{ext}, no bmap"),
            vec![
                s(&fx.p(&format!("disk.img.{ext}"))).into(),
                "--no-bmap".into(),
            ],
        ));
    }
    // bmap 1.3 (sha1 per range), made from the 2.0 ranges.
    let v13 = fx.p("v13.bmap");
    std::fs::write(&v13, bmap_1_3(&fx.image)).unwrap();
    cases.push((
        "raw+bmap 1.3".into(),
        vec![s(&fx.image).into(), "--bmap".into(), s(&v13).into()],
    ));
    for (name, args) in cases {
        let (backing, l) = fx.target(
            &format!("t-{}", name.replace([' ', ',', '+', '.'], "_")),
            IMG_MIB + 8,
            0x5a,
        );
        let mut a: Vec<&str> = vec!["--quiet"];
        a.extend(args.iter().map(String::as_str));
        a.push(s(&l.dev));
        let out = flash(&a);
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert!(
            same(&backing, &fx.image, size) || bmap_equal(&fx, &backing),
            "{name}: content differs"
        );
        // The stale end of the device (where an old backup GPT would be) is zeroed.
        assert!(
            read_range(&backing, size + 7 * MIB, MIB)
                .iter()
                .all(|&b| b == 0),
            "{name}: end not wiped"
        );
    }
    // stdin
    let (backing, l) = fx.target("t-stdin", IMG_MIB, 0);
    let zst = std::fs::File::open(fx.p("disk.img.zst")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_basalt-flash"))
        .args(["--quiet", "-", s(&l.dev)])
        .stdin(zst)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(same(&backing, &fx.image, size));
}

/// With a bmap, unmapped blocks keep the device's old bytes: compare mapped ranges only.
fn bmap_equal(fx: &Fixture, backing: &Path) -> bool {
    let text = std::fs::read_to_string(fx.p("disk.img.bmap")).unwrap();
    let map = basalt_flash::bmap::BlockMap::parse(&text, Path::new("b")).unwrap();
    map.ranges.iter().all(|r| {
        read_range(backing, r.start, r.end - r.start)
            == read_range(&fx.image, r.start, r.end - r.start)
    })
}

fn bmap_1_3(image: &Path) -> String {
    use sha1::Digest;
    let b = basalt_image::bmap::Bmap::from_image(image).unwrap();
    let mut ranges = String::new();
    for r in &b.ranges {
        let start = r.first * b.block_size;
        let end = ((r.last + 1) * b.block_size).min(b.image_size);
        let h = sha1::Sha1::digest(read_range(image, start, end - start));
        ranges.push_str(&format!(
            "        <Range sha1=\"{}\"> {}-{} </Range>\n",
            hex::encode(h),
            r.first,
            r.last
        ));
    }
    format!(
        "<?xml version=\"1.0\" ?>\n<bmap version=\"1.3\">\n    <ImageSize> {} </ImageSize>\n    <BlockSize> {} </BlockSize>\n    <BlocksCount> {} </BlocksCount>\n    <MappedBlocksCount> {} </MappedBlocksCount>\n    <BlockMap>\n{ranges}    </BlockMap>\n</bmap>\n",
        b.image_size,
        b.block_size,
        b.blocks_count(),
        b.mapped_blocks_count()
    )
}

#[test]
fn bmap_write_equals_bmaptool_copy() {
    let fx = fixture();
    let bm = fx.p("tool.bmap");
    let st = Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&bm)
        .arg(&fx.image)
        .status()
        .unwrap();
    assert!(st.success());
    // Same size as the image and garbage everywhere: unmapped blocks must stay as they were.
    let (ours, l1) = fx.target("ours", IMG_MIB, 0xa5);
    let (theirs, l2) = fx.target("theirs", IMG_MIB, 0xa5);
    let out = flash(&["--quiet", "--bmap", s(&bm), s(&fx.image), s(&l1.dev)]);
    assert_eq!(out.status.code(), Some(0));
    let out = Command::new("bmaptool")
        .args(["copy", "--bmap"])
        .arg(&bm)
        .arg(&fx.image)
        .arg(&l2.dev)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(same(&ours, &theirs, IMG_MIB * MIB));
}

#[test]
fn bmap_checksum_mismatch_aborts_before_the_partition_table() {
    let fx = fixture();
    let bad = fx.p("bad.img");
    std::fs::copy(&fx.image, &bad).unwrap();
    // Flip a byte inside SYSTEM-A after the bmap was made.
    let f = std::fs::OpenOptions::new().write(true).open(&bad).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[0xff], fx.layout.system_a.0 + 100).unwrap();
    let (backing, l) = fx.target("t", IMG_MIB, 0x33);
    let out = flash(&[
        "--quiet",
        "--bmap",
        s(&fx.p("disk.img.bmap")),
        s(&bad),
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match its bmap"));
    assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x33));
}

#[test]
fn corrupt_compressed_input_leaves_the_first_mib_untouched() {
    let fx = fixture();
    let zst = fx.p("disk.img.zst");
    compress(&fx.image, &zst, "zstd");
    let mut data = std::fs::read(&zst).unwrap();
    let n = data.len();
    for b in &mut data[n / 2..n / 2 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&zst, &data).unwrap();
    for extra in [&[][..], &["--no-bmap"][..]] {
        let (backing, l) = fx.target("t", IMG_MIB, 0x77);
        let mut a = vec!["--quiet"];
        a.extend_from_slice(extra);
        a.extend([s(&zst), s(&l.dev)]);
        let out = flash(&a);
        assert_eq!(out.status.code(), Some(4));
        let err = String::from_utf8_lossy(&out.stderr);
        // zstd decodes garbage up to the frame checksum; with a bmap, the range checksum
        // usually catches it first.
        let decode = err.contains("failed to decompress image") && err.contains("zstd");
        assert!(
            decode || (extra.is_empty() && err.contains("does not match its bmap")),
            "{err}"
        );
        assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x77));
        drop(l);
    }
}

#[test]
fn truncated_xz_is_a_clear_error() {
    let fx = fixture();
    let xz = fx.p("disk.img.xz");
    compress(&fx.image, &xz, "xz");
    let data = std::fs::read(&xz).unwrap();
    std::fs::write(&xz, &data[..data.len() * 2 / 3]).unwrap();
    let (backing, l) = fx.target("t", IMG_MIB, 0x66);
    let out = flash(&["--quiet", "--no-bmap", s(&xz), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed to decompress image") && err.contains("(xz)"),
        "{err}"
    );
    assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x66));
}

#[test]
fn injected_config_is_read_back_by_machined() {
    let fx = fixture();
    let cfg = fx.p("node.yaml");
    let yaml = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-7\n";
    std::fs::write(&cfg, yaml).unwrap();
    let bad = fx.p("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostnme: x\n",
    )
    .unwrap();
    let (backing, l) = fx.target("t", IMG_MIB, 0x11);
    // An invalid config is refused before any byte is written.
    let out = flash(&["--quiet", "--config", s(&bad), s(&fx.image), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(7));
    assert!(
        read_range(&backing, 0, IMG_MIB * MIB)
            .iter()
            .all(|&b| b == 0x11)
    );
    let out = flash(&["--quiet", "--config", s(&cfg), s(&fx.image), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(0));
    // debugfs reads it without mounting; the filesystem keeps the image's label and UUID.
    let (start, size) = fx.layout.state;
    let part = fx.p("state.ext4");
    std::fs::write(&part, read_range(&backing, start, size)).unwrap();
    let cat = Command::new("debugfs")
        .args(["-R", "cat /config/current.yaml"])
        .arg(&part)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), yaml);
    let info = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&part)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
        "{info}"
    );
    assert!(info.contains("volume name:   STATE"), "{info}");
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // machined's ConfigStore on the mounted STATE of the card.
    let pl = Loop::attach(&part);
    let m = Mount::new(&pl.dev, &fx.p("mnt"), "rw");
    let store = machined::state::ConfigStore::open(&m.dir).unwrap();
    let current = store.current().unwrap().unwrap();
    assert_eq!(current.data, yaml.as_bytes());
    assert_eq!(current.version, 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.dir.join("config/current.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(m.dir.join("config"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    // Every mapped block outside STATE is the image's.
    let text = std::fs::read_to_string(fx.p("disk.img.bmap")).unwrap();
    let map = basalt_flash::bmap::BlockMap::parse(&text, Path::new("b")).unwrap();
    for r in map
        .ranges
        .iter()
        .filter(|r| r.end <= start || r.start >= start + size)
    {
        assert_eq!(
            read_range(&backing, r.start, r.end - r.start),
            read_range(&fx.image, r.start, r.end - r.start)
        );
    }
    drop(m);
}

#[test]
fn refusals() {
    let fx = fixture();
    // Too small.
    let (_b, small) = fx.target("small", IMG_MIB - 8, 0);
    let out = flash(&["--quiet", s(&fx.image), s(&small.dev)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs"));
    // Mounted.
    let (mb, mounted) = fx.target("mounted", IMG_MIB * 2, 0);
    assert!(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4"])
            .arg(&mb)
            .status()
            .unwrap()
            .success()
    );
    let m = Mount::new(&mounted.dev, &fx.p("mnt"), "rw");
    let out = flash(&["--quiet", s(&fx.image), s(&mounted.dev)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mounted"));
    // The source's own device: an image stored on the mounted filesystem of the target.
    let inner = m.dir.join("disk.img");
    std::fs::copy(&fx.image, &inner).unwrap();
    let out = flash(&[
        "--quiet",
        "--no-bmap",
        "--force-system-disk",
        s(&mounted.dev),
        s(&inner),
        s(&mounted.dev),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds the source image"));
    drop(m);
    // A loop device backed by the image itself.
    let own = Loop::attach(&fx.image);
    let out = flash(&["--quiet", s(&fx.image), s(&own.dev)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("backed by the source image"));
    // The disk holding /.
    let sys = basalt_flash::device::Sysfs::default();
    match sys.system_disks().into_iter().next() {
        Some(root) => {
            let dev = format!("/dev/{root}");
            // From stdin: the image file itself lives on that disk here, which is refused
            // by the source rule first.
            let out = flash(&["--quiet", "--dry-run", "-", &dev]);
            assert_eq!(out.status.code(), Some(3));
            assert!(String::from_utf8_lossy(&out.stderr).contains("running system"));
        }
        None => eprintln!("no disk holds / here (overlay root?): root-disk refusal not exercised"),
    }
    // Read-only.
    let ro_file = fx.p("ro");
    blank(&ro_file, IMG_MIB * 2 * MIB, 0);
    let ro = Loop::attach_with(&ro_file, &["-r"]);
    let out = flash(&["--quiet", s(&fx.image), s(&ro.dev)]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-only"));
    // `list --all` shows the loop device as a candidate with its size.
    let out = flash(&["list", "--all", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let devs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let d = devs
        .iter()
        .find(|d| d["path"] == s(&ro.dev))
        .expect("loop device listed");
    assert_eq!(d["size"], IMG_MIB * 2 * MIB);
    assert_eq!(d["transport"], "loop");
    assert_eq!(d["read_only"], true);
    // A partition instead of a disk.
    let (_pb, parted) = fx.target("parted", IMG_MIB + 8, 0);
    drop(parted);
    let pl = Loop::attach(&fx.p("parted"));
    sfdisk(&pl.dev, "label: gpt\nsize=8MiB\n");
    let part = format!("{}p1", pl.dev.display());
    if Path::new(&part).exists() {
        let out = flash(&["--quiet", s(&fx.image), &part]);
        assert_eq!(out.status.code(), Some(3));
    }
}

#[test]
fn dry_run_writes_nothing() {
    let fx = fixture();
    let (backing, l) = fx.target("t", IMG_MIB, 0x42);
    let out = flash(&["--dry-run", s(&fx.image), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("dry run"));
    assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x42));
}

#[test]
fn several_devices_one_failing() {
    let fx = fixture();
    let zst = fx.p("disk.img.zst");
    compress(&fx.image, &zst, "zstd");
    let (good, l1) = fx.target("good", IMG_MIB, 0);
    let (good2, l2) = fx.target("good2", IMG_MIB + 4, 0);
    // The size of a compressed image without bmap is unknown up front: the small card
    // fails while writing, the others finish.
    let (_small, l3) = fx.target("small", IMG_MIB - 16, 0);
    let out = flash(&[
        "--json",
        "--no-bmap",
        s(&zst),
        s(&l1.dev),
        s(&l3.dev),
        s(&l2.dev),
    ]);
    assert_eq!(out.status.code(), Some(8));
    assert!(same(&good, &fx.image, IMG_MIB * MIB));
    assert!(same(&good2, &fx.image, IMG_MIB * MIB));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<_> = events.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 3);
    let small = results.iter().find(|e| e["device"] == s(&l3.dev)).unwrap();
    assert_eq!(small["ok"], false);
    assert!(small["error"].as_str().unwrap().contains("does not fit"));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "done" && e["phase"] == "verify")
    );
}

#[test]
fn grow_data_moves_the_backup_gpt() {
    let fx = fixture();
    let (_b, l) = fx.target("big", IMG_MIB * 2, 0);
    let out = flash(&["--quiet", "--grow-data", s(&fx.image), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(0));
    let v = Command::new("sgdisk")
        .arg("-v")
        .arg(&l.dev)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let mut f = std::fs::File::open(&l.dev).unwrap();
    let t = basalt_bootloader::partition_table::PartitionTable::read(&mut f, "big").unwrap();
    let data = t.by_label("DATA").unwrap();
    assert!(data.start + data.size > (2 * IMG_MIB - 2) * MIB, "{data:?}");
}

#[test]
fn partition_by_label() {
    let fx = fixture();
    let (backing, l) = fx.target("t", IMG_MIB, 0);
    assert_eq!(
        flash(&["--quiet", s(&fx.image), s(&l.dev)]).status.code(),
        Some(0)
    );
    let part = fx.p("slot.img");
    std::fs::write(&part, noise(9, 5 * MIB as usize)).unwrap();
    let xz = fx.p("slot.img.xz");
    compress(&part, &xz, "xz");
    let out = flash(&["--quiet", "--partition", "SYSTEM-B", s(&xz), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(0));
    let (start, _) = fx.layout.system_b;
    assert_eq!(
        read_range(&backing, start, 5 * MIB),
        std::fs::read(&part).unwrap()
    );
    // SYSTEM-A untouched.
    let (a, _) = fx.layout.system_a;
    assert_eq!(read_range(&backing, a, MIB), read_range(&fx.image, a, MIB));
    // Too large for the partition.
    std::fs::write(&part, noise(9, 9 * MIB as usize)).unwrap();
    let out = flash(&["--quiet", "--partition", "SYSTEM-B", s(&part), s(&l.dev)]);
    assert_ne!(out.status.code(), Some(0));
}

/// Serves `data` on 127.0.0.1 with Range support; the first response is cut after `cut`
/// bytes. Returns the URL and the Range headers seen.
fn serve(
    data: Vec<u8>,
    cut: usize,
    honor_range: bool,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/disk.img.zst", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().take(6).enumerate() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut start = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    start = v.trim().trim_end_matches('-').parse().unwrap();
                    seen2.lock().unwrap().push(line.trim().to_ascii_lowercase());
                }
            }
            if !honor_range {
                start = 0;
            }
            let body = &data[start..];
            let head = if start == 0 {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    data.len() - 1,
                    data.len()
                )
            };
            let _ = conn.write_all(head.as_bytes());
            let n = if i == 0 {
                cut.min(body.len())
            } else {
                body.len()
            };
            let _ = conn.write_all(&body[..n]);
            let _ = conn.flush();
            drop(conn);
        }
    });
    (url, seen)
}

#[test]
fn http_source_resumes_after_a_dropped_connection() {
    let fx = fixture();
    let zst = fx.p("disk.img.zst");
    compress(&fx.image, &zst, "zstd");
    let data = std::fs::read(&zst).unwrap();
    let cut = data.len() / 3;
    let (url, seen) = serve(data, cut, true);
    let (backing, l) = fx.target("t", IMG_MIB, 0);
    let out = flash(&[
        "--quiet",
        "--bmap",
        s(&fx.p("disk.img.bmap")),
        &url,
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(bmap_equal(&fx, &backing));
    assert!(same(&backing, &fx.image, IMG_MIB * MIB));
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.as_slice(),
        [format!("range: bytes={cut}-")],
        "{seen:?}"
    );
}

#[test]
fn a_device_held_exclusively_is_not_written() {
    use std::os::unix::fs::OpenOptionsExt;
    let fx = fixture();
    let (backing, l) = fx.target("t", IMG_MIB, 0x21);
    // Another exclusive opener (as mkfs or another flasher would be).
    let _held = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(&l.dev)
        .unwrap();
    let out = flash(&["--quiet", s(&fx.image), s(&l.dev)]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to open"));
    assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x21));
}

#[test]
fn http_server_without_range_support_is_a_clear_error() {
    let fx = fixture();
    let zst = fx.p("disk.img.zst");
    compress(&fx.image, &zst, "zstd");
    let data = std::fs::read(&zst).unwrap();
    let cut = data.len() / 2;
    let (url, _) = serve(data, cut, false);
    let (backing, l) = fx.target("t", IMG_MIB, 0x44);
    let out = flash(&[
        "--quiet",
        "--bmap",
        s(&fx.p("disk.img.bmap")),
        &url,
        s(&l.dev),
    ]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("failed to resume {url} at offset {cut}")),
        "{err}"
    );
    assert!(read_range(&backing, 0, MIB).iter().all(|&b| b == 0x44));
}
