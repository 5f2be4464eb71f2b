//! The typed shape of a board file.
//!
//! Every struct denies unknown fields, so a typo in a board file is a parse error that names
//! the field. Cross-field rules (layout order, bootloader family vs. sections, …) live in
//! [`crate::validate`], which reports every problem at once.
//!
//! Paths inside Debian packages are absolute (`/usr/lib/raspi-firmware/start4.elf`), as
//! `dpkg -c` shows them without the leading `.`; destinations on a partition are relative
//! (`start4.elf`, `EFI/BOOT/BOOTX64.EFI`).

use serde::Deserialize;

/// One board: everything the image composer and the flash tool need to know about it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// Board name (`[a-z0-9_-]`); equals the data file's name without `.toml`.
    pub name: String,
    /// One-line human description.
    pub description: String,
    /// CPU architecture of the board and of every binary in its image.
    pub arch: Arch,
    /// How well the board is supported (see [`SupportLevel`]).
    pub support: SupportLevel,
    /// Free text: what exactly was checked, how, and what was not.
    pub verified: String,
    /// Bootloader family, console and kernel command line.
    pub boot: BootConfig,
    /// Partition table and layout.
    pub disk: DiskLayout,
    /// Kernel package, kernel file in the slot, device trees, early modules.
    pub kernel: KernelConfig,
    /// Firmware and other files copied from packages onto the BOOT partition.
    #[serde(default)]
    pub firmware: Vec<PackageFile>,
    /// Linux firmware files (loaded by drivers at runtime) put into the slot's root
    /// filesystem; `dest` is relative to `/lib/firmware`.
    #[serde(default)]
    pub linux_firmware: Vec<PackageFile>,
    /// U-Boot: binary and environment storage (`u-boot-script` boards only).
    #[serde(default)]
    pub uboot: Option<UbootConfig>,
    /// UEFI loader (`uefi-systemd-boot` boards only).
    #[serde(default)]
    pub efi: Option<EfiConfig>,
    /// How to run the board under QEMU, when it can be emulated.
    #[serde(default)]
    pub qemu: Option<QemuConfig>,
    /// Optional parts of the system image (all on when the section is absent).
    #[serde(default)]
    pub extensions: Extensions,
}

/// Optional parts of a board's system image (`[extensions]`); each is on unless the board
/// turns it off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extensions {
    /// The container runtime in the root filesystem: containerd, its runc shim, runc and
    /// the libraries they load, from the pinned packages. Default `true`.
    #[serde(default = "enabled")]
    pub containers: bool,
}

impl Default for Extensions {
    /// Every extension on.
    fn default() -> Self {
        Extensions { containers: true }
    }
}

fn enabled() -> bool {
    true
}

/// CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Arch {
    /// 64-bit Arm (`arm64` in Debian).
    #[serde(rename = "aarch64")]
    Aarch64,
    /// 64-bit x86 (`amd64` in Debian).
    #[serde(rename = "x86_64")]
    X86_64,
}

impl Arch {
    /// The Rust/GNU name: `aarch64` or `x86_64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::X86_64 => "x86_64",
        }
    }

    /// The Debian architecture name: `arm64` or `amd64`.
    pub fn debian_arch(self) -> &'static str {
        match self {
            Arch::Aarch64 => "arm64",
            Arch::X86_64 => "amd64",
        }
    }

    /// The QEMU system emulator for this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::Aarch64 => "qemu-system-aarch64",
            Arch::X86_64 => "qemu-system-x86_64",
        }
    }

    /// File name of the UEFI removable-media loader (`EFI/BOOT/<name>`).
    pub fn efi_removable_loader(self) -> &'static str {
        match self {
            Arch::Aarch64 => "BOOTAA64.EFI",
            Arch::X86_64 => "BOOTX64.EFI",
        }
    }
}

/// How well a board is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SupportLevel {
    /// The boot chain of this board runs under QEMU (see the board's `verified` note).
    TestedInQemu,
    /// Images build; the boot was not run end to end.
    Builds,
    /// Data is believed right but known gaps remain (see `verified`).
    Experimental,
}

impl SupportLevel {
    /// The name used in board files.
    pub fn as_str(self) -> &'static str {
        match self {
            SupportLevel::TestedInQemu => "tested-in-qemu",
            SupportLevel::Builds => "builds",
            SupportLevel::Experimental => "experimental",
        }
    }
}

/// Bootloader family, console and kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// How the board boots a slot.
    pub family: BootloaderFamily,
    /// Kernel console, the value of `console=` (e.g. `ttyAMA0,115200`). It is the last
    /// `console=` on the command line, so it becomes `/dev/console`.
    pub console: String,
    /// Further kernel arguments, one per element, without `console=` and without the
    /// `basalt.*` arguments the bootloader adds.
    #[serde(default)]
    pub kernel_args: Vec<String>,
}

/// Bootloader family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootloaderFamily {
    /// U-Boot runs `boot.scr` from BOOT, which picks the slot (A/B with boot counting).
    UBootScript,
    /// UEFI firmware runs systemd-boot from the ESP, one loader entry per slot.
    UefiSystemdBoot,
    /// Raspberry Pi firmware boots the slot itself (`autoboot.txt`, `tryboot`).
    RpiTryboot,
}

impl BootloaderFamily {
    /// The name used in board files.
    pub fn as_str(self) -> &'static str {
        match self {
            BootloaderFamily::UBootScript => "u-boot-script",
            BootloaderFamily::UefiSystemdBoot => "uefi-systemd-boot",
            BootloaderFamily::RpiTryboot => "rpi-tryboot",
        }
    }
}

/// Partition table and partitions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLayout {
    /// Partition table type.
    pub table: PartitionTable,
    /// Partitions in disk order: BOOT, SYSTEM-A, SYSTEM-B, STATE, DATA.
    pub partitions: Vec<Partition>,
}

/// Partition table type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionTable {
    /// GUID partition table.
    Gpt,
    /// DOS/MBR table: partitions 1-3 primary, the rest logical in an extended partition 4
    /// (so STATE is partition 5 and DATA partition 6).
    Mbr,
}

impl PartitionTable {
    /// The name used in board files.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionTable::Gpt => "gpt",
            PartitionTable::Mbr => "mbr",
        }
    }
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    /// Role and label.
    pub label: PartitionRole,
    /// Size in MiB in the image (for a growing partition: its size before it grows).
    pub size_mib: u64,
    /// Filesystem the partition carries.
    pub filesystem: Filesystem,
    /// Whether the partition grows to fill the device on first boot (DATA only).
    #[serde(default)]
    pub grow: bool,
}

/// The five partition roles of a Basalt disk; also their labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum PartitionRole {
    /// Shared boot partition (FAT): firmware, U-Boot, boot script and env, or the ESP.
    #[serde(rename = "BOOT")]
    Boot,
    /// Slot A: kernel, DTBs, initramfs, squashfs root with its dm-verity hash tree.
    #[serde(rename = "SYSTEM-A")]
    SystemA,
    /// Slot B, same shape as slot A.
    #[serde(rename = "SYSTEM-B")]
    SystemB,
    /// Machine config, secrets, audit log, upgrade progress.
    #[serde(rename = "STATE")]
    State,
    /// Workloads and logs; grows on first boot.
    #[serde(rename = "DATA")]
    Data,
}

impl PartitionRole {
    /// All roles in disk order.
    pub const ALL: [PartitionRole; 5] = [
        PartitionRole::Boot,
        PartitionRole::SystemA,
        PartitionRole::SystemB,
        PartitionRole::State,
        PartitionRole::Data,
    ];

    /// The partition (and filesystem) label.
    pub fn label(self) -> &'static str {
        match self {
            PartitionRole::Boot => "BOOT",
            PartitionRole::SystemA => "SYSTEM-A",
            PartitionRole::SystemB => "SYSTEM-B",
            PartitionRole::State => "STATE",
            PartitionRole::Data => "DATA",
        }
    }
}

/// Filesystem of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filesystem {
    /// FAT32 (FAT16 when too small for FAT32).
    Vfat,
    /// ext4.
    Ext4,
}

impl Filesystem {
    /// The name used in board files (and by `mount -t`).
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Vfat => "vfat",
            Filesystem::Ext4 => "ext4",
        }
    }
}

/// Kernel inputs of a board.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    /// Debian kernel package pinned in `scripts/inputs.lock`, e.g. `linux-image-6.1.0-56-arm64`.
    pub package: String,
    /// Kernel release (`uname -r`, the `/lib/modules/<release>` directory). Default: the
    /// package name without `linux-image-` (and without a trailing `-unsigned`).
    #[serde(default)]
    pub release: Option<String>,
    /// Kernel image inside the package. Default: `/boot/vmlinuz-<release>`.
    #[serde(default)]
    pub image: Option<String>,
    /// File name of the kernel inside a slot, e.g. `Image` (arm64, uncompressed for
    /// U-Boot's `booti`) or `vmlinuz` (x86_64 bzImage).
    pub slot_file: String,
    /// Device trees, relative to `/usr/lib/linux-image-<release>/` in the package, e.g.
    /// `broadcom/bcm2711-rpi-4-b.dtb`. Copied into the slot under `dtbs/` with the same path.
    #[serde(default)]
    pub dtbs: Vec<String>,
    /// Modules the initramfs carries and loads, in this order (their dependencies are
    /// resolved and loaded first). `-` and `_` are equivalent, as for modprobe.
    pub early_modules: Vec<String>,
}

/// A file taken from a Debian package and placed on a partition.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageFile {
    /// Debian package pinned in `scripts/inputs.lock` (its architecture is the board's, or `all`).
    pub package: String,
    /// Absolute path inside the package, e.g. `/usr/lib/raspi-firmware/start4.elf`.
    pub path: String,
    /// Destination relative to the partition root, e.g. `start4.elf`.
    pub dest: String,
}

/// U-Boot of a `u-boot-script` board.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootConfig {
    /// U-Boot binary put on BOOT; `None` when U-Boot lives elsewhere (SPI/QSPI flash, or
    /// QEMU's `-bios`).
    #[serde(default)]
    pub binary: Option<PackageFile>,
    /// Block interface U-Boot sees the boot disk on.
    pub device: UbootDevice,
    /// Device number on that interface (`mmc 0`, `virtio 0`).
    pub device_number: u32,
    /// Where the environment with the A/B variables lives.
    pub env: UbootEnv,
    /// Load addresses for kernel, device tree and initramfs; default U-Boot's
    /// `${kernel_addr_r}`, `${fdt_addr_r}`, `${ramdisk_addr_r}`.
    #[serde(default)]
    pub load_addresses: Option<LoadAddresses>,
}

/// U-Boot block interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UbootDevice {
    /// SD card or eMMC.
    Mmc,
    /// virtio-blk (QEMU).
    Virtio,
    /// USB mass storage.
    Usb,
    /// SCSI/SATA.
    Scsi,
    /// NVMe.
    Nvme,
}

impl UbootDevice {
    /// The interface name U-Boot commands take.
    pub fn as_str(self) -> &'static str {
        match self {
            UbootDevice::Mmc => "mmc",
            UbootDevice::Virtio => "virtio",
            UbootDevice::Usb => "usb",
            UbootDevice::Scsi => "scsi",
            UbootDevice::Nvme => "nvme",
        }
    }
}

/// U-Boot environment storage.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UbootEnv {
    /// Storage medium.
    pub storage: EnvStorageKind,
    /// Who reads and writes the env: U-Boot itself (`saveenv`) or the boot script.
    pub managed_by: EnvManager,
    /// File name on BOOT (`fat-file` storage only), e.g. `uboot.env`.
    #[serde(default)]
    pub file: Option<String>,
    /// Byte offset in the flash (`spi-flash` storage only).
    #[serde(default)]
    pub offset: Option<u64>,
    /// Size of one env copy in bytes (U-Boot's `CONFIG_ENV_SIZE`), e.g. `0x4000`.
    pub size: u32,
    /// Whether U-Boot keeps two copies (`CONFIG_SYS_REDUNDAND_ENVIRONMENT`).
    #[serde(default)]
    pub redundant: bool,
}

/// U-Boot environment storage medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvStorageKind {
    /// A file on the FAT BOOT partition.
    FatFile,
    /// SPI/QSPI NOR flash on the board (not part of the disk image).
    SpiFlash,
}

/// Who manages the U-Boot environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvManager {
    /// U-Boot loads it before the script and the script calls `saveenv`.
    UBoot,
    /// The boot script loads it (`env import -c`) and saves it (`env export -c` + `fatwrite`).
    BootScript,
}

/// Load addresses of the boot script (hex numbers or U-Boot `${variables}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadAddresses {
    /// Kernel load address (2 MiB aligned for `booti`).
    pub kernel: String,
    /// Device tree load address.
    pub fdt: String,
    /// Initramfs load address.
    pub ramdisk: String,
}

/// UEFI loader of a `uefi-systemd-boot` board.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfiConfig {
    /// systemd-boot binary and its removable-media path on the ESP
    /// (`EFI/BOOT/BOOTX64.EFI` or `EFI/BOOT/BOOTAA64.EFI`).
    pub loader: PackageFile,
}

/// How to run the board under QEMU (TCG).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    /// System emulator binary, e.g. `qemu-system-aarch64`.
    pub binary: String,
    /// Machine type (`-M`), e.g. `virt`, `q35`, `raspi3b`.
    pub machine: String,
    /// CPU model (`-cpu`); QEMU's default when absent.
    #[serde(default)]
    pub cpu: Option<String>,
    /// Guest memory in MiB (`-m`).
    pub memory_mib: u32,
    /// Firmware given with `-bios` (a host path), e.g. U-Boot for `virt`.
    #[serde(default)]
    pub bios: Option<String>,
    /// Read-only UEFI code flash (host path), first `-drive if=pflash`.
    #[serde(default)]
    pub pflash_code: Option<String>,
    /// Template of the writable UEFI variable store (host path, copied per run); an empty
    /// store of the code's size when absent.
    #[serde(default)]
    pub pflash_vars: Option<String>,
    /// A file of the BOOT partition given as `-kernel` (e.g. `u-boot.bin` on `raspi3b`).
    #[serde(default)]
    pub kernel_from_boot: Option<String>,
    /// A file of the BOOT partition given as `-dtb`.
    #[serde(default)]
    pub dtb_from_boot: Option<String>,
    /// How the disk image is attached.
    pub drive: QemuDrive,
    /// Index of the `-serial` port that carries the console (0 = first).
    #[serde(default)]
    pub console_serial: u8,
}

/// How QEMU attaches the disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuDrive {
    /// `-drive if=virtio`.
    Virtio,
    /// `-device nvme`.
    Nvme,
    /// `-drive if=sd` (Raspberry Pi machines).
    Sd,
}
