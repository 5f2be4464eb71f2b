//! Semantic checks of a parsed board, collecting every problem instead of stopping at the
//! first one.
//!
//! Rules (each violation is one [`Problem`] naming the field):
//! - names and paths: board name `[a-z0-9_-]`; Debian package names; package paths absolute,
//!   destinations relative, neither with `..`, `//` or whitespace; no two files with one
//!   destination on BOOT.
//! - console: `tty<name><n>[,<baud>[<parity><bits>]]`; kernel arguments without whitespace,
//!   without `console=` (the console field is the one console) and without `basalt.*`.
//! - layout: exactly BOOT, SYSTEM-A, SYSTEM-B, STATE, DATA in that order; BOOT vfat ≥ 32 MiB;
//!   the slots equal in size and filesystem, ≥ 64 MiB; STATE and DATA ext4; only DATA grows,
//!   and it must.
//! - kernel: a release (given or derived from `linux-image-*`), a plain slot file name,
//!   `.dtb` paths (none on x86_64), early modules including `squashfs` and `dm-verity`,
//!   no duplicates (with `-`/`_` equivalence).
//! - family: `u-boot-script` needs `[uboot]` and aarch64; `uefi-systemd-boot` needs `[efi]`
//!   with the removable-media loader path and GPT; `rpi-tryboot` needs aarch64, firmware and
//!   vfat slots (the Pi firmware reads only FAT); sections of other families are errors.
//! - U-Boot env: `fat-file` needs `file`, `spi-flash` needs `offset`; a script-managed env
//!   must be a file; size a multiple of 512 between 1 KiB and 16 MiB.
//! - QEMU: the emulator matches the arch; `-bios` excludes pflash; `tested-in-qemu` needs it.
//!
//! `[extensions]` holds only switches (`containers = false`); their names and types are
//! checked by the strict decoding, so no rule here concerns them.

use crate::model::{
    Arch, Board, BootloaderFamily, EnvManager, EnvStorageKind, Filesystem, PackageFile,
    PartitionRole, PartitionTable, SupportLevel,
};
use crate::syntax::{is_address, is_board_name, is_console, is_package_name, is_relative_path};
use std::collections::BTreeSet;
use std::fmt;

/// One problem found in a board: the field it concerns and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `disk.partitions[1].size_mib`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Smallest BOOT partition (MiB): room for FAT32 and the firmware.
pub const MIN_BOOT_MIB: u64 = 32;
/// Smallest slot partition (MiB).
pub const MIN_SLOT_MIB: u64 = 64;
/// Smallest STATE and DATA partitions (MiB).
pub const MIN_STATE_MIB: u64 = 16;

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            message: message.into(),
        });
    }
}

/// Checks `board`; returns every problem found (empty when the board is valid).
pub fn check(board: &Board) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };
    check_identity(&mut c, board);
    check_boot(&mut c, board);
    check_disk(&mut c, board);
    check_kernel(&mut c, board);
    check_files(&mut c, board);
    check_family(&mut c, board);
    check_uboot(&mut c, board);
    check_qemu(&mut c, board);
    c.problems
}

fn check_identity(c: &mut Checker, b: &Board) {
    if !is_board_name(&b.name) {
        c.err(
            "name",
            format!(
                "{:?} is not a board name ([a-z0-9_-], 1-64 characters)",
                b.name
            ),
        );
    }
    if b.description.trim().is_empty() || b.description.contains('\n') {
        c.err("description", "must be one non-empty line");
    }
    if b.verified.trim().is_empty() {
        c.err("verified", "must say what was checked");
    }
}

fn check_boot(c: &mut Checker, b: &Board) {
    if !is_console(&b.boot.console) {
        c.err(
            "boot.console",
            format!(
                "{:?} is not a console (expected e.g. ttyS0,115200 or ttyAMA0,115200n8)",
                b.boot.console
            ),
        );
    }
    for (i, arg) in b.boot.kernel_args.iter().enumerate() {
        let field = format!("boot.kernel_args[{i}]");
        if arg.is_empty() || arg.chars().any(|ch| ch.is_whitespace() || ch == '"') {
            c.err(
                field,
                format!("{arg:?} must be one argument without spaces or quotes"),
            );
        } else if arg.starts_with("console=") {
            c.err(
                field,
                "console= belongs in boot.console (it must be the last console)",
            );
        } else if arg.starts_with("basalt.") {
            c.err(
                field,
                format!("{arg:?}: basalt.* arguments are set by the bootloader"),
            );
        }
    }
}

fn check_disk(c: &mut Checker, b: &Board) {
    let parts = &b.disk.partitions;
    let labels: Vec<PartitionRole> = parts.iter().map(|p| p.label).collect();
    if labels != PartitionRole::ALL {
        let got: Vec<&str> = labels.iter().map(|l| l.label()).collect();
        c.err(
            "disk.partitions",
            format!(
                "must be BOOT, SYSTEM-A, SYSTEM-B, STATE, DATA in this order, found [{}]",
                got.join(", ")
            ),
        );
    }
    for (i, p) in parts.iter().enumerate() {
        let field = format!("disk.partitions[{i}]");
        let label = p.label.label();
        let (min, fs) = match p.label {
            PartitionRole::Boot => (MIN_BOOT_MIB, Some(Filesystem::Vfat)),
            PartitionRole::SystemA | PartitionRole::SystemB => (MIN_SLOT_MIB, None),
            PartitionRole::State | PartitionRole::Data => (MIN_STATE_MIB, Some(Filesystem::Ext4)),
        };
        if p.size_mib < min {
            c.err(
                format!("{field}.size_mib"),
                format!("{label} is {} MiB, at least {min} MiB needed", p.size_mib),
            );
        }
        if let Some(fs) = fs
            && p.filesystem != fs
        {
            c.err(
                format!("{field}.filesystem"),
                format!(
                    "{label} must be {}, not {}",
                    fs.as_str(),
                    p.filesystem.as_str()
                ),
            );
        }
        if p.grow != (p.label == PartitionRole::Data) {
            c.err(
                format!("{field}.grow"),
                if p.grow {
                    format!("only DATA grows, not {label}")
                } else {
                    "DATA must grow (grow = true)".to_string()
                },
            );
        }
    }
    let a = parts.iter().find(|p| p.label == PartitionRole::SystemA);
    let bb = parts.iter().find(|p| p.label == PartitionRole::SystemB);
    if let (Some(a), Some(bb)) = (a, bb)
        && (a.size_mib != bb.size_mib || a.filesystem != bb.filesystem)
    {
        c.err(
            "disk.partitions",
            format!(
                "SYSTEM-A ({} MiB {}) and SYSTEM-B ({} MiB {}) must have the same size and filesystem",
                a.size_mib,
                a.filesystem.as_str(),
                bb.size_mib,
                bb.filesystem.as_str()
            ),
        );
    }
}

fn check_kernel(c: &mut Checker, b: &Board) {
    let k = &b.kernel;
    if !is_package_name(&k.package) {
        c.err(
            "kernel.package",
            format!("{:?} is not a Debian package name", k.package),
        );
    }
    match &k.release {
        Some(r) if r.is_empty() || r.contains(['/', ' ']) => {
            c.err("kernel.release", format!("{r:?} is not a kernel release"));
        }
        None if !k.package.starts_with("linux-image-") => c.err(
            "kernel.release",
            format!(
                "missing, and it cannot be derived from package {:?} (not linux-image-*)",
                k.package
            ),
        ),
        _ => {}
    }
    if let Some(image) = &k.image {
        check_package_path(c, "kernel.image", image);
    }
    if k.slot_file.is_empty() || k.slot_file.contains(['/', '\\']) || k.slot_file.starts_with('.') {
        c.err(
            "kernel.slot_file",
            format!("{:?} must be a plain file name", k.slot_file),
        );
    }
    if b.arch == Arch::X86_64 && !k.dtbs.is_empty() {
        c.err("kernel.dtbs", "x86_64 boards have no device trees");
    }
    let mut seen = BTreeSet::new();
    for (i, dtb) in k.dtbs.iter().enumerate() {
        let field = format!("kernel.dtbs[{i}]");
        if !is_relative_path(dtb) || !dtb.ends_with(".dtb") {
            c.err(
                field,
                format!(
                    "{dtb:?} must be a relative .dtb path such as broadcom/bcm2711-rpi-4-b.dtb"
                ),
            );
        } else if !seen.insert(dtb.as_str()) {
            c.err(field, format!("{dtb} is listed twice"));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, m) in k.early_modules.iter().enumerate() {
        let field = format!("kernel.early_modules[{i}]");
        if m.is_empty()
            || !m
                .bytes()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == b'_' || ch == b'-')
        {
            c.err(
                field,
                format!("{m:?} is not a module name (no .ko, no path: e.g. virtio_blk)"),
            );
        } else if !seen.insert(m.replace('-', "_")) {
            c.err(
                field,
                format!("{m} is listed twice ('-' and '_' are the same)"),
            );
        }
    }
    for needed in ["squashfs", "dm_verity"] {
        if !seen.contains(needed) {
            c.err(
                "kernel.early_modules",
                format!("must include {needed}: the root is a squashfs under dm-verity"),
            );
        }
    }
}

fn check_files(c: &mut Checker, b: &Board) {
    let mut dests: BTreeSet<String> = BTreeSet::new();
    let mut files: Vec<(String, &PackageFile)> = b
        .firmware
        .iter()
        .enumerate()
        .map(|(i, f)| (format!("firmware[{i}]"), f))
        .collect();
    if let Some(bin) = b.uboot.as_ref().and_then(|u| u.binary.as_ref()) {
        files.push(("uboot.binary".to_string(), bin));
    }
    if let Some(efi) = &b.efi {
        files.push(("efi.loader".to_string(), &efi.loader));
    }
    let mut rootfs_dests = BTreeSet::new();
    for (i, f) in b.linux_firmware.iter().enumerate() {
        let field = format!("linux_firmware[{i}]");
        if !is_package_name(&f.package) {
            c.err(
                format!("{field}.package"),
                format!("{:?} is not a Debian package name", f.package),
            );
        }
        check_package_path(c, &format!("{field}.path"), &f.path);
        if !is_relative_path(&f.dest) {
            c.err(
                format!("{field}.dest"),
                format!("{:?} must be a path relative to /lib/firmware", f.dest),
            );
        } else if !rootfs_dests.insert(f.dest.as_str()) {
            c.err(
                format!("{field}.dest"),
                format!("{} is listed twice", f.dest),
            );
        }
    }
    for (field, f) in files {
        if !is_package_name(&f.package) {
            c.err(
                format!("{field}.package"),
                format!("{:?} is not a Debian package name", f.package),
            );
        }
        check_package_path(c, &format!("{field}.path"), &f.path);
        if !is_relative_path(&f.dest) {
            c.err(
                format!("{field}.dest"),
                format!("{:?} must be a relative path on BOOT", f.dest),
            );
        } else if !dests.insert(f.dest.to_ascii_lowercase()) {
            // FAT is case-insensitive: START4.ELF and start4.elf are one file.
            c.err(
                format!("{field}.dest"),
                format!("{} is already written by another entry", f.dest),
            );
        }
    }
    if let Some(env_file) = b.uboot.as_ref().and_then(|u| u.env.file.as_ref())
        && dests.contains(&env_file.to_ascii_lowercase())
    {
        c.err(
            "uboot.env.file",
            format!("{env_file} is also written as a package file"),
        );
    }
}

fn check_package_path(c: &mut Checker, field: &str, path: &str) {
    match path.strip_prefix('/') {
        Some(rest) if is_relative_path(rest) => {}
        _ => c.err(
            field,
            format!("{path:?} must be an absolute path inside the package, e.g. /usr/lib/…"),
        ),
    }
}

fn check_family(c: &mut Checker, b: &Board) {
    let family = b.boot.family;
    let name = family.as_str();
    let has_uboot = b.uboot.is_some();
    let has_efi = b.efi.is_some();
    match family {
        BootloaderFamily::UBootScript => {
            if !has_uboot {
                c.err("uboot", format!("{name} boards need a [uboot] section"));
            }
            if b.arch != Arch::Aarch64 {
                c.err("arch", format!("{name} is supported on aarch64 only"));
            }
        }
        BootloaderFamily::UefiSystemdBoot => {
            if let Some(efi) = &b.efi {
                let want = format!("EFI/BOOT/{}", b.arch.efi_removable_loader());
                if !efi.loader.dest.eq_ignore_ascii_case(&want) {
                    c.err(
                        "efi.loader.dest",
                        format!(
                            "{} must be the removable-media path {want}",
                            efi.loader.dest
                        ),
                    );
                }
            } else {
                c.err("efi", format!("{name} boards need an [efi] section"));
            }
            if b.disk.table != PartitionTable::Gpt {
                c.err("disk.table", format!("{name} needs a GPT partition table"));
            }
        }
        BootloaderFamily::RpiTryboot => {
            if b.arch != Arch::Aarch64 {
                c.err("arch", format!("{name} is a Raspberry Pi (aarch64) family"));
            }
            if b.firmware.is_empty() {
                c.err(
                    "firmware",
                    format!("{name} needs the Raspberry Pi firmware files"),
                );
            }
            for p in &b.disk.partitions {
                if matches!(p.label, PartitionRole::SystemA | PartitionRole::SystemB)
                    && p.filesystem != Filesystem::Vfat
                {
                    c.err(
                        "disk.partitions",
                        format!(
                            "{name}: {} must be vfat, the Pi firmware reads only FAT",
                            p.label.label()
                        ),
                    );
                }
            }
        }
    }
    if has_uboot && family != BootloaderFamily::UBootScript {
        c.err("uboot", format!("a {name} board has no [uboot] section"));
    }
    if has_efi && family != BootloaderFamily::UefiSystemdBoot {
        c.err("efi", format!("a {name} board has no [efi] section"));
    }
}

fn check_uboot(c: &mut Checker, b: &Board) {
    let Some(u) = &b.uboot else { return };
    let env = &u.env;
    match env.storage {
        EnvStorageKind::FatFile => {
            match &env.file {
                Some(f) if !f.is_empty() && !f.contains(['/', '\\']) => {}
                Some(f) => c.err("uboot.env.file", format!("{f:?} must be a plain file name")),
                None => c.err("uboot.env.file", "fat-file storage needs the file name"),
            }
            if env.offset.is_some() {
                c.err("uboot.env.offset", "only spi-flash storage has an offset");
            }
        }
        EnvStorageKind::SpiFlash => {
            if env.offset.is_none() {
                c.err("uboot.env.offset", "spi-flash storage needs the offset");
            }
            if env.file.is_some() {
                c.err("uboot.env.file", "only fat-file storage has a file");
            }
            if env.managed_by == EnvManager::BootScript {
                c.err(
                    "uboot.env.managed_by",
                    "a boot-script managed env must be a fat-file",
                );
            }
        }
    }
    if env.size < 1024 || env.size > 16 << 20 || env.size % 512 != 0 {
        c.err(
            "uboot.env.size",
            format!(
                "{:#x} must be a multiple of 512 between 0x400 and 0x1000000",
                env.size
            ),
        );
    }
    if let Some(a) = &u.load_addresses {
        for (field, v) in [
            ("kernel", &a.kernel),
            ("fdt", &a.fdt),
            ("ramdisk", &a.ramdisk),
        ] {
            if !is_address(v) {
                c.err(
                    format!("uboot.load_addresses.{field}"),
                    format!("{v:?} must be a hex address (0x…) or a ${{variable}}"),
                );
            }
        }
    }
}

fn check_qemu(c: &mut Checker, b: &Board) {
    match &b.qemu {
        None if b.support == SupportLevel::TestedInQemu => c.err(
            "qemu",
            "a tested-in-qemu board needs a [qemu] section saying how it runs",
        ),
        None => {}
        Some(q) => {
            if q.binary != b.arch.qemu_binary() {
                c.err(
                    "qemu.binary",
                    format!(
                        "{} does not emulate {} (use {})",
                        q.binary,
                        b.arch.as_str(),
                        b.arch.qemu_binary()
                    ),
                );
            }
            if q.machine.trim().is_empty() {
                c.err("qemu.machine", "must not be empty");
            }
            if q.memory_mib < 128 {
                c.err(
                    "qemu.memory_mib",
                    format!("{} MiB is too little", q.memory_mib),
                );
            }
            if q.bios.is_some() && (q.pflash_code.is_some() || q.pflash_vars.is_some()) {
                c.err("qemu.bios", "-bios and pflash firmware exclude each other");
            }
            if q.pflash_vars.is_some() && q.pflash_code.is_none() {
                c.err("qemu.pflash_vars", "needs pflash_code");
            }
            for (field, v) in [
                ("qemu.bios", &q.bios),
                ("qemu.pflash_code", &q.pflash_code),
                ("qemu.pflash_vars", &q.pflash_vars),
            ] {
                if let Some(v) = v
                    && !v.starts_with('/')
                {
                    c.err(field, format!("{v:?} must be an absolute host path"));
                }
            }
            for (field, v) in [
                ("qemu.kernel_from_boot", &q.kernel_from_boot),
                ("qemu.dtb_from_boot", &q.dtb_from_boot),
            ] {
                if let Some(v) = v
                    && !is_relative_path(v)
                {
                    c.err(field, format!("{v:?} must be a relative path on BOOT"));
                }
            }
        }
    }
}
