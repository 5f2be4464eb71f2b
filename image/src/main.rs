//! `basalt-image`: builds Basalt disk images for a board, and lists the boards.
//!
//! ```text
//! basalt-image boards
//! basalt-image build --board qemu-arm64 --version 1.2.0 --out out/qemu-arm64 \
//!     --machined target/node/aarch64/machined [--overlay DIR]... [--no-containers]
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use basalt_boards::Board;
use basalt_image::bundle::{generate_signing_key, verifying_key_base64};
use basalt_image::compose::overlay::UserOverlays;
use basalt_image::compose::{BuildRequest, build_overlaid};
use basalt_image::inputs::{DebCache, KernelSource, sha256_file};
use basalt_image::squashfs::{SquashfsCompression, SquashfsOptions, squash_dir};
use clap::{Parser, Subcommand};

/// Build Basalt OS images.
#[derive(Parser, Debug)]
#[command(name = "basalt-image", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the boards with their support level and what was verified.
    Boards {
        /// Also print the verification notes.
        #[arg(long)]
        verbose: bool,
    },
    /// Generate an Ed25519 key for signing update bundles (PKCS#8 PEM, mode 0600) and print
    /// its public key as nodes trust it (UpdateConfig `trustedSigningKeys`), also written
    /// to `<out>.pub`.
    Keygen {
        /// Where to write the private key (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the disk image and slot image of a release for one board.
    Build {
        /// Board name (see `basalt-image boards`) or path to a board file.
        #[arg(long)]
        board: String,
        /// Release version, e.g. 1.2.0.
        #[arg(long)]
        version: String,
        /// Output folder (must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// machined built for the board's architecture (default:
        /// target/node/<arch>/machined, made by scripts/build-node).
        #[arg(long)]
        machined: Option<PathBuf>,
        /// Take the kernel, modules and DTBs from this folder instead of the pinned package.
        #[arg(long, value_name = "DIR")]
        kernel_dir: Option<PathBuf>,
        /// Repository root holding scripts/inputs.lock and cache/debs (default: found
        /// upwards from the current folder).
        #[arg(long, value_name = "DIR")]
        repo: Option<PathBuf>,
        /// Ed25519 private key (PKCS#8 PEM) signing the update bundle `slot.bundle`;
        /// without it no bundle is written.
        #[arg(long, value_name = "FILE")]
        signing_key: Option<PathBuf>,
        /// Lay the files of DIR over BOOT, after the board's overlay (repeatable, applied in
        /// order). DIR/config.txt is appended line by line to the board's config.txt; every
        /// other file is added or replaces the file at the same path on BOOT. Files the boot
        /// needs (boot.scr, the U-Boot env file; on UEFI boards EFI/BOOT/, loader/, basalt/)
        /// are refused unless named with --allow-replace. Symlinks out of DIR are refused.
        /// See docs/OVERLAYS.md.
        #[arg(long, value_name = "DIR")]
        overlay: Vec<PathBuf>,
        /// Let an overlay replace this composer-written path on BOOT (e.g. boot.scr).
        #[arg(long, value_name = "PATH")]
        allow_replace: Vec<String>,
        /// Leave the container runtime (containerd, runc and their libraries) out of the
        /// root filesystem; a board with `[extensions] containers = false` leaves it out
        /// anyway.
        #[arg(long)]
        no_containers: bool,
    },
    /// Squash a folder into a squashfs image the way `build` makes the root filesystem
    /// (zstd, root-owned, modes normalised, timestamps from SOURCE_DATE_EPOCH); used by
    /// scripts/bench-image to compare with mksquashfs.
    Squashfs {
        /// The folder to squash.
        dir: PathBuf,
        /// The image to write.
        out: PathBuf,
        /// zstd level.
        #[arg(long, default_value_t = 3)]
        level: u32,
        /// Block size in bytes.
        #[arg(long, default_value_t = 128 * 1024)]
        block_size: u32,
    },
    /// Create an Ed25519 signing key (PKCS#8 PEM, mode 0600) for update bundles, and
    /// print its public key (base64) for the nodes' UpdateConfig.
    GenSigningKey {
        /// Where to write the private key; an existing file is never overwritten.
        out: PathBuf,
    },
}

fn find_repo(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|d| d.join("scripts/inputs.lock").is_file())
        .map(Path::to_path_buf)
}

fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
    }
}

fn boards(verbose: bool) -> Result<()> {
    println!(
        "{:<14} {:<8} {:<18} {:<16} description",
        "board", "arch", "boot", "support"
    );
    for board in Board::all()? {
        println!(
            "{:<14} {:<8} {:<18} {:<16} {}",
            board.name,
            board.arch.as_str(),
            board.boot.family.as_str(),
            board.support.as_str(),
            board.description
        );
        if verbose {
            for line in board.verified.trim().lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boards { verbose } => boards(verbose),
        Command::Keygen { out } => {
            if out.exists() {
                bail!("{} exists; not overwriting a signing key", out.display());
            }
            let key = basalt_image::bundle::generate_signing_key(&out)?;
            let public = basalt_image::bundle::verifying_key_base64(&key.verifying_key());
            let mut pub_path = out.into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            std::fs::write(&pub_path, format!("{public}\n"))
                .with_context(|| format!("writing {}", pub_path.display()))?;
            println!("publicKey: {public}");
            Ok(())
        }
        Command::Squashfs {
            dir,
            out,
            level,
            block_size,
        } => {
            let options = SquashfsOptions {
                compression: SquashfsCompression::Zstd,
                level,
                block_size,
                mtime: u32::try_from(source_date_epoch()?).unwrap_or(u32::MAX),
            };
            let report = squash_dir(&dir, &out, &options)?;
            println!(
                "{}: {} bytes, {} entries",
                out.display(),
                report.bytes,
                report.entries
            );
            Ok(())
        }
        Command::GenSigningKey { out } => {
            let key = generate_signing_key(&out)?;
            println!("{}", verifying_key_base64(&key.verifying_key()));
            Ok(())
        }
        Command::Build {
            board,
            version,
            out,
            machined,
            kernel_dir,
            repo,
            signing_key,
            overlay,
            allow_replace,
            no_containers,
        } => {
            let board = Board::resolve(&board)?;
            let cwd = std::env::current_dir().context("cannot read the current folder")?;
            let repo = match repo {
                Some(r) => r,
                None => find_repo(&cwd).context(
                    "no scripts/inputs.lock above the current folder: run from the repository or pass --repo",
                )?,
            };
            let machined = machined.unwrap_or_else(|| {
                repo.join(format!("target/node/{}/machined", board.arch.as_str()))
            });
            if !machined.is_file() {
                bail!(
                    "machined binary {} not found: build it with scripts/build-node {}",
                    machined.display(),
                    board.arch.as_str()
                );
            }
            let request = BuildRequest {
                cache: DebCache::from_repo(&repo)?,
                kernel: match kernel_dir {
                    Some(dir) => KernelSource::Dir(dir),
                    None => KernelSource::Package,
                },
                board,
                version,
                out,
                machined,
                epoch: source_date_epoch()?,
                signing_key,
                containers: !no_containers,
            };
            let overlays = UserOverlays {
                dirs: overlay,
                allow_replace,
            };
            let output = build_overlaid(&request, &overlays)?;
            let disk_sha = sha256_file(&output.disk_image)
                .with_context(|| format!("cannot hash {}", output.disk_image.display()))?;
            println!("board:        {}", request.board.name);
            println!("version:      {}", request.version);
            println!("kernel:       {}", output.kernel_release);
            println!("verity root:  {}", output.root_hash);
            println!(
                "disk image:   {} (sha256 {disk_sha})",
                output.disk_image.display()
            );
            println!("slot image:   {}", output.slot_image.display());
            let extensions: Vec<String> = output
                .extensions
                .iter()
                .map(|e| format!("{} ({} files, {} bytes)", e.name, e.files, e.bytes))
                .collect();
            if extensions.is_empty() {
                println!("extensions:   none");
            } else {
                println!("extensions:   {}", extensions.join(", "));
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("basalt-image: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
