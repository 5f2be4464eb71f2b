//! `boot.cmd` templates: `@NAME@` placeholders from a fixed set, filled from
//! [`BootScriptParams`].
//!
//! A placeholder is `@` + letters, digits or `_` + `@` on one line. A placeholder whose name
//! is not in [`TEMPLATE_VARIABLES`] is an error, and so is a known one without a value; an
//! `@` that does not start such a token is copied unchanged. Values are substituted
//! verbatim (no re-scan) after a check that they cannot break the U-Boot hush syntax: no
//! control characters, quotes, backslashes or `;`, and no white space in file names.

use std::collections::BTreeMap;

use super::ScriptError;

/// Every placeholder a template may use, with what it holds.
pub const TEMPLATE_VARIABLES: &[(&str, &str)] = &[
    (
        "DEVTYPE",
        "U-Boot block interface of the boot disk: mmc, virtio, usb, scsi or nvme",
    ),
    ("DEVNUM", "U-Boot device number of the boot disk (hex)"),
    (
        "BOOT_PART",
        "partition number of BOOT (hex, as U-Boot parses it)",
    ),
    ("SLOT_A_PART", "partition number of SYSTEM-A (hex)"),
    ("SLOT_B_PART", "partition number of SYSTEM-B (hex)"),
    ("KERNEL", "kernel image path inside a slot (arm64 `Image`)"),
    ("INITRD", "initramfs path inside a slot"),
    (
        "DTB",
        "device tree path inside a slot; empty to use U-Boot's own (${fdtcontroladdr})",
    ),
    ("CONSOLE", "value of console= on the kernel command line"),
    ("EXTRA_ARGS", "further kernel arguments (may be empty)"),
    (
        "SLOT_ENV",
        "text env file inside a slot that sets basalt_roothash (see render_slot_env)",
    ),
    (
        "ENV_MODE",
        "how the A/B variables persist: `saveenv` or `file` (env import/export + fatwrite)",
    ),
    (
        "ENV_FILE",
        "env file name on BOOT in `file` mode (empty in `saveenv` mode)",
    ),
    (
        "ENV_SIZE",
        "env size in `file` mode (hex, e.g. 0x4000; 0 in `saveenv` mode)",
    ),
    (
        "KERNEL_ADDR",
        "kernel load address; also scratch for env files (default ${kernel_addr_r})",
    ),
    (
        "FDT_ADDR",
        "device tree load address (default ${fdt_addr_r})",
    ),
    (
        "RAMDISK_ADDR",
        "initramfs load address (default ${ramdisk_addr_r})",
    ),
    (
        "BOOT_TRIES",
        "attempts given to both slots when no slot has any left (1..9)",
    ),
];

/// The U-Boot block interface of the boot disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceType {
    /// SD card or eMMC (`mmc`).
    Mmc,
    /// virtio-blk disk, e.g. QEMU `virt` (`virtio`).
    Virtio,
    /// USB mass storage (`usb`).
    Usb,
    /// SCSI/SATA (`scsi`).
    Scsi,
    /// NVMe (`nvme`).
    Nvme,
}

impl DeviceType {
    /// The interface name U-Boot commands take.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceType::Mmc => "mmc",
            DeviceType::Virtio => "virtio",
            DeviceType::Usb => "usb",
            DeviceType::Scsi => "scsi",
            DeviceType::Nvme => "nvme",
        }
    }
}

/// Where the boot script persists `BOOT_ORDER`/`BOOT_A_LEFT`/`BOOT_B_LEFT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvStorage {
    /// U-Boot manages its environment itself (Raspberry Pi: `uboot.env` on the FAT BOOT
    /// partition, loaded before the script runs); the script calls `saveenv`.
    SaveEnv,
    /// The script keeps the variables in a file on BOOT: it loads it with `fatload` +
    /// `env import -c` (only the three A/B variables) and saves it with `env export -c -s size`
    /// + `fatwrite` (QEMU `virt`, whose U-Boot keeps its own environment in flash).
    FatFile {
        /// File name on BOOT, e.g. `uboot.env`.
        file_name: String,
        /// Environment size in bytes (the file is exactly this long; CRC32 + data + padding).
        size: u32,
    },
}

/// Where the script loads the kernel, device tree and initramfs: U-Boot variables such as
/// `${kernel_addr_r}` or hex addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadAddresses {
    /// Kernel (`booti` needs a 2 MiB aligned address to avoid a relocation); also scratch
    /// space for the env files, which are read before the kernel.
    pub kernel: String,
    /// Device tree.
    pub fdt: String,
    /// Initramfs.
    pub ramdisk: String,
}

impl LoadAddresses {
    /// U-Boot's own `${kernel_addr_r}`, `${fdt_addr_r}`, `${ramdisk_addr_r}`.
    pub fn uboot_defaults() -> Self {
        LoadAddresses {
            kernel: "${kernel_addr_r}".to_string(),
            fdt: "${fdt_addr_r}".to_string(),
            ramdisk: "${ramdisk_addr_r}".to_string(),
        }
    }
}

/// The values of a board's boot script (see [`TEMPLATE_VARIABLES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootScriptParams {
    /// Block interface of the boot disk.
    pub device_type: DeviceType,
    /// Device number on that interface.
    pub device_number: u32,
    /// Partition number of BOOT.
    pub boot_partition: u32,
    /// Partition number of SYSTEM-A.
    pub slot_a_partition: u32,
    /// Partition number of SYSTEM-B.
    pub slot_b_partition: u32,
    /// Kernel path inside a slot.
    pub kernel: String,
    /// Initramfs path inside a slot.
    pub initrd: String,
    /// Device tree path inside a slot; `None` boots with U-Boot's own device tree.
    pub dtb: Option<String>,
    /// `console=` value.
    pub console: String,
    /// Further kernel arguments.
    pub extra_args: String,
    /// Text env file inside a slot carrying `basalt_roothash`.
    pub slot_env_file: String,
    /// How the A/B variables persist.
    pub env_storage: EnvStorage,
    /// Load addresses.
    pub addresses: LoadAddresses,
    /// Attempts both slots get back when none has any left (1..=9: U-Boot's `setexpr`
    /// prints hex and `test -gt` reads decimal, so counters must stay single digits).
    pub boot_tries: u32,
}

/// Default file name of the per-slot env file holding the verity root hash.
pub const DEFAULT_SLOT_ENV_FILE: &str = "basalt/slot.env";

impl BootScriptParams {
    /// QEMU `virt` (arm64) with Debian's `qemu_arm64` U-Boot: disk `virtio 0`, BOOT = 1,
    /// SYSTEM-A = 2, SYSTEM-B = 3, QEMU's device tree, env in `uboot.env` (16 KiB) on BOOT.
    pub fn qemu_arm64_virt() -> Self {
        BootScriptParams {
            device_type: DeviceType::Virtio,
            device_number: 0,
            boot_partition: 1,
            slot_a_partition: 2,
            slot_b_partition: 3,
            kernel: "Image".to_string(),
            initrd: "initrd.img".to_string(),
            dtb: None,
            console: "ttyAMA0,115200".to_string(),
            extra_args: String::new(),
            slot_env_file: DEFAULT_SLOT_ENV_FILE.to_string(),
            env_storage: EnvStorage::FatFile {
                file_name: "uboot.env".to_string(),
                size: 0x4000,
            },
            addresses: LoadAddresses::uboot_defaults(),
            boot_tries: 3,
        }
    }

    /// Raspberry Pi 3/4 with Debian's `rpi_arm64` U-Boot: SD card `mmc 0`, BOOT = 1,
    /// SYSTEM-A = 2, SYSTEM-B = 3, device tree `dtbs/${fdtfile}` from the slot (U-Boot sets
    /// `fdtfile` per board, e.g. `broadcom/bcm2711-rpi-4-b.dtb`), U-Boot's own `uboot.env`.
    ///
    /// The load addresses move away from U-Boot's rpi defaults (kernel at `0x80000`, device
    /// tree at `0x2600000`): a Debian arm64 `Image` is ~35 MiB and would overwrite them. Here
    /// the kernel has 94 MiB from 2 MiB, the device tree sits at 94 MiB, the initramfs at 96 MiB.
    pub fn raspberry_pi() -> Self {
        BootScriptParams {
            device_type: DeviceType::Mmc,
            device_number: 0,
            boot_partition: 1,
            slot_a_partition: 2,
            slot_b_partition: 3,
            kernel: "Image".to_string(),
            initrd: "initrd.img".to_string(),
            dtb: Some("dtbs/${fdtfile}".to_string()),
            console: "ttyS1,115200".to_string(),
            extra_args: String::new(),
            slot_env_file: DEFAULT_SLOT_ENV_FILE.to_string(),
            env_storage: EnvStorage::SaveEnv,
            addresses: LoadAddresses {
                kernel: "0x00200000".to_string(),
                fdt: "0x05e00000".to_string(),
                ramdisk: "0x06000000".to_string(),
            },
            boot_tries: 3,
        }
    }

    /// The value of every template variable, checked.
    pub fn variables(&self) -> Result<BTreeMap<&'static str, String>, ScriptError> {
        let mut vars = BTreeMap::new();
        vars.insert("DEVTYPE", self.device_type.as_str().to_string());
        vars.insert("DEVNUM", format!("{:x}", self.device_number));
        for (name, part) in [
            ("BOOT_PART", self.boot_partition),
            ("SLOT_A_PART", self.slot_a_partition),
            ("SLOT_B_PART", self.slot_b_partition),
        ] {
            if part == 0 {
                return Err(reject(name, "0", "partition numbers start at 1"));
            }
            vars.insert(name, format!("{part:x}"));
        }
        let parts = [
            self.boot_partition,
            self.slot_a_partition,
            self.slot_b_partition,
        ];
        if parts[0] == parts[1] || parts[0] == parts[2] || parts[1] == parts[2] {
            return Err(reject(
                "SLOT_A_PART",
                &format!("{parts:?}"),
                "BOOT, SYSTEM-A and SYSTEM-B must be different partitions",
            ));
        }
        vars.insert("KERNEL", file_value("KERNEL", &self.kernel)?);
        vars.insert("INITRD", file_value("INITRD", &self.initrd)?);
        let dtb = match &self.dtb {
            Some(dtb) => file_value("DTB", dtb)?,
            None => String::new(),
        };
        vars.insert("DTB", dtb);
        vars.insert("CONSOLE", file_value("CONSOLE", &self.console)?);
        vars.insert("EXTRA_ARGS", text_value("EXTRA_ARGS", &self.extra_args)?);
        vars.insert("SLOT_ENV", file_value("SLOT_ENV", &self.slot_env_file)?);
        match &self.env_storage {
            EnvStorage::SaveEnv => {
                vars.insert("ENV_MODE", "saveenv".to_string());
                vars.insert("ENV_FILE", String::new());
                vars.insert("ENV_SIZE", "0".to_string());
            }
            EnvStorage::FatFile { file_name, size } => {
                if !(16..=0x0100_0000).contains(size) {
                    return Err(reject(
                        "ENV_SIZE",
                        &size.to_string(),
                        "must be between 16 bytes and 16 MiB",
                    ));
                }
                vars.insert("ENV_MODE", "file".to_string());
                vars.insert("ENV_FILE", file_value("ENV_FILE", file_name)?);
                vars.insert("ENV_SIZE", format!("{size:#x}"));
            }
        }
        vars.insert(
            "KERNEL_ADDR",
            file_value("KERNEL_ADDR", &self.addresses.kernel)?,
        );
        vars.insert("FDT_ADDR", file_value("FDT_ADDR", &self.addresses.fdt)?);
        vars.insert(
            "RAMDISK_ADDR",
            file_value("RAMDISK_ADDR", &self.addresses.ramdisk)?,
        );
        if !(1..=9).contains(&self.boot_tries) {
            return Err(reject(
                "BOOT_TRIES",
                &self.boot_tries.to_string(),
                "must be 1..9 (setexpr prints hex, test -gt reads decimal)",
            ));
        }
        vars.insert("BOOT_TRIES", self.boot_tries.to_string());
        Ok(vars)
    }

    /// Renders `template` with these values.
    pub fn render(&self, template: &str) -> Result<String, ScriptError> {
        render_template(template, &self.variables()?)
    }
}

fn reject(name: &str, value: &str, reason: &str) -> ScriptError {
    ScriptError::ValueRejected {
        name: name.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Free text (kernel arguments): nothing that ends a hush string or command.
fn text_value(name: &str, value: &str) -> Result<String, ScriptError> {
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() || matches!(c, '"' | '\'' | '`' | '\\' | ';'))
    {
        return Err(reject(
            name,
            value,
            &format!("character {c:?} would break the boot script"),
        ));
    }
    Ok(value.to_string())
}

/// A single word (file name, console): non-empty text without white space.
fn file_value(name: &str, value: &str) -> Result<String, ScriptError> {
    if value.is_empty() {
        return Err(reject(name, value, "must not be empty"));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(reject(name, value, "must not contain white space"));
    }
    text_value(name, value)
}

fn is_known(name: &str) -> bool {
    TEMPLATE_VARIABLES.iter().any(|(known, _)| *known == name)
}

/// Replaces every `@NAME@` in `template` with `values[NAME]`.
///
/// Errors name the placeholder and its 1-based line: [`ScriptError::UnknownPlaceholder`] when
/// `NAME` is not in [`TEMPLATE_VARIABLES`], [`ScriptError::UnreplacedPlaceholder`] when it is
/// but `values` has no entry for it.
pub fn render_template(
    template: &str,
    values: &BTreeMap<&str, String>,
) -> Result<String, ScriptError> {
    let mut out = String::with_capacity(template.len() + 256);
    for (index, line) in template.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find('@') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let token_len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if token_len > 0 && after[token_len..].starts_with('@') {
                let name = &after[..token_len];
                if !is_known(name) {
                    return Err(ScriptError::UnknownPlaceholder {
                        name: name.to_string(),
                        line: index + 1,
                    });
                }
                let value = values
                    .get(name)
                    .ok_or_else(|| ScriptError::UnreplacedPlaceholder {
                        name: name.to_string(),
                        line: index + 1,
                    })?;
                out.push_str(value);
                rest = &after[token_len + 1..];
            } else {
                out.push('@');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// The per-slot env file (`SLOT_ENV`, imported with `env import -t`) carrying the slot's
/// dm-verity root hash as `basalt_roothash`. `roothash` must be hex.
pub fn render_slot_env(roothash: &str) -> Result<String, ScriptError> {
    if roothash.is_empty() || !roothash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(reject(
            "basalt_roothash",
            roothash,
            "must be a non-empty hex string",
        ));
    }
    Ok(format!("basalt_roothash={roothash}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn substitutes_known_placeholders() {
        let out = render_template(
            "load @DEVTYPE@ @DEVNUM@:@SLOT_A_PART@ x\nmail me@example.org @ 3\n",
            &vars(&[("DEVTYPE", "mmc"), ("DEVNUM", "0"), ("SLOT_A_PART", "2")]),
        )
        .unwrap();
        assert_eq!(out, "load mmc 0:2 x\nmail me@example.org @ 3\n");
    }

    #[test]
    fn unknown_placeholder_is_named_with_its_line() {
        let err = render_template("echo\necho @SLOT_C_PART@\n", &vars(&[])).unwrap_err();
        assert!(
            matches!(&err, ScriptError::UnknownPlaceholder { name, line: 2 } if name == "SLOT_C_PART"),
            "{err:?}"
        );
        assert!(err.to_string().contains("@SLOT_C_PART@"), "{err}");
    }

    #[test]
    fn known_placeholder_without_value_is_unreplaced() {
        let err = render_template("@KERNEL@", &vars(&[])).unwrap_err();
        assert!(
            matches!(&err, ScriptError::UnreplacedPlaceholder { name, line: 1 } if name == "KERNEL"),
            "{err:?}"
        );
    }

    #[test]
    fn values_are_not_rescanned() {
        let out = render_template("@EXTRA_ARGS@", &vars(&[("EXTRA_ARGS", "@KERNEL@")])).unwrap();
        assert_eq!(out, "@KERNEL@");
    }

    #[test]
    fn presets_produce_every_variable() {
        for params in [
            BootScriptParams::qemu_arm64_virt(),
            BootScriptParams::raspberry_pi(),
        ] {
            let vars = params.variables().unwrap();
            for (name, _) in TEMPLATE_VARIABLES {
                assert!(vars.contains_key(name), "{name} missing");
            }
        }
    }

    #[test]
    fn partition_numbers_are_hex() {
        let mut params = BootScriptParams::qemu_arm64_virt();
        params.slot_b_partition = 10;
        params.device_number = 11;
        let vars = params.variables().unwrap();
        assert_eq!(vars["SLOT_B_PART"], "a");
        assert_eq!(vars["DEVNUM"], "b");
        assert_eq!(vars["ENV_SIZE"], "0x4000");
    }

    #[test]
    fn dangerous_values_are_rejected() {
        let mut params = BootScriptParams::qemu_arm64_virt();
        params.extra_args = "quiet\"; reset".to_string();
        assert!(matches!(
            params.variables(),
            Err(ScriptError::ValueRejected { name, .. }) if name == "EXTRA_ARGS"
        ));
        let mut params = BootScriptParams::qemu_arm64_virt();
        params.kernel = "my Image".to_string();
        assert!(params.variables().is_err());
        let mut params = BootScriptParams::qemu_arm64_virt();
        params.boot_tries = 10;
        assert!(params.variables().is_err());
        let mut params = BootScriptParams::qemu_arm64_virt();
        params.slot_b_partition = 2;
        assert!(params.variables().is_err());
    }

    #[test]
    fn slot_env_holds_the_root_hash() {
        assert_eq!(
            render_slot_env("00ff").unwrap(),
            "basalt_roothash=00ff\n".to_string()
        );
        assert!(render_slot_env("xyz").is_err());
        assert!(render_slot_env("").is_err());
    }
}
