//! Builds the default board's (qemu-arm64) disk image twice from the pinned inputs, with the
//! container runtime in its root (the one image test that carries it; the others leave it
//! out), and checks it with tools nobody here wrote: `sgdisk -v` and `sfdisk -J` on the
//! layout, `fsck.vfat -n` on BOOT and the slot, `fw_printenv` on the initial env, `mkimage
//! -l` on boot.scr, `unsquashfs -l` on the root filesystem and `veritysetup verify` on its
//! hash tree; and that the two builds are byte-identical (same SOURCE_DATE_EPOCH).
//!
//! Needs the board inputs in cache/debs (scripts/setup-host).

mod common;

use std::path::Path;

use basalt_bootloader::partition_table::PartitionTable;
use basalt_image::compose::{BuildOutput, build};
use common::{extract, mcopy, request, run};

fn build_once(dir: &Path, name: &str) -> BuildOutput {
    let mut req = request(dir, "qemu-arm64", name);
    req.containers = true;
    build(&req).unwrap_or_else(|e| panic!("qemu-arm64 build failed: {e}"))
}

#[test]
fn qemu_arm64_image_passes_reference_tools_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let first = build_once(dir.path(), "a");
    let disk = &first.disk_image;
    let d = disk.to_str().unwrap();

    // Layout.
    let verify = run("sgdisk", &["-v", d]);
    assert!(verify.contains("No problems found"), "{verify}");
    let json: serde_json::Value = serde_json::from_str(&run("sfdisk", &["-J", d])).unwrap();
    let names: Vec<&str> = json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["BOOT", "SYSTEM-A", "SYSTEM-B", "STATE", "DATA"]);
    let table = PartitionTable::read(&mut std::fs::File::open(disk).unwrap(), d).unwrap();

    // BOOT: clean FAT, boot.scr listed by mkimage, env read by fw_printenv.
    let boot = table.by_label("BOOT").unwrap();
    let boot_img = dir.path().join("boot.fat");
    extract(disk, boot.start, boot.size, &boot_img);
    run("fsck.vfat", &["-n", boot_img.to_str().unwrap()]);
    let scr = dir.path().join("boot.scr");
    mcopy(&boot_img, "boot.scr", &scr);
    let listing = run("mkimage", &["-l", scr.to_str().unwrap()]);
    assert!(listing.contains("Script"), "{listing}");
    let env = dir.path().join("uboot.env");
    mcopy(&boot_img, "uboot.env", &env);
    let config = dir.path().join("fw_env.config");
    std::fs::write(&config, format!("{} 0x0 0x4000\n", env.display())).unwrap();
    let vars = run("fw_printenv", &["-c", config.to_str().unwrap()]);
    assert!(vars.contains("BOOT_ORDER=A\n"), "{vars}");
    assert!(vars.contains("BOOT_A_LEFT=3\n"), "{vars}");

    // SYSTEM-A: clean FAT with kernel, initramfs, slot env and the verity-protected root.
    let slot = table.by_label("SYSTEM-A").unwrap();
    let slot_img = dir.path().join("slot.fat");
    extract(disk, slot.start, slot.size, &slot_img);
    assert_eq!(
        std::fs::read(&slot_img).unwrap(),
        std::fs::read(&first.slot_image).unwrap(),
        "SYSTEM-A holds the slot image"
    );
    run("fsck.vfat", &["-n", slot_img.to_str().unwrap()]);
    let slot_env = dir.path().join("slot.env");
    mcopy(&slot_img, "basalt/slot.env", &slot_env);
    let slot_env = std::fs::read_to_string(&slot_env).unwrap();
    assert!(slot_env.contains(&first.root_hash), "{slot_env}");
    let rootfs = dir.path().join("rootfs.img");
    mcopy(&slot_img, "rootfs.img", &rootfs);
    let r = rootfs.to_str().unwrap();
    let files = run("unsquashfs", &["-l", r]);
    assert!(
        files.contains(&format!("lib/modules/{}/modules.dep", first.kernel_release)),
        "modules.dep missing from the root filesystem"
    );
    for path in [
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/sbin/runc",
        "usr/lib/aarch64-linux-gnu/libseccomp.so.2",
        "usr/lib/aarch64-linux-gnu/libc.so.6",
        "usr/lib/ld-linux-aarch64.so.1",
    ] {
        let line = format!("squashfs-root/{path}\n");
        assert!(
            files.contains(&line),
            "{path} missing from the root filesystem"
        );
    }
    assert!(!files.contains("usr/bin/ctr"), "ctr in the root filesystem");
    assert_eq!(first.extensions.len(), 1, "{:?}", first.extensions);
    // The hash tree sits after the squashfs at a 4 KiB boundary (see basalt_image::verity).
    let sb = run("unsquashfs", &["-s", r]);
    let bytes_used: u64 = sb
        .lines()
        .find_map(|l| {
            l.strip_prefix("Filesystem size ")
                .and_then(|v| v.split_whitespace().next())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no filesystem size in unsquashfs -s: {sb}"));
    let hash_offset = bytes_used.div_ceil(4096) * 4096;
    run(
        "veritysetup",
        &[
            "verify",
            r,
            r,
            &first.root_hash,
            &format!("--hash-offset={hash_offset}"),
        ],
    );

    // STATE and DATA are ext4.
    for label in ["STATE", "DATA"] {
        let p = table.by_label(label).unwrap();
        let img = dir.path().join(format!("{label}.img"));
        extract(disk, p.start, p.size, &img);
        run("e2fsck", &["-n", "-f", img.to_str().unwrap()]);
    }

    // Release files: bmaptool restores the image from the bmap; the bundle verifies with
    // the public key and carries the slot; the manifest's hashes match.
    let out_dir = disk.parent().unwrap();
    let copy = dir.path().join("copy.img");
    run(
        "bmaptool",
        &[
            "copy",
            "--bmap",
            out_dir.join("disk.img.bmap").to_str().unwrap(),
            d,
            copy.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&copy).unwrap() == std::fs::read(disk).unwrap(),
        "bmaptool copy differs from the image"
    );
    std::fs::remove_file(&copy).unwrap();
    let key = basalt_image::bundle::load_signing_key(&dir.path().join("signing.pem")).unwrap();
    let mut reader =
        basalt_image::bundle::BundleReader::open(&out_dir.join("slot.bundle")).unwrap();
    let verified = reader.verify(&[key.verifying_key()]).unwrap();
    reader.verify_payload(&verified).unwrap();
    assert_eq!(verified.manifest().board, "qemu-arm64");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["verity_root_hash"], first.root_hash.as_str());
    let ext = &manifest["extensions"][0];
    assert_eq!(ext["name"], "containers");
    assert_eq!(ext["packages"][0]["package"], "containerd");
    assert_eq!(ext["packages"][0]["arch"], "arm64");
    assert_eq!(ext["files"], 8);
    assert_eq!(ext["bytes"], first.extensions[0].bytes);
    let disk_entry = manifest["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["file"] == "disk.img")
        .unwrap();
    assert_eq!(
        disk_entry["sha256"],
        basalt_image::inputs::sha256_file(disk).unwrap().as_str()
    );
    run(
        "zstd",
        &["-t", out_dir.join("disk.img.zst").to_str().unwrap()],
    );

    // Reproducible.
    let second = build_once(dir.path(), "b");
    for name in [
        "disk.img",
        "disk.img.bmap",
        "disk.img.zst",
        "slot.bundle",
        "manifest.json",
    ] {
        let a = std::fs::read(first.disk_image.parent().unwrap().join(name)).unwrap();
        let b = std::fs::read(second.disk_image.parent().unwrap().join(name)).unwrap();
        assert!(
            a == b,
            "{name} differs between two builds with the same inputs and SOURCE_DATE_EPOCH"
        );
    }
}

#[test]
fn existing_output_folder_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep"), b"x").unwrap();
    let mut request = request(dir.path(), "qemu-arm64", "out");
    request.machined = dir.path().join("missing");
    let err = build(&request).unwrap_err().to_string();
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"x");
}
