//! U-Boot boot scripts: `boot.cmd` templates rendered for a board and packed into the
//! legacy `boot.scr` image U-Boot's `source` command runs.
//!
//! - [`template`]: `@NAME@` substitution from a fixed variable set ([`TEMPLATE_VARIABLES`]),
//!   filled from typed [`BootScriptParams`] (presets for QEMU `virt` and the Raspberry Pi).
//! - [`image`]: pack/parse of the legacy image, byte-identical to
//!   `mkimage -A arm64 -O linux -T script -C none -a 0 -e 0 -n NAME -d boot.cmd boot.scr`
//!   with the same `SOURCE_DATE_EPOCH` (checked against the real mkimage in the tests).
//!
//! The shared template is `overlays/common/u-boot/boot.cmd`. It implements the A/B choice
//! with RAUC-compatible boot counting (`BOOT_ORDER`, `BOOT_A_LEFT`, `BOOT_B_LEFT`): the
//! first slot in `BOOT_ORDER` with attempts left is chosen, its counter decremented with
//! `setexpr` and the environment saved *before* anything of the slot is loaded; with no slot
//! left both counters are reset to `BOOT_TRIES`, saved, and the board resets.
//!
//! Design choices and limits:
//! - **Root hash from the slot, not the script.** The dm-verity root hash is read at boot
//!   from a small text env file inside the chosen slot (`SLOT_ENV`, default
//!   `basalt/slot.env`, `basalt_roothash=<hex>`, see [`render_slot_env`]), imported with
//!   `env import -t`. So `boot.scr` on the shared BOOT partition never changes on an upgrade;
//!   only the slot (written whole) does. A slot without the file is not booted: its attempt
//!   is already counted and the board resets.
//! - **Kernel command line:** `console=CONSOLE basalt.slot=A|B basalt.roothash=<hex>
//!   EXTRA_ARGS`. U-Boot's own `bootargs` (or the Pi's `cmdline.txt`) are replaced.
//! - **Env storage:** [`EnvStorage::SaveEnv`] (`saveenv`, Raspberry Pi) or
//!   [`EnvStorage::FatFile`] (QEMU `virt`: `uboot.env` on BOOT holding only the three A/B
//!   variables in the non-redundant CRC32 format, loaded with `fatload` + `env import -c`
//!   and saved with `env export -c` + `fatwrite`). `fatwrite` rewrites the file in place: a
//!   power cut during that write leaves a file with a bad CRC, which the script then ignores
//!   (defaults `"A B"`/`BOOT_TRIES` apply). A failed save does not stop the boot.
//! - **Counters are single digits** (1..=9): `setexpr` prints hex, `test -gt` reads decimal.
//! - **Numbers are hex** where U-Boot parses hex (`dev:part`, sizes): partition 10 is `a`.
//! - The kernel must be an uncompressed arm64 `Image` (`booti`). Load addresses are
//!   variables ([`LoadAddresses`]): U-Boot's `${kernel_addr_r}` & co. on QEMU, moved on the
//!   Raspberry Pi where the defaults are too close together for a Debian kernel. The kernel
//!   address also serves as scratch for the env files, which are read before the kernel.
//!   (Debian's arm64 `vmlinuz` already is an uncompressed `Image`.)
//! - U-Boot's hush reports a syntax error for a `'` inside a `"..."` string, even in a branch
//!   that never runs: the template avoids it and values may not contain quotes.
//!
//! The rendered scripts were booted with Debian 12's `qemu_arm64` U-Boot (`-M virt`, env in
//! `uboot.env`) and `rpi_arm64` U-Boot (`-M raspi3b`, `saveenv`): counters counted down,
//! the fallback to the other slot and the reset of both counters happened as described, and
//! the Debian kernel started with `basalt.slot=` and `basalt.roothash=` from the slot.

pub mod image;
pub mod template;

pub use image::{Arch, ScriptImage, image_timestamp, pack_script, parse_script_image};
pub use template::{
    BootScriptParams, DEFAULT_SLOT_ENV_FILE, DeviceType, EnvStorage, LoadAddresses,
    TEMPLATE_VARIABLES, render_slot_env, render_template,
};

/// Name written into the header of Basalt's `boot.scr`.
pub const DEFAULT_IMAGE_NAME: &str = "Basalt OS boot script";

/// A failed template render or image pack/parse.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The template uses a placeholder that is not a known variable.
    #[error(
        "boot script template line {line}: unknown placeholder @{name}@ (known: {known})",
        known = known_names()
    )]
    UnknownPlaceholder {
        /// The placeholder name.
        name: String,
        /// 1-based line in the template.
        line: usize,
    },
    /// The template uses a known variable that was given no value.
    #[error("boot script template line {line}: placeholder @{name}@ has no value")]
    UnreplacedPlaceholder {
        /// The placeholder name.
        name: String,
        /// 1-based line in the template.
        line: usize,
    },
    /// A variable's value cannot be put into a boot script.
    #[error("boot script variable {name} = {value:?} rejected: {reason}")]
    ValueRejected {
        /// The variable name.
        name: String,
        /// The rejected value.
        value: String,
        /// Why.
        reason: String,
    },
    /// The image name does not fit the 32-byte header field.
    #[error("boot.scr image name {name:?} is longer than 32 bytes")]
    NameTooLong {
        /// The name.
        name: String,
    },
    /// An empty script.
    #[error("boot script is empty")]
    EmptyScript,
    /// The script does not fit the 32-bit size fields.
    #[error("boot script of {len} bytes is too large for a legacy image")]
    ScriptTooLarge {
        /// Script length.
        len: usize,
    },
    /// The image ends early.
    #[error("boot.scr truncated: {what} needs {need} bytes, {have} present")]
    Truncated {
        /// Which part is short.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Bytes follow the declared data.
    #[error("boot.scr has {extra} bytes after the declared data size")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// Not a legacy image.
    #[error("boot.scr bad magic {found:#010x}, expected 0x27051956")]
    BadMagic {
        /// The magic found.
        found: u32,
    },
    /// Header CRC mismatch.
    #[error("boot.scr header CRC {stored:#010x} does not match computed {computed:#010x}")]
    HeaderCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// Data CRC mismatch.
    #[error("boot.scr data CRC {stored:#010x} does not match computed {computed:#010x}")]
    DataCrc {
        /// CRC in the header.
        stored: u32,
        /// CRC computed.
        computed: u32,
    },
    /// The image is not of type script.
    #[error("boot.scr has image type {image_type}, expected 6 (script)")]
    NotAScript {
        /// The type code.
        image_type: u8,
    },
    /// The image is compressed.
    #[error("boot.scr has compression {compression}, only 0 (none) is supported")]
    Compressed {
        /// The compression code.
        compression: u8,
    },
    /// Unknown architecture code.
    #[error("boot.scr has unknown architecture code {code}")]
    UnknownArch {
        /// The code.
        code: u8,
    },
    /// The multi-file size table is not a single-script table.
    #[error("boot.scr size table: {0}")]
    SizeTable(String),
    /// `SOURCE_DATE_EPOCH` is not a 32-bit number of seconds.
    #[error("SOURCE_DATE_EPOCH={value:?} is not a number of seconds that fits 32 bits")]
    SourceDateEpoch {
        /// The variable's value.
        value: String,
    },
}

fn known_names() -> String {
    TEMPLATE_VARIABLES
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders `template` with `params` and packs it as `boot.scr` (arm64, `name`, `timestamp`).
pub fn build_boot_scr(
    template: &str,
    params: &BootScriptParams,
    name: &str,
    timestamp: u32,
) -> Result<Vec<u8>, ScriptError> {
    let script = params.render(template)?;
    pack_script(script.as_bytes(), name, Arch::Arm64, timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = include_str!("../../../overlays/common/u-boot/boot.cmd");

    #[test]
    fn overlay_template_renders_for_both_presets() {
        for params in [
            BootScriptParams::qemu_arm64_virt(),
            BootScriptParams::raspberry_pi(),
        ] {
            let script = params.render(TEMPLATE).unwrap();
            assert!(!script.contains("@SLOT"), "{script}");
            assert!(script.contains("basalt.slot=${basalt_slot}"));
            assert!(script.contains("setexpr BOOT_A_LEFT ${BOOT_A_LEFT} - 1"));
        }
    }

    #[test]
    fn build_round_trips_through_parse() {
        let params = BootScriptParams::qemu_arm64_virt();
        let image = build_boot_scr(TEMPLATE, &params, DEFAULT_IMAGE_NAME, 1234).unwrap();
        let parsed = parse_script_image(&image).unwrap();
        assert_eq!(parsed.name, DEFAULT_IMAGE_NAME);
        assert_eq!(parsed.timestamp, 1234);
        assert_eq!(
            String::from_utf8(parsed.script).unwrap(),
            params.render(TEMPLATE).unwrap()
        );
    }
}
