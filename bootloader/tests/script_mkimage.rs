//! `boot.scr` packing against the real `mkimage` (u-boot-tools): byte identity for the same
//! input and `SOURCE_DATE_EPOCH`, and `mkimage -l` reading our images back as scripts.
//!
//! mkimage is required: without it these tests fail and say how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;

use basalt_bootloader::script::{
    Arch, BootScriptParams, DEFAULT_IMAGE_NAME, pack_script, parse_script_image,
};

const TEMPLATE: &str = include_str!("../../overlays/common/u-boot/boot.cmd");
const EPOCH: u32 = 1_700_000_000;

fn mkimage() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("mkimage"))
        .find(|candidate| candidate.is_file());
    match found {
        Some(path) => path,
        None => panic!(
            "mkimage not found: these tests compare boot.scr with the real mkimage; \
             run scripts/setup-host (installs u-boot-tools)"
        ),
    }
}

/// Runs `mkimage -A arch -O linux -T script -C none -a 0 -e 0 -n name -d script out`.
fn mkimage_pack(dir: &Path, script: &[u8], name: &str, arch: Arch) -> Vec<u8> {
    let input = dir.join("boot.cmd");
    let output = dir.join("boot.scr");
    std::fs::write(&input, script).unwrap();
    let result = Command::new(mkimage())
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .args(["-A", arch.mkimage_name(), "-O", "linux", "-T", "script"])
        .args(["-C", "none", "-a", "0", "-e", "0", "-n", name, "-d"])
        .arg(&input)
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "mkimage failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(&output).unwrap()
}

fn mkimage_list(path: &Path) -> String {
    let result = Command::new(mkimage())
        .arg("-l")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        result.status.success(),
        "mkimage -l failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    String::from_utf8_lossy(&result.stdout).into_owned()
}

#[test]
fn rendered_scripts_are_byte_identical_to_mkimage() {
    let dir = tempfile::tempdir().unwrap();
    for params in [
        BootScriptParams::qemu_arm64_virt(),
        BootScriptParams::raspberry_pi(),
    ] {
        let script = params.render(TEMPLATE).unwrap();
        let ours = pack_script(script.as_bytes(), DEFAULT_IMAGE_NAME, Arch::Arm64, EPOCH).unwrap();
        let theirs = mkimage_pack(
            dir.path(),
            script.as_bytes(),
            DEFAULT_IMAGE_NAME,
            Arch::Arm64,
        );
        assert_eq!(ours, theirs, "boot.scr differs from mkimage's");
    }
}

#[test]
fn odd_lengths_names_and_architectures_match_mkimage() {
    let dir = tempfile::tempdir().unwrap();
    let name32 = "n".repeat(32);
    let cases: [(&[u8], &str, Arch); 6] = [
        (b"e", "x", Arch::Arm64),
        (b"ec", "", Arch::Arm64),
        (b"ech", "three", Arch::Arm),
        (b"echo hi\n", &name32, Arch::Arm64),
        (b"echo \xff binary \x00 bytes\r\n", "bin", Arch::X86_64),
        (b"echo riscv\n", "rv", Arch::Riscv),
    ];
    for (script, name, arch) in cases {
        let ours = pack_script(script, name, arch, EPOCH).unwrap();
        let theirs = mkimage_pack(dir.path(), script, name, arch);
        assert_eq!(ours, theirs, "script {script:?} name {name:?} {arch:?}");
        let parsed = parse_script_image(&theirs).unwrap();
        assert_eq!(parsed.script, script);
        assert_eq!(parsed.name, name);
        assert_eq!(parsed.arch, arch);
        assert_eq!(parsed.timestamp, EPOCH);
    }
}

#[test]
fn mkimage_lists_our_image_as_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = BootScriptParams::qemu_arm64_virt()
        .render(TEMPLATE)
        .unwrap();
    let image = pack_script(script.as_bytes(), DEFAULT_IMAGE_NAME, Arch::Arm64, EPOCH).unwrap();
    let path = dir.path().join("ours.scr");
    std::fs::write(&path, &image).unwrap();
    let listing = mkimage_list(&path);
    // u-boot-tools 2023.01 prints the type as "AArch64 Linux Script (uncompressed)"; older
    // releases printed "Script File". Either way the type word is "Script".
    let type_line = listing
        .lines()
        .find(|line| line.starts_with("Image Type:"))
        .unwrap_or_else(|| panic!("no Image Type line in:\n{listing}"));
    assert!(type_line.contains("Script"), "{type_line}");
    assert!(type_line.contains("AArch64 Linux"), "{type_line}");
    assert!(type_line.contains("uncompressed"), "{type_line}");
    assert!(
        listing.contains(&format!("Image Name:   {DEFAULT_IMAGE_NAME}")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("Image 0: {} Bytes", script.len())),
        "{listing}"
    );
}
