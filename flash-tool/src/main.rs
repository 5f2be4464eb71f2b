//! `basalt-flash`: writes Basalt images to SD, eMMC and USB devices (see the library docs
//! and docs/FLASHING.md).

use std::path::PathBuf;
use std::process::ExitCode as ProcessExit;

use anyhow::Context;
use basalt_bootloader::slot::Slot;
use basalt_flash::device::Sysfs;
use basalt_flash::flash::{FlashOptions, PlanError, failure_code, prepare, run};
use basalt_flash::pipeline::ReadError;
use basalt_flash::progress::{Bars, JsonLines, Quiet, Reporter};
use basalt_flash::slot::{SlotError, SlotOptions, write_slot};
use basalt_flash::source::SourceSpec;
use basalt_flash::{EXIT_CODES_HELP, ExitCode};
use clap::{Args, Parser, Subcommand};

/// Write a Basalt disk image to one or more SD cards, eMMC or USB devices, safely and
/// verified; or one A/B slot from a signed bundle (write-slot); or list candidate devices.
#[derive(Debug, Parser)]
#[command(
    name = "basalt-flash",
    version,
    args_conflicts_with_subcommands = true,
    after_help = EXIT_CODES_HELP,
    override_usage = "basalt-flash [OPTIONS] IMAGE DEVICE...\n       basalt-flash list [--all] [--json]\n       basalt-flash write-slot --slot A|B --bundle FILE --trusted-key FILE --board NAME DEVICE"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flash: FlashArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List block devices and whether they are candidates (removable, usb/mmc, not mounted).
    List {
        /// Show every disk, not only candidates.
        #[arg(long)]
        all: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Write one system slot of an already-flashed card from a signed update bundle and
    /// make the bootloader try it on the next boot.
    WriteSlot(SlotArgs),
}

#[derive(Debug, Args)]
struct Common {
    /// Do not read back and compare what was written.
    #[arg(long)]
    no_verify: bool,
    /// Emit machine-readable progress events (JSON lines on stdout) instead of bars.
    #[arg(long)]
    json: bool,
    /// No progress output.
    #[arg(long, short)]
    quiet: bool,
    /// Do not use O_DIRECT (buffered writes, still synced in bounded steps).
    #[arg(long)]
    no_direct: bool,
    /// Allow DEVICE although it is not removable, holds / or /boot, or has mounted
    /// partitions. Must name the same path as DEVICE; repeat for several.
    #[arg(long, value_name = "DEVICE")]
    force_system_disk: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct FlashArgs {
    /// The image: a path (raw, .gz, .xz, .zst; compression detected from the content),
    /// "-" for stdin, or an http(s):// URL (resumed with Range requests when the connection
    /// drops).
    #[arg(value_name = "IMAGE")]
    image: Option<String>,
    /// Target devices (whole disks), written in parallel.
    #[arg(value_name = "DEVICE")]
    devices: Vec<PathBuf>,
    /// The bmap (bmaptool 1.x or 2.0). Default: IMAGE.bmap next to the image (with the
    /// compression suffix removed).
    #[arg(long, value_name = "FILE")]
    bmap: Option<PathBuf>,
    /// Ignore any bmap: write every byte of the image.
    #[arg(long, conflicts_with = "bmap")]
    no_bmap: bool,
    /// First-boot machine config (YAML), validated before anything is written and stored
    /// in the image's STATE partition (config/current.yaml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// On a device larger than the image: move the backup GPT to the device's end and grow
    /// the last partition if it is DATA.
    #[arg(long)]
    grow_data: bool,
    /// Write IMAGE into the partition with this GPT label (e.g. SYSTEM-B) of one DEVICE
    /// instead of the whole disk.
    #[arg(long, value_name = "LABEL")]
    partition: Option<String>,
    /// fdatasync after this many MiB, bounding unflushed data.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    sync_every_mib: u64,
    /// Print what would be done (devices, sizes, bmap) and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Accept regular files as DEVICE (to prepare card images; no device rules apply).
    #[arg(long)]
    allow_files: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct SlotArgs {
    /// The slot to write.
    #[arg(long, value_name = "A|B")]
    slot: Slot,
    /// The signed update bundle.
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// The public key (PEM or base64) the bundle must be signed with.
    #[arg(long, value_name = "FILE")]
    trusted_key: PathBuf,
    /// The card's board; the bundle must be built for it.
    #[arg(long, value_name = "NAME")]
    board: String,
    /// Boot attempts of the new slot before the bootloader falls back.
    #[arg(long, default_value_t = 3)]
    tries: u32,
    /// The card (whole disk).
    #[arg(value_name = "DEVICE")]
    device: PathBuf,
    /// Accept a regular file as DEVICE (a card image).
    #[arg(long)]
    allow_files: bool,
    #[command(flatten)]
    common: Common,
}

fn reporter(c: &Common) -> Box<dyn Reporter> {
    if c.json {
        Box::new(JsonLines::default())
    } else if c.quiet {
        Box::new(Quiet)
    } else {
        Box::new(Bars::default())
    }
}

fn code(c: ExitCode) -> ProcessExit {
    ProcessExit::from(c as u8)
}

fn plan_code(e: &PlanError) -> ExitCode {
    match e {
        PlanError::Config(_) => ExitCode::ConfigInvalid,
        PlanError::Device(_) => ExitCode::Refused,
        PlanError::Bmap(_) | PlanError::Source(_) => ExitCode::SourceFailed,
        PlanError::Usage(_) => ExitCode::Usage,
    }
}

fn list(all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let sys = Sysfs::default();
    let system = sys.system_disks();
    let devs: Vec<_> = sys
        .list()
        .into_iter()
        .filter(|d| all || (d.is_candidate() && d.mounts.is_empty() && !system.contains(&d.name)))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&devs)?);
        return Ok(ExitCode::Success);
    }
    println!(
        "{:<14} {:>10} {:<7} {:<4} {:<26} MOUNTED",
        "DEVICE", "SIZE", "TRAN", "RM", "MODEL"
    );
    for d in devs {
        let mut mounts = d.mounts.join(",");
        if system.contains(&d.name) {
            mounts = format!("{mounts} (system disk)");
        }
        println!(
            "{:<14} {:>10} {:<7} {:<4} {:<26} {}",
            d.path.display(),
            format!("{:.1}G", d.size as f64 / (1u64 << 30) as f64),
            d.transport,
            if d.removable { "yes" } else { "no" },
            d.model,
            mounts
        );
    }
    Ok(ExitCode::Success)
}

fn flash(a: FlashArgs) -> anyhow::Result<ExitCode> {
    let Some(image) = a.image else {
        eprintln!("basalt-flash: missing IMAGE and DEVICE (see --help)");
        return Ok(ExitCode::Usage);
    };
    if a.devices.is_empty() {
        eprintln!(
            "basalt-flash: missing DEVICE (see --help; `basalt-flash list` shows candidates)"
        );
        return Ok(ExitCode::Usage);
    }
    let opts = FlashOptions {
        source: SourceSpec::parse(&image),
        bmap: a.bmap,
        no_bmap: a.no_bmap,
        devices: a.devices,
        verify: !a.common.no_verify,
        config: a.config,
        grow_data: a.grow_data,
        force_system_disk: a.common.force_system_disk.clone(),
        dry_run: a.dry_run,
        sync_every: a.sync_every_mib.max(1) << 20,
        direct: !a.common.no_direct,
        partition: a.partition,
        allow_files: a.allow_files,
    };
    let prepared = match prepare(&opts, &Sysfs::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("basalt-flash: {e}");
            return Ok(plan_code(&e));
        }
    };
    if opts.dry_run {
        if a.common.json {
            println!("{}", serde_json::to_string(&prepared.plan)?);
        } else {
            let p = &prepared.plan;
            println!("dry run: nothing will be written");
            println!("source:  {} ({:?})", p.source, p.compression);
            println!(
                "bmap:    {}",
                p.bmap
                    .as_ref()
                    .map_or("none (every byte is written)".into(), |b| b
                        .display()
                        .to_string())
            );
            println!(
                "image:   {} bytes, {} to write",
                opt(p.image_size),
                opt(p.mapped_bytes)
            );
            if let Some(l) = &p.partition {
                println!("target:  partition {l}");
            }
            if let Some(c) = &p.config {
                println!("config:  {} -> STATE config/current.yaml", c.display());
            }
            println!("grow:    {}\nverify:  {}", p.grow_data, p.verify);
            for d in &p.devices {
                println!(
                    "device:  {} {} bytes, {} {}, passes the safety rules",
                    d.path.display(),
                    d.size,
                    d.transport,
                    d.model
                );
            }
        }
        return Ok(ExitCode::Success);
    }
    let rep = reporter(&a.common);
    let (read_error, results) = run(&opts, prepared, rep.as_ref());
    if let Some(e) = &read_error {
        eprintln!("basalt-flash: {e}");
    }
    let failed = results.iter().filter(|r| r.outcome.is_err()).count();
    if !a.common.json {
        eprintln!("summary:");
        for r in &results {
            match &r.outcome {
                Ok((rep, verified)) => eprintln!(
                    "  {}: ok, {} bytes written in {:.1} s ({}), {} verified in {:.1} s{}",
                    r.device.display(),
                    rep.bytes,
                    r.write_secs,
                    if rep.direct { "O_DIRECT" } else { "buffered" },
                    verified,
                    r.verify_secs,
                    rep.grown
                        .as_ref()
                        .map_or(String::new(), |(l, s)| format!(", {l} grown to {s} bytes"))
                ),
                Err(e) => eprintln!("  {}: FAILED: {e}", r.device.display()),
            }
        }
    }
    Ok(match &read_error {
        _ if failed == 0 && read_error.is_none() => ExitCode::Success,
        _ if failed < results.len() => ExitCode::Partial,
        Some(ReadError::NoState { .. }) => ExitCode::ConfigInvalid,
        Some(ReadError::Source(_) | ReadError::Checksum { .. } | ReadError::Short { .. }) => {
            ExitCode::SourceFailed
        }
        // Every device failed on its own (or the reader stopped because they all did).
        Some(ReadError::NoDevices) | None => results
            .iter()
            .find_map(|r| r.outcome.as_ref().err().map(failure_code))
            .unwrap_or(ExitCode::Failure),
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or("unknown".into(), |v| v.to_string())
}

fn slot(a: SlotArgs) -> anyhow::Result<ExitCode> {
    if !a.allow_files || !a.device.is_file() {
        let sys = Sysfs::default();
        let info = match sys.resolve(&a.device) {
            Ok(i) => i,
            Err(e) => {
                eprintln!("basalt-flash: {e}");
                return Ok(ExitCode::Refused);
            }
        };
        let ctx = basalt_flash::device::SafetyContext::new(
            &sys,
            Some(&a.bundle),
            None,
            &a.common.force_system_disk,
        );
        if let Err(e) = basalt_flash::device::check(&info, &a.device, &ctx) {
            eprintln!("basalt-flash: {e}");
            return Ok(ExitCode::Refused);
        }
    }
    let opts = SlotOptions {
        exclusive: !a.device.is_file(),
        device: a.device,
        slot: a.slot,
        bundle: a.bundle,
        trusted_key: a.trusted_key,
        board: a.board,
        tries: a.tries,
        verify: !a.common.no_verify,
        direct: !a.common.no_direct,
    };
    let rep = reporter(&a.common);
    match write_slot(&opts, rep.as_ref()) {
        Ok(r) => {
            rep.result(&opts.device.display().to_string(), None);
            eprintln!(
                "{}: slot {} written ({} bytes, version {}); {} will try it on the next boot",
                opts.device.display(),
                opts.slot,
                r.bytes,
                r.version,
                r.bootloader
            );
            Ok(ExitCode::Success)
        }
        Err(e) => {
            let c = match &e {
                SlotError::Rejected { .. } => ExitCode::BundleRejected,
                SlotError::Verify(_) => ExitCode::VerifyFailed,
                SlotError::Card { .. } => ExitCode::Refused,
                _ => ExitCode::WriteFailed,
            };
            rep.result(
                &opts.device.display().to_string(),
                Some((&e.to_string(), c as i32)),
            );
            eprintln!("basalt-flash: {e}");
            Ok(c)
        }
    }
}

fn main() -> ProcessExit {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                code(ExitCode::Usage)
            } else {
                code(ExitCode::Success)
            };
        }
    };
    let result = match cli.command {
        Some(Command::List { all, json }) => list(all, json),
        Some(Command::WriteSlot(a)) => slot(a),
        None => flash(cli.flash),
    };
    match result.context("basalt-flash") {
        Ok(c) => code(c),
        Err(e) => {
            eprintln!("{e:#}");
            code(ExitCode::Failure)
        }
    }
}
