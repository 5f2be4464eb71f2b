//! Early boot: what machined does as PID 1 before the API starts (DESIGN §2–§4).
//!
//! The kernel runs machined as `/init` from the slot's initramfs, which holds only machined
//! and the early kernel modules. [`run`] then, in order, printing one
//! `[basalt] stage: <name> (<ms> ms since start)` line as each stage completes:
//!
//! | stage | what |
//! |---|---|
//! | `api-filesystems` | `/proc`, `/sys`, `/sys/fs/cgroup` (cgroup2), `/dev` (devtmpfs), `/run`, `/tmp` |
//! | `cmdline` | `basalt.slot=` and `basalt.roothash=` from `/proc/cmdline` ([`cmdline`]) |
//! | `modules` | the early modules with `finit_module`, in list order ([`modules`]) |
//! | `partitions` | BOOT, SYSTEM-A/B, STATE, DATA by GPT name, waiting up to 10 s ([`block`]) |
//! | `slot` | the booted slot's FAT, read-only, at `/run/basalt/slot` |
//! | `verity` | `rootfs.img` as a block device, then `basalt-root`: dm-verity with the command line's root hash ([`verity`], [`dm`]) |
//! | `verify` | one full read of `basalt-root`: every block checked once |
//! | `root` | `basalt-root` (squashfs) read-only at `/system` |
//! | `system-links` | `/usr` and the dynamic loader linked into `/system` when the root has `/usr` (the container extension), see [`system_links`] |
//! | `state` | STATE (ext4) read-write at `/var/lib/basalt`; created from the root's template when blank, grown to its partition ([`storage`]) |
//! | `data` | the GPT grown to the disk's end with DATA extended, then DATA (ext4) read-write at `/var/lib/basalt-data`, grown online ([`storage`]) |
//! | `boot` | BOOT (vfat) read-write at `/boot`, `dirsync` and `flush` (machined updates `uboot.env` or the loader entries there) |
//!
//! and `[basalt] booted slot A, verity root <hash>, version <version>`. The command line is
//! parsed before the modules load so that a bad one fails at once.
//!
//! **The root image as a block device.** With the loop driver present (`/dev/loop-control`
//! exists: `loop` built in or among the early modules) `rootfs.img` is bound to a read-only
//! loop device ([`loopdev`]). Debian builds `loop` as a module and the boards' early module
//! lists do not carry it today, so without it the slot FAT is mounted through an identity
//! device-mapper device (`basalt-slot`) and the file's extents on the slot partition are
//! mapped with `linear` targets (`basalt-rootfs`, see [`extents`]); both end in the same
//! dm-verity table.
//!
//! **Corruption.** The verity table has `panic_on_corruption` (see [`verity`]): a block
//! that does not match the root hash panics the kernel, `panic=10` resets the board, and the
//! boot script's counting falls back to the other slot. The `verify` stage reads the whole
//! root once before it is mounted, so a damaged slot fails on its first boot, while it is
//! still on trial, instead of whenever the damaged block is first read (possibly after the
//! slot was committed, when no fallback is left). Measured under QEMU TCG on the 2-core
//! build machine: 81.5 MiB (the qemu-arm64 root) in 2.6 s, about 31 MiB/s with the kernel's
//! generic sha256, half of the 5.2 s early boot; on a board it is bounded by the storage's
//! read speed (and faster hashing when the board loads `sha2-ce` early). Should that become
//! too slow on a large root, the read can be limited to trial boots (uncommitted slots).
//!
//! **Failures.** Any other failure prints `[basalt] FATAL: <error chain>`, syncs and
//! reboots (`RB_AUTOBOOT`) after 5 s: PID 1 never exits, and a reset lets the bootloader
//! count the attempt. The side effects sit behind [`mounts::Mounter`], [`storage::StorageOps`],
//! [`modules::ModuleLoader`] and [`block::BlockDevices`]; the parsing is pure and unit
//! tested, the whole sequence is tested by booting the real image under QEMU
//! (`tests/tests/qemu_early_boot.rs`).

pub mod block;
pub mod cmdline;
pub mod console;
pub mod dm;
pub mod extents;
pub mod loopdev;
pub mod modules;
pub mod mounts;
pub mod storage;
mod sys;
pub mod system_links;
pub mod verity;

use anyhow::{Context, anyhow};
use basalt_bootloader::Slot;
use block::{BlockDevices, Partitions};
use console::Console;
use modules::ModuleLoader;
use mounts::{Flags, MountSpec, Mounter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the booted slot's FAT is mounted (read-only).
pub const SLOT_MOUNT: &str = "/run/basalt/slot";
/// The root image inside the slot.
pub const ROOTFS_FILE: &str = "rootfs.img";
/// The release version inside the slot.
pub const VERSION_FILE: &str = "basalt/version";
/// The slot's env file (`basalt_roothash=`), compared with the command line.
pub const SLOT_ENV_FILE: &str = "basalt/slot.env";
/// Where the verified root filesystem is mounted.
pub const SYSTEM_MOUNT: &str = "/system";
/// Where STATE is mounted: machined's state directory on a node.
pub const STATE_MOUNT: &str = "/var/lib/basalt";
/// Where DATA is mounted.
pub const DATA_MOUNT: &str = "/var/lib/basalt-data";
/// Where BOOT is mounted.
pub const BOOT_MOUNT: &str = "/boot";
/// The dm-verity device.
pub const ROOT_DM_NAME: &str = "basalt-root";
/// The linear device over the root image's extents (without the loop driver).
pub const ROOTFS_DM_NAME: &str = "basalt-rootfs";
/// The identity linear device the slot FAT is mounted through (without the loop driver).
pub const SLOT_DM_NAME: &str = "basalt-slot";
/// How long to wait for the disk's partitions after the modules loaded.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);
/// The API's address on a node.
pub const NODE_LISTEN: &str = "0.0.0.0:50000";
/// Delay between a fatal error and the reboot, so the message can be read on a screen.
pub const FATAL_REBOOT_DELAY: Duration = Duration::from_secs(5);

/// What backs the verity device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootBacking {
    /// A loop device bound to `rootfs.img`.
    Loop(loopdev::LoopDevice),
    /// Device-mapper `linear` targets over the file's extents on the slot partition.
    Extents {
        /// The linear device.
        device: dm::Device,
        /// How many extents (targets) it has.
        extents: usize,
    },
}

/// What early boot set up, handed to the daemon.
#[derive(Debug, Clone)]
pub struct EarlyBoot {
    /// The booted slot.
    pub slot: Slot,
    /// The root hash from the kernel command line (the trust anchor), lower-case hex.
    pub root_hash: String,
    /// The slot's release version (`basalt/version` in the slot), `unknown` if absent.
    pub version: String,
    /// The disk's Basalt partitions.
    pub partitions: Partitions,
    /// The booted slot's FAT, read-only.
    pub slot_mount: PathBuf,
    /// The verified root filesystem, read-only.
    pub system_dir: PathBuf,
    /// The dm-verity device node.
    pub root_device: PathBuf,
    /// What backs it.
    pub root_backing: RootBacking,
    /// Bytes read and time taken by the full read of the root (`verify` stage).
    pub root_read: (u64, Duration),
    /// BOOT, read-write.
    pub boot_mount: PathBuf,
    /// STATE, read-write: machined's state directory.
    pub state_dir: PathBuf,
    /// DATA, read-write.
    pub data_dir: PathBuf,
    /// Time from machined's start to the end of early boot.
    pub elapsed: Duration,
}

impl EarlyBoot {
    /// The daemon's command line on a node: `--state-dir /var/lib/basalt --listen
    /// 0.0.0.0:50000`, with the program name first.
    pub fn daemon_args(&self) -> Vec<String> {
        vec![
            "machined".to_string(),
            "--state-dir".to_string(),
            self.state_dir.display().to_string(),
            "--listen".to_string(),
            NODE_LISTEN.to_string(),
        ]
    }

    /// `booted slot A, verity root <hash>, version <version>`.
    pub fn summary(&self) -> String {
        format!(
            "booted slot {}, verity root {}, version {}",
            self.slot, self.root_hash, self.version
        )
    }
}

/// The side effects early boot needs.
pub struct Host<'a> {
    /// Mounts.
    pub mounter: &'a dyn Mounter,
    /// Module loading.
    pub modules: &'a dyn ModuleLoader,
    /// Block device discovery.
    pub block: &'a dyn BlockDevices,
}

/// Whether this process is PID 1.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Whether machined runs as a node's init: PID 1 without `--dev`. (`machined --dev` may be
/// PID 1 in a container; it must not mount, load modules or reboot there.)
pub fn is_node_init() -> bool {
    is_pid1() && !std::env::args_os().skip(1).any(|a| a == "--dev")
}

/// Runs `f` as stage `name`: prints the stage line when it succeeds, a `FAILED` stage line
/// when it does not, and names the stage in the error.
fn stage<T>(
    console: &Console,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match f() {
        Ok(v) => {
            console.stage(name);
            Ok(v)
        }
        Err(e) => {
            console.stage(&format!("{name} FAILED"));
            Err(e.context(format!("early boot stage {name}")))
        }
    }
}

/// `basalt_roothash` from a slot env file's `key=value` lines.
pub fn slot_env_root_hash(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("basalt_roothash="))
        .map(|v| v.trim().to_ascii_lowercase())
        .next_back()
}

/// Reads the first line of `path` trimmed, if there is one.
fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.lines().next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
}

fn wait_for_path(path: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > timeout {
            return Err(anyhow!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The early boot sequence (see the module documentation) on the running system.
pub fn run(console: &Console, host: &Host<'_>) -> anyhow::Result<EarlyBoot> {
    let root = Path::new("/");
    stage(console, "api-filesystems", || {
        mounts::mount_all(host.mounter, &mounts::api_filesystems(root))?;
        console::ensure_stdio();
        Ok(())
    })?;
    if let Some(uptime) = read_trimmed(Path::new("/proc/uptime")) {
        let secs = uptime.split_whitespace().next().unwrap_or("?");
        console.info(&format!(
            "machined {} is PID 1; kernel {}, up {secs} s",
            env!("CARGO_PKG_VERSION"),
            modules::kernel_release()
        ));
    }

    let params = stage(console, "cmdline", || {
        let text = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
        Ok(cmdline::parse(&text)?)
    })?;
    console.info(&format!(
        "slot {} with verity root hash {} from the kernel command line",
        params.slot, params.root_hash
    ));

    stage(console, "modules", || {
        let release = modules::kernel_release();
        let Some(dir) = modules::modules_dir(root, &release) else {
            console.info(&format!(
                "no /lib/modules/{release}: no early modules to load"
            ));
            return Ok(());
        };
        let list_path = dir.join(modules::LIST_FILE);
        let list = match std::fs::read_to_string(&list_path) {
            Ok(text) => modules::parse_list(&text)?,
            Err(e) => {
                console.info(&format!(
                    "{}: {e}: no early modules to load",
                    list_path.display()
                ));
                Vec::new()
            }
        };
        let report = modules::load_all(host.modules, &dir, &list);
        for (module, e) in &report.failed {
            console.info(&format!("module {module}: {e} (continuing)"));
        }
        console.info(&format!(
            "{} modules loaded, {} already present, {} failed",
            report.loaded.len(),
            report.already.len(),
            report.failed.len()
        ));
        Ok(())
    })?;

    let partitions = stage(console, "partitions", || {
        block::wait_for_partitions(
            host.block,
            params.slot,
            DEVICE_WAIT,
            Duration::from_millis(20),
        )
    })?;
    let p = &partitions;
    console.info(&format!(
        "disk {}: BOOT={} {}={} STATE={} DATA={}{}",
        p.disk,
        p.boot.name,
        params.slot.partition_label(),
        p.slot.name,
        p.state.name,
        p.data.name,
        if p.by_name {
            ""
        } else {
            " (by partition number: no GPT names)"
        }
    ));

    let slot_mount = PathBuf::from(SLOT_MOUNT);
    let dev_dir = Path::new("/dev");
    let use_loop = loopdev::available(dev_dir);
    let (version, slot_dm) = stage(console, "slot", || {
        // Without the loop driver the root image is mapped from the partition itself, and a
        // mounted partition cannot also be claimed by device-mapper: mount the FAT through
        // an identity `linear` device instead (device-mapper devices share one claim, like
        // logical volumes on one physical volume).
        let (source, slot_dm) = if use_loop {
            (p.slot.node(), None)
        } else {
            let control = dm::Control::open().context("device-mapper (is dm-mod loaded?)")?;
            let whole = dm::Target {
                start: 0,
                length: p.slot.sectors,
                kind: "linear".to_string(),
                params: format!("{} 0", p.slot.dev_string()),
            };
            let dev = control
                .create(SLOT_DM_NAME, None, &[whole], true)
                .with_context(|| format!("creating {SLOT_DM_NAME} over {}", p.slot.name))?;
            let _ = dm::link_mapper_name(dev_dir, &dev);
            wait_for_path(&dev.node(), Duration::from_secs(2))?;
            (dev.node(), Some(dev))
        };
        mounts::mount(
            host.mounter,
            &MountSpec::new(
                source.display().to_string(),
                &slot_mount,
                "vfat",
                Flags::DATA_ONLY.read_only(),
                None,
            ),
        )?;
        if let Some(env_hash) = std::fs::read_to_string(slot_mount.join(SLOT_ENV_FILE))
            .ok()
            .and_then(|t| slot_env_root_hash(&t))
            && env_hash != params.root_hash
        {
            console.info(&format!(
                "{SLOT_ENV_FILE} names root hash {env_hash}; the kernel command line's is used"
            ));
        }
        let version =
            read_trimmed(&slot_mount.join(VERSION_FILE)).unwrap_or_else(|| "unknown".to_string());
        Ok((version, slot_dm))
    })?;

    let image = slot_mount.join(ROOTFS_FILE);
    let (root_dm, root_backing) = stage(console, "verity", || {
        let layout = verity::read_layout(&image)?;
        let control = dm::Control::open().context("device-mapper (is dm-mod loaded?)")?;
        // Holds the loop device open (it detaches itself on its last close) until
        // device-mapper has opened it.
        let mut loop_handle = None;
        let backing = if slot_dm.is_none() {
            let (l, handle) = loopdev::attach_read_only(dev_dir, &image)
                .with_context(|| format!("binding {} to a loop device", image.display()))?;
            loop_handle = Some(handle);
            console.info(&format!("{} on {}", image.display(), l.path.display()));
            RootBacking::Loop(l)
        } else {
            // FIBMAP answers in sectors of the filesystem's device, the identity map of the
            // partition: the same offsets address the partition directly.
            let map = extents::map_file(&image)
                .with_context(|| format!("mapping the extents of {}", image.display()))?;
            let targets = extents::linear_targets(&map.extents, &p.slot.dev_string());
            let device = control
                .create(ROOTFS_DM_NAME, None, &targets, true)
                .with_context(|| format!("creating {ROOTFS_DM_NAME} over {}", image.display()))?;
            let _ = dm::link_mapper_name(dev_dir, &device);
            console.info(&format!(
                "{} on {}: {} extent(s) of {} (no loop driver)",
                image.display(),
                device.node().display(),
                map.extents.len(),
                p.slot.name
            ));
            RootBacking::Extents {
                device,
                extents: map.extents.len(),
            }
        };
        let backing_dev = match &backing {
            RootBacking::Loop(l) => l.dev_string(),
            RootBacking::Extents { device, .. } => device.dev_string(),
        };
        let target = layout.target(&backing_dev, &params.root_hash, verity::OnCorruption::Panic);
        console.info(&format!("{ROOT_DM_NAME}: {}", target.line()));
        let dev = control
            .create(ROOT_DM_NAME, None, &[target], true)
            .with_context(|| format!("creating the dm-verity device {ROOT_DM_NAME}"))?;
        drop(loop_handle);
        let _ = dm::link_mapper_name(dev_dir, &dev);
        wait_for_path(&dev.node(), Duration::from_secs(2))?;
        Ok((dev, backing))
    })?;
    let root_device = root_dm.node();

    let root_read = stage(console, "verify", || {
        let start = Instant::now();
        let bytes = verity::read_all(&root_device).context("reading the whole verified root")?;
        let took = start.elapsed();
        console.info(&format!(
            "read {:.1} MiB of {ROOT_DM_NAME} in {:.2} s: every block matches the root hash",
            bytes as f64 / (1024.0 * 1024.0),
            took.as_secs_f64()
        ));
        Ok((bytes, took))
    })?;

    let system_dir = PathBuf::from(SYSTEM_MOUNT);
    stage(console, "root", || {
        mounts::mount(
            host.mounter,
            &MountSpec::new(
                root_device.display().to_string(),
                &system_dir,
                "squashfs",
                Flags {
                    read_only: true,
                    nodev: true,
                    ..Flags::default()
                },
                None,
            ),
        )?;
        Ok(())
    })?;

    stage(console, "system-links", || {
        let made = system_links::apply(root, &system_dir)?;
        if !made.is_empty() {
            console.info(&format!("{} links into {SYSTEM_MOUNT}", made.len()));
        }
        Ok(())
    })?;

    let state_dir = PathBuf::from(STATE_MOUNT);
    let data_dir = PathBuf::from(DATA_MOUNT);
    let boot_mount = PathBuf::from(BOOT_MOUNT);
    let storage_ops = storage::LinuxStorage;
    stage(console, "state", || {
        prepare_state(console, &storage_ops, p, &system_dir, &state_dir, host)
    })?;
    stage(console, "data", || {
        prepare_data(console, &storage_ops, p, &data_dir, host)
    })?;
    stage(console, "boot", || {
        mounts::mount(
            host.mounter,
            &MountSpec::new(
                p.boot.node().display().to_string(),
                &boot_mount,
                "vfat",
                // Boot-state writes are renames on FAT: see `DirEsp` for why `dirsync`.
                Flags::DATA_ONLY.dirsync(),
                Some("flush"),
            ),
        )?;
        Ok(())
    })?;

    let boot = EarlyBoot {
        slot: params.slot,
        root_hash: params.root_hash,
        version,
        partitions,
        slot_mount,
        system_dir,
        root_device,
        root_backing,
        root_read,
        boot_mount,
        state_dir,
        data_dir,
        elapsed: console.elapsed(),
    };
    console.info(&boot.summary());
    Ok(boot)
}

/// The `state` stage: STATE created from the root's template when blank (never formatted
/// otherwise, see [`storage`]), mounted at `state_dir`, grown to its partition.
fn prepare_state(
    console: &Console,
    ops: &dyn storage::StorageOps,
    p: &Partitions,
    system_dir: &Path,
    state_dir: &Path,
    host: &Host<'_>,
) -> anyhow::Result<()> {
    let node = p.state.node();
    let created = match storage::probe_device(&node)? {
        storage::Content::Blank => {
            let template = system_dir.join(basalt_image::compose::STATE_TEMPLATE);
            console.info(&format!(
                "STATE {} is blank: writing the empty ext4 from {}",
                p.state.name,
                template.display()
            ));
            storage::create_from_template(&node, &template)?;
            true
        }
        storage::Content::Ext4(_) => false,
        storage::Content::Unknown => {
            return Err(storage::StorageError::NotBlank { path: node }.into());
        }
    };
    mounts::mount(
        host.mounter,
        &MountSpec::new(
            node.display().to_string(),
            state_dir,
            "ext4",
            Flags::DATA_ONLY,
            None,
        ),
    )?;
    let grown = storage::grow_mounted_ext4(ops, &node, state_dir)?;
    let size = storage::device_size(&node)?;
    if created {
        console.info(&format!(
            "STATE created: ext4 on {}, grown online to {}",
            p.state.name,
            storage::mib(grown.map_or(size, |(_, after)| after))
        ));
    } else if let Some((before, after)) = grown {
        console.info(&format!(
            "STATE ext4 grown online from {} to {}",
            storage::mib(before),
            storage::mib(after)
        ));
    }
    Ok(())
}

/// The `data` stage: the GPT grown to the disk's end with DATA extended, the kernel told,
/// DATA mounted at `data_dir` and its ext4 grown online. A failed grow is reported and the
/// boot goes on with DATA as it is.
fn prepare_data(
    console: &Console,
    ops: &dyn storage::StorageOps,
    p: &Partitions,
    data_dir: &Path,
    host: &Host<'_>,
) -> anyhow::Result<()> {
    let node = p.data.node();
    if let Err(e) = grow_data_partition(console, ops, p) {
        console.info(&format!("DATA partition not grown: {e:#}"));
    }
    mounts::mount(
        host.mounter,
        &MountSpec::new(
            node.display().to_string(),
            data_dir,
            "ext4",
            Flags {
                nosuid: true,
                nodev: true,
                ..Flags::default()
            },
            None,
        ),
    )?;
    match storage::grow_mounted_ext4(ops, &node, data_dir) {
        Ok(Some((before, after))) => console.info(&format!(
            "DATA grown: ext4 on {} from {} to {}",
            p.data.name,
            storage::mib(before),
            storage::mib(after)
        )),
        Ok(None) => {}
        Err(e) => console.info(&format!("DATA filesystem not grown: {e:#}")),
    }
    Ok(())
}

/// The table part of growing DATA: rewrite the GPT if the disk has room, then tell the
/// kernel when its idea of DATA's size differs from the table's.
fn grow_data_partition(
    console: &Console,
    ops: &dyn storage::StorageOps,
    p: &Partitions,
) -> anyhow::Result<()> {
    let disk = Path::new("/dev").join(&p.disk);
    let number = p.data.partn.unwrap_or(0);
    if let Some(size) = storage::grow_table(&disk, number)? {
        console.info(&format!(
            "{} of {} {} the disk's end; DATA partition {} in the table",
            if p.by_name { "GPT" } else { "MBR" },
            p.disk,
            if p.by_name { "moved to" } else { "grown to" },
            storage::mib(size)
        ));
    }
    let mut f =
        std::fs::File::open(&disk).with_context(|| format!("opening {}", disk.display()))?;
    let table = basalt_bootloader::partition_table::PartitionTable::read(&mut f, &p.disk)?;
    let entry = if p.by_name {
        table.by_label("DATA")
    } else {
        table.by_number(number)
    };
    let Some(entry) = entry else {
        return Ok(());
    };
    if entry.size != p.data.sectors * 512 {
        ops.resize_partition(&disk, entry.number, entry.start, entry.size)
            .with_context(|| format!("BLKPG_RESIZE_PARTITION of {}", p.data.name))?;
        console.info(&format!(
            "DATA partition {} resized from {} to {} (BLKPG)",
            p.data.name,
            storage::mib(p.data.sectors * 512),
            storage::mib(entry.size)
        ));
    }
    Ok(())
}

/// PID 1's entry: runs early boot on the real system and returns what it set up; on any
/// failure (or a panic) prints `[basalt] FATAL: …` and reboots, never returning.
pub fn boot_or_reboot() -> EarlyBoot {
    let console = Console::stdout(Instant::now());
    let mounter = mounts::LinuxMounter;
    let loader = modules::FinitModule;
    let devices = block::Sysfs::default();
    let host = Host {
        mounter: &mounter,
        modules: &loader,
        block: &devices,
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&console, &host))) {
        Ok(Ok(boot)) => boot,
        Ok(Err(e)) => fatal_reboot(&console, &format!("{e:#}")),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            fatal_reboot(&console, &format!("early boot panicked: {what}"))
        }
    }
}

/// Prints `[basalt] FATAL: <error>`, waits [`FATAL_REBOOT_DELAY`], syncs and reboots. If
/// the reboot itself fails, stays alive (PID 1 must not exit).
pub fn fatal_reboot(console: &Console, error: &str) -> ! {
    console.fatal(error);
    console.info(&format!(
        "rebooting in {} s (the bootloader counts this attempt)",
        FATAL_REBOOT_DELAY.as_secs()
    ));
    std::thread::sleep(FATAL_REBOOT_DELAY);
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::Restart) {
        console.fatal(&format!("reboot failed: {e}"));
    }
    reap_forever()
}

/// For the daemon's return as PID 1: reports why it stopped and reboots (PID 1 must never
/// exit, and a node without its API is unmanageable).
pub fn daemon_stopped(outcome: Result<(), String>) -> ! {
    let console = Console::stdout(Instant::now());
    match outcome {
        Ok(()) => console.info("machined API stopped"),
        Err(e) => console.fatal(&format!("machined daemon: {e}")),
    }
    // A node without its API cannot be managed: reboot, so that a trial slot is counted
    // by the bootloader and falls back, and a committed one gets a fresh start.
    fatal_reboot(&console, "the machined daemon stopped")
}

/// Reaps children forever (orphans are re-parented to PID 1).
pub fn reap_forever() -> ! {
    loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_env_hash() {
        assert_eq!(
            slot_env_root_hash("# comment\nbasalt_roothash=ABCD\n").as_deref(),
            Some("abcd")
        );
        assert_eq!(slot_env_root_hash("x=1\n"), None);
    }

    #[test]
    fn daemon_args_and_summary() {
        let dev = block::BlockDevice {
            name: "vda2".into(),
            disk: Some("vda".into()),
            partn: Some(2),
            partname: Some("SYSTEM-A".into()),
            major: 254,
            minor: 2,
            sectors: 8,
        };
        let boot = EarlyBoot {
            slot: Slot::A,
            root_hash: "ab".repeat(32),
            version: "1.2.3".into(),
            partitions: Partitions {
                disk: "vda".into(),
                boot: dev.clone(),
                slot: dev.clone(),
                other_slot: None,
                state: dev.clone(),
                data: dev,
                by_name: true,
            },
            slot_mount: SLOT_MOUNT.into(),
            system_dir: SYSTEM_MOUNT.into(),
            root_device: "/dev/dm-1".into(),
            root_backing: RootBacking::Extents {
                device: dm::Device {
                    name: ROOTFS_DM_NAME.into(),
                    major: 254,
                    minor: 0,
                },
                extents: 1,
            },
            root_read: (0, Duration::ZERO),
            boot_mount: BOOT_MOUNT.into(),
            state_dir: STATE_MOUNT.into(),
            data_dir: DATA_MOUNT.into(),
            elapsed: Duration::ZERO,
        };
        assert_eq!(
            boot.daemon_args(),
            [
                "machined",
                "--state-dir",
                "/var/lib/basalt",
                "--listen",
                "0.0.0.0:50000"
            ]
        );
        assert_eq!(
            boot.summary(),
            format!(
                "booted slot A, verity root {}, version 1.2.3",
                "ab".repeat(32)
            )
        );
    }
}
