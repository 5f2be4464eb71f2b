//! Golden files for the boot scripts: the overlay template rendered with each board preset,
//! and the packed `boot.scr` for QEMU `virt` (timestamp 1700000000).
//!
//! After an intended change to the template or the renderer, regenerate with
//! `BASALT_UPDATE_GOLDEN=1 cargo test -p basalt-bootloader --test script_golden` and review
//! the diff under `bootloader/testdata/script/`.

use std::path::PathBuf;

use basalt_bootloader::script::{
    BootScriptParams, DEFAULT_IMAGE_NAME, build_boot_scr, parse_script_image,
};

const TEMPLATE: &str = include_str!("../../overlays/common/u-boot/boot.cmd");
const EPOCH: u32 = 1_700_000_000;

fn golden(name: &str, actual: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/script")
        .join(name);
    if std::env::var_os("BASALT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (BASALT_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the rendered output; rerun with BASALT_UPDATE_GOLDEN=1 if intended",
        path.display()
    );
}

#[test]
fn qemu_virt_script_matches_golden() {
    let script = BootScriptParams::qemu_arm64_virt()
        .render(TEMPLATE)
        .unwrap();
    golden("qemu-arm64-virt.boot.cmd", script.as_bytes());
}

#[test]
fn raspberry_pi_script_matches_golden() {
    let script = BootScriptParams::raspberry_pi().render(TEMPLATE).unwrap();
    golden("raspberry-pi.boot.cmd", script.as_bytes());
}

#[test]
fn qemu_virt_boot_scr_matches_golden() {
    let params = BootScriptParams::qemu_arm64_virt();
    let image = build_boot_scr(TEMPLATE, &params, DEFAULT_IMAGE_NAME, EPOCH).unwrap();
    golden("qemu-arm64-virt.boot.scr", &image);
    let parsed = parse_script_image(&image).unwrap();
    assert_eq!(parsed.script, params.render(TEMPLATE).unwrap().as_bytes());
}

#[test]
fn template_has_no_single_quotes_outside_comments() {
    // U-Boot's hush reports "syntax error" for a ' inside a "..." string, even in a branch
    // that never runs (found booting the script in QEMU), so the template avoids them.
    for (index, line) in TEMPLATE.lines().enumerate() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        assert!(!line.contains('\''), "line {}: {line}", index + 1);
    }
}

#[test]
fn env_is_saved_before_the_slot_is_loaded() {
    let script = BootScriptParams::qemu_arm64_virt()
        .render(TEMPLATE)
        .unwrap();
    let position = |needle: &str| {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in script"))
    };
    let decrement = position("setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1");
    let save = position("fatwrite virtio 0:1 ${kernel_addr_r} uboot.env 0x4000");
    let first_slot_load = position("load virtio 0:${basalt_part}");
    assert!(decrement < save && save < first_slot_load);

    let pi = BootScriptParams::raspberry_pi().render(TEMPLATE).unwrap();
    assert!(pi.find("saveenv").unwrap() < pi.find("load mmc 0:${basalt_part}").unwrap());
}
