//! Board inputs from the real pinned Debian packages in `cache/debs/` (downloaded by
//! `scripts/setup-host`), and from packages built here with the real `dpkg-deb`.
//!
//! A missing package or tool fails the test with "run scripts/setup-host".

use basalt_boards::{Arch, Board};
use basalt_image::inputs::{
    DebArchive, DebCache, InputsLock, KernelImageKind, KernelSource, prepare_inputs, sha256_file,
};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache() -> DebCache {
    DebCache::from_repo(&repo()).expect("scripts/inputs.lock readable")
}

fn require_tool(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "{tool} is not installed: run scripts/setup-host");
}

/// The arm64 kernel package prepared for rpi4 (the board using most input kinds: kernel,
/// DTBs, firmware from two packages, U-Boot, Linux firmware), then every arm64 board's
/// early modules resolved in it, and the same kernel used again as a `--kernel-dir`.
#[test]
fn arm64_inputs_from_pinned_packages() {
    let cache = cache();
    let work = tempfile::tempdir().unwrap();
    let rpi4 = Board::load("rpi4").unwrap();
    let inputs = prepare_inputs(&rpi4, &KernelSource::Package, &cache, work.path())
        .unwrap_or_else(|e| panic!("{e} (run scripts/setup-host if a package is missing)"));
    let k = &inputs.kernel;
    assert_eq!(k.release, "6.1.0-56-arm64");
    assert_eq!(k.origin, "linux-image-6.1.0-56-arm64_6.1.192-2_arm64.deb");
    // Debian's arm64 vmlinuz is a raw Image already (no gzip): booti-ready.
    assert_eq!(k.image_kind, KernelImageKind::Arm64Image);
    assert!(k.image.ends_with("kernel/Image"));
    assert!(fs::metadata(&k.image).unwrap().len() > 20 << 20);
    let config = fs::read_to_string(k.config.as_ref().expect("config extracted")).unwrap();
    assert!(config.contains("CONFIG_RD_ZSTD=y") && config.contains("CONFIG_RD_GZIP=y"));
    assert!(config.contains("CONFIG_MODULE_COMPRESS_NONE=y"));
    assert_eq!(k.dtbs.len(), 3);
    for (_, dtb) in &k.dtbs {
        assert_eq!(
            &fs::read(dtb).unwrap()[..4],
            &[0xd0, 0x0d, 0xfe, 0xed],
            "{dtb:?}"
        );
    }
    let dests: Vec<&str> = inputs.boot_files.iter().map(|f| f.dest.as_str()).collect();
    assert_eq!(
        dests,
        [
            "start4.elf",
            "fixup4.dat",
            "bcm2711-rpi-4-b.dtb",
            "bcm2711-rpi-400.dtb",
            "bcm2711-rpi-cm4-io.dtb",
            "u-boot.bin"
        ]
    );
    for f in inputs.boot_files.iter().chain(&inputs.linux_firmware) {
        assert!(fs::metadata(&f.source).unwrap().len() > 0, "{f:?}");
    }
    assert_eq!(inputs.linux_firmware.len(), 3);
    assert!(k.modules.len() > 3000, "{} modules", k.modules.len());

    for board in Board::all().unwrap() {
        if board.arch != Arch::Aarch64 {
            continue;
        }
        assert_eq!(board.kernel.package, rpi4.kernel.package);
        let r = k
            .modules
            .resolve(&board.kernel.early_modules)
            .unwrap_or_else(|e| panic!("{}: {e}", board.name));
        assert!(
            r.builtin.is_empty(),
            "{}: builtin {:?}",
            board.name,
            r.builtin
        );
        let names: Vec<&str> = r.modules.iter().map(|m| m.name.as_str()).collect();
        let pos = |n: &str| {
            names
                .iter()
                .position(|x| *x == n)
                .unwrap_or_else(|| panic!("{n} in {names:?}"))
        };
        assert!(
            pos("dm_mod") < pos("dm_verity"),
            "{}: {names:?}",
            board.name
        );
        assert!(pos("dm_bufio") < pos("dm_verity"));
        assert!(
            pos("crc32c_generic") < pos("ext4"),
            "ext4's softdep crypto-crc32c"
        );
        assert!(pos("jbd2") < pos("ext4") && pos("mbcache") < pos("ext4"));
        assert!(pos("fat") < pos("vfat"));
        if board.name == "rpi4" {
            assert!(pos("sdhci") < pos("sdhci_pltfm") && pos("sdhci_pltfm") < pos("sdhci_iproc"));
        }
        if board.name == "qemu-arm64" {
            assert!(pos("virtio_pci_modern_dev") < pos("virtio_pci"));
            assert!(pos("net_failover") < pos("virtio_net"));
        }
    }

    // The same kernel as a user's kernel folder, with a modules.dep written from the index.
    let kdir = tempfile::tempdir().unwrap();
    fs::copy(&k.image, kdir.path().join("Image")).unwrap();
    for (name, path) in &k.dtbs {
        let to = kdir.path().join("dtbs").join(name);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(path, to).unwrap();
    }
    let mods = kdir.path().join("modules/lib/modules/6.1.0-56-arm64");
    fs::create_dir_all(mods.parent().unwrap()).unwrap();
    let status = Command::new("cp")
        .args([
            "-a",
            k.modules.root().to_str().unwrap(),
            mods.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // The real depmod writes modules.dep; its dependency sets equal the index's.
    require_tool("depmod");
    let st = Command::new("depmod")
        .arg("-b")
        .arg(kdir.path().join("modules"))
        .arg("6.1.0-56-arm64")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "depmod: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dep_sets =
        |text: &str| -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(m, d)| {
                    (
                        m.to_string(),
                        d.split_whitespace().map(str::to_string).collect(),
                    )
                })
                .collect()
        };
    let depmod = dep_sets(&fs::read_to_string(mods.join("modules.dep")).unwrap());
    let ours = dep_sets(&k.modules.modules_dep());
    assert_eq!(depmod.len(), ours.len());
    for (m, deps) in &depmod {
        assert_eq!(Some(deps), ours.get(m), "dependencies of {m}");
    }
    let work2 = tempfile::tempdir().unwrap();
    let from_dir = prepare_inputs(
        &rpi4,
        &KernelSource::Dir(kdir.path().to_path_buf()),
        &cache,
        work2.path(),
    )
    .unwrap();
    assert_eq!(from_dir.kernel.release, "6.1.0-56-arm64");
    let a = k.modules.resolve(&rpi4.kernel.early_modules).unwrap();
    let b = from_dir
        .kernel
        .modules
        .resolve(&rpi4.kernel.early_modules)
        .unwrap();
    let names = |r: &basalt_image::inputs::ResolvedModules| -> Vec<String> {
        r.modules.iter().map(|m| m.name.clone()).collect()
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(
        fs::read(&from_dir.boot_files[2].source).unwrap(),
        fs::read(&inputs.boot_files[2].source).unwrap()
    );

    // A missing DTB in a kernel folder is named.
    fs::remove_file(kdir.path().join("dtbs/broadcom/bcm2711-rpi-400.dtb")).unwrap();
    let err = prepare_inputs(
        &rpi4,
        &KernelSource::Dir(kdir.path().to_path_buf()),
        &cache,
        work2.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("DTB broadcom/bcm2711-rpi-400.dtb not found in"),
        "{err}"
    );
}

/// Every board's package files exist in its pinned packages (one listing per package).
#[test]
fn every_board_names_files_that_exist() {
    let cache = cache();
    let boards = Board::all().unwrap();
    let mut wanted: std::collections::BTreeMap<(String, &str), Vec<String>> = Default::default();
    for b in &boards {
        let arch = b.arch.debian_arch();
        let mut add = |pkg: &str, path: String| {
            wanted
                .entry((pkg.to_string(), arch))
                .or_default()
                .push(path)
        };
        add(&b.kernel.package, b.kernel_image_path());
        for d in &b.kernel.dtbs {
            add(&b.kernel.package, b.dtb_package_path(d));
        }
        for f in b.firmware.iter().chain(&b.linux_firmware) {
            add(&f.package, f.path.clone());
        }
        if let Some(bin) = b.uboot.as_ref().and_then(|u| u.binary.as_ref()) {
            add(&bin.package, bin.path.clone());
        }
        if let Some(efi) = &b.efi {
            add(&efi.loader.package, efi.loader.path.clone());
        }
    }
    for ((pkg, arch), paths) in wanted {
        let deb = cache.open(&pkg, arch).unwrap_or_else(|e| panic!("{e}"));
        let listed: std::collections::BTreeSet<String> = deb
            .list()
            .unwrap()
            .into_iter()
            .map(|e| format!("/{}", e.path))
            .collect();
        for p in paths {
            assert!(listed.contains(&p), "{p} not in {}", deb.name());
        }
    }
}

/// amd64: bzImage, modules of both x86_64 boards.
#[test]
fn amd64_inputs_from_pinned_packages() {
    let cache = cache();
    let work = tempfile::tempdir().unwrap();
    let board = Board::load("x86_64-uefi").unwrap();
    let inputs = prepare_inputs(&board, &KernelSource::Package, &cache, work.path()).unwrap();
    assert_eq!(inputs.kernel.image_kind, KernelImageKind::X86BzImage);
    assert_eq!(inputs.boot_files[0].dest, "EFI/BOOT/BOOTX64.EFI");
    for name in ["x86_64-uefi", "qemu-x86_64"] {
        let b = Board::load(name).unwrap();
        let r = inputs
            .kernel
            .modules
            .resolve(&b.kernel.early_modules)
            .unwrap();
        assert!(r.modules.iter().any(|m| m.name == "dm_verity"));
    }
}

fn build_deb(dir: &Path, compression: &str, files: &[(&str, &[u8])]) -> PathBuf {
    require_tool("dpkg-deb");
    let root = dir.join(format!("pkg-{compression}"));
    fs::create_dir_all(root.join("DEBIAN")).unwrap();
    fs::write(
        root.join("DEBIAN/control"),
        "Package: fake-firmware\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n",
    )
    .unwrap();
    for (path, data) in files {
        let p = root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    std::os::unix::fs::symlink("real.bin", root.join("usr/lib/fw/link.bin")).unwrap();
    let out = dir.join(format!("fake-firmware_1.0_all-{compression}.deb"));
    let st = Command::new("dpkg-deb")
        .args(["--root-owner-group", &format!("-Z{compression}"), "--build"])
        .arg(&root)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    out
}

/// Packages built by dpkg-deb with each data compression read back identically; links are
/// followed; missing files are named with the package file.
#[test]
fn dpkg_deb_packages_in_every_compression() {
    let dir = tempfile::tempdir().unwrap();
    let files: &[(&str, &[u8])] = &[
        ("/usr/lib/fw/real.bin", b"firmware bytes"),
        ("/etc/x.conf", b"x=1\n"),
    ];
    for comp in ["xz", "zstd", "gzip", "none"] {
        let deb = DebArchive::open(&build_deb(dir.path(), comp, files)).unwrap();
        let ext = match comp {
            "xz" => "data.tar.xz",
            "zstd" => "data.tar.zst",
            "gzip" => "data.tar.gz",
            _ => "data.tar",
        };
        assert_eq!(deb.data_member(), ext);
        assert_eq!(deb.read_file("x", "/etc/x.conf").unwrap(), b"x=1\n");
        assert_eq!(
            deb.read_file("link", "/usr/lib/fw/link.bin").unwrap(),
            b"firmware bytes"
        );
        let out = dir.path().join(format!("out-{comp}"));
        let sel = [
            basalt_image::inputs::Extract::file("fw", "/usr/lib/fw/link.bin", "boot/fw.bin"),
            basalt_image::inputs::Extract::tree("usr tree", "/usr/lib", "tree"),
        ];
        deb.extract(&sel, &out).unwrap();
        assert_eq!(
            fs::read(out.join("boot/fw.bin")).unwrap(),
            b"firmware bytes"
        );
        assert_eq!(
            fs::read_link(out.join("tree/fw/link.bin")).unwrap(),
            Path::new("real.bin")
        );
        let missing = [
            basalt_image::inputs::Extract::file(
                "DTB broadcom/bcm2711-rpi-9.dtb",
                "/usr/lib/x.dtb",
                "a",
            ),
            basalt_image::inputs::Extract::file("firmware /nope", "/nope", "b"),
        ];
        let err = deb.extract(&missing, &out).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "DTB broadcom/bcm2711-rpi-9.dtb, firmware /nope not found in fake-firmware_1.0_all-{comp}.deb"
            )
        );
    }
    let not_deb = dir.path().join("x.deb");
    fs::write(&not_deb, b"!<arch>\n").unwrap();
    let err = DebArchive::open(&not_deb).unwrap_err().to_string();
    assert!(err.starts_with("x.deb is not a Debian package"), "{err}");
}

/// A cached package whose checksum differs from the pin is refused, naming the package.
#[test]
fn tampered_package_is_refused() {
    let real = cache();
    let entry = real
        .lock()
        .entry("raspi-firmware", "arm64")
        .unwrap()
        .clone();
    let src = real.dir().join(entry.deb_file_name());
    assert!(
        src.is_file(),
        "{} missing: run scripts/setup-host",
        src.display()
    );
    assert_eq!(sha256_file(&src).unwrap(), entry.sha256);
    let dir = tempfile::tempdir().unwrap();
    let mut data = fs::read(&src).unwrap();
    let n = data.len() - 100;
    data[n] ^= 0xff;
    fs::write(dir.path().join(entry.deb_file_name()), data).unwrap();
    let lock = InputsLock::load(&repo().join("scripts/inputs.lock")).unwrap();
    let tampered = DebCache::new(lock, dir.path());
    let err = tampered
        .open("raspi-firmware", "arm64")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("board input raspi-firmware all 1.20220830+ds-1"),
        "{err}"
    );
    assert!(
        err.contains(&format!("the lock pins {}", entry.sha256)),
        "{err}"
    );

    let board = Board::load("rpi4").unwrap();
    let mut bad = board.clone();
    bad.firmware[0].path = "/usr/lib/raspi-firmware/start9.elf".into();
    let work = tempfile::tempdir().unwrap();
    let deb = real.open("raspi-firmware", "arm64").unwrap();
    let err = deb
        .extract(
            &[basalt_image::inputs::Extract::file(
                format!("firmware {}", bad.firmware[0].path),
                &bad.firmware[0].path,
                "x",
            )],
            work.path(),
        )
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "firmware /usr/lib/raspi-firmware/start9.elf not found in raspi-firmware_1.20220830+ds-1_all.deb"
    );
}
