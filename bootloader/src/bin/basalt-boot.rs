//! `basalt-boot`: inspect and change the A/B slot state of a Basalt disk by hand, for
//! recovery: on an image file or a card in a reader (without mounting it), on a mounted
//! BOOT/ESP directory, on a `uboot.env` file, or on a device described by `fw_env.config`.
//!
//! With `--disk`, the BOOT partition is found by its GPT label `BOOT` (or is partition 1 of
//! an MBR disk, or `--boot-partition N`), and the backend is recognised from its files:
//! `loader/entries/` → systemd-boot, `autoboot.txt` → Raspberry Pi tryboot, `uboot.env` →
//! U-Boot env.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use basalt_bootloader::boot_counting::DEFAULT_TRIES;
use basalt_bootloader::env::{EnvLayout, FileStore, FwEnvConfig, UbootEnv};
use basalt_bootloader::esp_env_store::EspFileStore;
use basalt_bootloader::partition_table::{PartitionTable, TableKind};
use basalt_bootloader::systemd_boot::{DirEsp, EspFs, FatEsp, SystemdBoot};
use basalt_bootloader::tryboot::{SlotPartitions, Tryboot};
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_bootloader::{BootStatus, Bootloader, Slot};
use clap::{Parser, Subcommand};

/// Inspect and change Basalt A/B slot state for recovery.
#[derive(Parser, Debug)]
#[command(name = "basalt-boot", version)]
struct Cli {
    /// Disk image or block device holding a Basalt partition table.
    #[arg(long, value_name = "PATH", group = "storage")]
    disk: Option<PathBuf>,
    /// With --disk: the BOOT partition number (default: GPT label BOOT, or 1 on MBR).
    #[arg(long, value_name = "N", requires = "disk")]
    boot_partition: Option<u32>,
    /// A mounted BOOT partition or ESP.
    #[arg(long, value_name = "DIR", group = "storage")]
    boot_dir: Option<PathBuf>,
    /// A U-Boot env file (e.g. a copy of uboot.env).
    #[arg(long, value_name = "FILE", group = "storage")]
    env_file: Option<PathBuf>,
    /// A fw_env.config describing where the env lives on a device (one or two copies).
    #[arg(long, value_name = "FILE", group = "storage")]
    fw_config: Option<PathBuf>,
    /// U-Boot env size for --disk, --boot-dir and --env-file.
    #[arg(long, value_name = "BYTES", default_value = "0x4000", value_parser = parse_size)]
    env_size: usize,
    /// The slot the system booted from, when run on a node (enables `rollback`).
    #[arg(long, value_name = "A|B")]
    booted: Option<Slot>,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show boot order, tries left and trial state.
    Status,
    /// Make SLOT boot next, on trial with --tries attempts.
    SetActive {
        /// The slot to boot next.
        slot: Slot,
        /// Boot attempts before falling back (1 to 9).
        #[arg(long, default_value_t = DEFAULT_TRIES)]
        tries: u32,
    },
    /// Commit SLOT: first in the order, tries restored.
    MarkGood {
        /// The slot to commit.
        slot: Slot,
    },
    /// Make SLOT unbootable.
    MarkBad {
        /// The slot to take out of the boot order.
        slot: Slot,
    },
    /// Switch back to the slot not booted (needs --booted).
    Rollback,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => usize::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("invalid size {s:?}: {e}"))
}

fn backend_on_esp<E: EspFs + 'static>(esp: E, cli: &Cli) -> Result<(String, Box<dyn Bootloader>)> {
    let what = esp.describe();
    if esp.exists("loader/entries")? {
        return Ok((
            format!("systemd-boot on {what}"),
            Box::new(SystemdBoot::new(esp, cli.booted)),
        ));
    }
    if esp.exists("autoboot.txt")? {
        let tryboot = Tryboot::new(esp, SlotPartitions::default(), cli.booted, None)?;
        return Ok((format!("tryboot on {what}"), Box::new(tryboot)));
    }
    if esp.exists("uboot.env")? {
        let store = EspFileStore::new(esp, "uboot.env");
        let env = UbootEnv::load(store, EnvLayout::single(cli.env_size))?;
        return Ok((
            format!("u-boot env uboot.env on {what}"),
            Box::new(UbootBootloader::new(env, cli.booted)),
        ));
    }
    bail!(
        "{what} has none of loader/entries/, autoboot.txt or uboot.env: not a Basalt BOOT partition"
    )
}

fn open_backend(cli: &Cli) -> Result<(String, Box<dyn Bootloader>)> {
    if let Some(disk) = &cli.disk {
        let name = disk.display().to_string();
        let mut file =
            std::fs::File::open(disk).with_context(|| format!("failed to open {name}"))?;
        let table = PartitionTable::read(&mut file, &name)?;
        let boot = match (cli.boot_partition, table.kind) {
            (Some(n), _) => table.by_number(n),
            (None, TableKind::Gpt) => table.by_label("BOOT"),
            (None, TableKind::Mbr) => table.by_number(1),
        }
        .with_context(|| format!("{name} has no BOOT partition (try --boot-partition N)"))?;
        let esp = FatEsp::open(disk, boot.start, boot.size)?
            .with_label(&format!("BOOT (partition {}) of {name}", boot.number));
        return backend_on_esp(esp, cli);
    }
    if let Some(dir) = &cli.boot_dir {
        return backend_on_esp(DirEsp::new(dir), cli);
    }
    if let Some(file) = &cli.env_file {
        let env = UbootEnv::load(FileStore::new(file), EnvLayout::single(cli.env_size))?;
        return Ok((
            format!("u-boot env {}", file.display()),
            Box::new(UbootBootloader::new(env, cli.booted)),
        ));
    }
    if let Some(config) = &cli.fw_config {
        let config = FwEnvConfig::read(config)?;
        let env = UbootEnv::load(config.store(), config.layout())?;
        return Ok((
            "u-boot env (fw_env.config)".to_string(),
            Box::new(UbootBootloader::new(env, cli.booted)),
        ));
    }
    bail!("say where the slot state is: --disk, --boot-dir, --env-file or --fw-config")
}

fn print_status(backend: &str, status: &BootStatus, json: bool) -> Result<()> {
    let letter = |s: Option<Slot>| s.map(|s| s.letter().to_string());
    if json {
        let slots: Vec<_> = status
            .slots
            .iter()
            .map(|s| {
                serde_json::json!({
                    "slot": s.slot.letter(),
                    "bootable": s.bootable,
                    "tries_left": s.tries_left,
                })
            })
            .collect();
        let value = serde_json::json!({
            "backend": backend,
            "booted": letter(status.booted),
            "order": status.order.iter().map(|s| s.letter()).collect::<Vec<_>>(),
            "next_boot": letter(status.next_boot()),
            "committed": status.committed,
            "trial": letter(status.trial),
            "last_failed": letter(status.last_failed),
            "slots": slots,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let or_dash = |s: Option<Slot>| s.map_or("-".to_string(), |s| s.to_string());
    println!("backend:     {backend}");
    println!("booted:      {}", or_dash(status.booted));
    let order: Vec<&str> = status.order.iter().map(|s| s.letter()).collect();
    println!("boot order:  {}", order.join(" "));
    println!("next boot:   {}", or_dash(status.next_boot()));
    println!("trial:       {}", or_dash(status.trial));
    println!("last failed: {}", or_dash(status.last_failed));
    for s in &status.slots {
        let tries = s.tries_left.map_or("-".to_string(), |t| t.to_string());
        let state = if s.bootable {
            "bootable"
        } else {
            "not bootable"
        };
        println!("slot {}:      {state}, tries left {tries}", s.slot);
    }
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    let (name, mut backend) = open_backend(cli)?;
    match &cli.command {
        Command::Status => {}
        Command::SetActive { slot, tries } => backend.activate(*slot, *tries)?,
        Command::MarkGood { slot } => backend.mark_good(*slot)?,
        Command::MarkBad { slot } => backend.mark_bad(*slot)?,
        Command::Rollback => {
            backend.rollback()?;
        }
    }
    // Read back what is stored now (a fresh backend re-reads the storage).
    let (_, fresh) = open_backend(cli)?;
    print_status(&name, &fresh.status()?, cli.json)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-boot: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
