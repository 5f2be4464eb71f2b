//! What machined does on a node between early boot and "committed": open the board's boot
//! backend, and commit the booted slot once the node is healthy.
//!
//! **Board and backend.** The slot carries its board name (`basalt/board`, written by
//! basalt-image). The board's data file says where the A/B state lives: U-Boot boards whose
//! env is a file on BOOT (`uboot.env`, kept by the boot script or by U-Boot's `saveenv`) →
//! [`UbootBootloader`] over that file on the mounted BOOT; UEFI boards → systemd-boot's
//! loader entries on the ESP (an upgrade also copies the new slot's kernel and initramfs
//! there, as systemd-boot reads kernels only from the ESP); Raspberry Pi tryboot → `autoboot.txt`. An env in SPI flash
//! (U-Boot in a module's QSPI) is not reachable from the node yet and is refused with a
//! message saying so.
//!
//! **Commit.** [`HealthCheck`] lists what must hold before `mark_good`: the API accepts
//! TCP connections on its port, the stored configuration (if any) was applied, and the root
//! filesystem passed its full dm-verity read in early boot; and every critical service
//! ([`CriticalService`]: those the configuration marks `critical`, and containerd) runs. A
//! critical container retrying its image pull does not hold the commit back: a registry
//! that is down must not roll an upgrade back. [`decide`] turns these facts into a
//! [`Verdict`]; machined gathers them every second and commits as soon as it says so. When
//! the booted slot is on trial and not healthy within [`TRIAL_DEADLINE`], it reboots, so
//! the bootloader counts a failed attempt and eventually falls back, even if the new
//! machined hangs instead of crashing.

use basalt_boards::{Board, BootloaderFamily, EnvStorageKind};
use basalt_bootloader::env::{EnvLayout, FileStore, UbootEnv};
use basalt_bootloader::systemd_boot::{DirEsp, SlotBootFiles, SystemdBoot};
use basalt_bootloader::tryboot::{SlotPartitions, Tryboot};
use basalt_bootloader::uboot_backend::UbootBootloader;
use basalt_bootloader::{Bootloader, Slot};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// The slot file naming the board.
pub const BOARD_FILE: &str = "basalt/board";
/// How long a trial boot may take to become healthy before machined reboots.
pub const TRIAL_DEADLINE: Duration = Duration::from_secs(180);

/// A failure to open the node's boot backend.
#[derive(Debug, thiserror::Error)]
pub enum NodeBootError {
    /// The slot does not name its board, or the board is unknown.
    #[error("board of the booted slot: {0}")]
    Board(String),
    /// The backend's storage could not be opened.
    #[error("boot backend of board {board} at {location}: {message}")]
    Backend {
        /// The board.
        board: String,
        /// Where the backend's state lives.
        location: String,
        /// Why it failed.
        message: String,
    },
}

/// The board named in the booted slot (`<slot_mount>/basalt/board`).
pub fn slot_board(slot_mount: &Path) -> Result<Board, NodeBootError> {
    let path = slot_mount.join(BOARD_FILE);
    let name = std::fs::read_to_string(&path)
        .map_err(|e| NodeBootError::Board(format!("{}: {e}", path.display())))?;
    Board::load(name.trim()).map_err(|e| NodeBootError::Board(e.to_string()))
}

/// The boot backend of `board` with its state under `boot_dir` (the mounted BOOT or ESP),
/// for a system booted from `booted`; with a name for messages.
pub fn open_bootloader(
    board: &Board,
    boot_dir: &Path,
    booted: Slot,
) -> Result<(Box<dyn Bootloader + Send>, String), NodeBootError> {
    let backend_err = |location: &Path, message: String| NodeBootError::Backend {
        board: board.name.clone(),
        location: location.display().to_string(),
        message,
    };
    match board.boot.family {
        BootloaderFamily::UBootScript => {
            let uboot = board.uboot.as_ref().ok_or_else(|| {
                backend_err(boot_dir, "the board has no [uboot] section".to_string())
            })?;
            if uboot.env.storage != EnvStorageKind::FatFile {
                return Err(backend_err(
                    boot_dir,
                    "the U-Boot env is in SPI flash, which machined cannot reach yet".to_string(),
                ));
            }
            let file = boot_dir.join(uboot.env.file.as_deref().unwrap_or("uboot.env"));
            let size = uboot.env.size as usize;
            let layout = if uboot.env.redundant {
                EnvLayout::redundant(size)
            } else {
                EnvLayout::single(size)
            };
            let env = UbootEnv::load(FileStore::new(&file), layout)
                .map_err(|e| backend_err(&file, e.to_string()))?;
            let name = format!("u-boot env {}", file.display());
            Ok((Box::new(UbootBootloader::new(env, Some(booted))), name))
        }
        BootloaderFamily::UefiSystemdBoot => {
            let esp = DirEsp::new(boot_dir);
            let name = format!("systemd-boot entries on {}", boot_dir.display());
            // systemd-boot loads kernels only from the ESP: an upgrade copies the slot's
            // kernel (the board's slot file) and initramfs there.
            let boot = SystemdBoot::new(esp, Some(booted))
                .with_slot_files(SlotBootFiles::new(&board.kernel.slot_file));
            Ok((Box::new(boot), name))
        }
        BootloaderFamily::RpiTryboot => {
            let esp = DirEsp::new(boot_dir);
            let tryboot = Tryboot::new(
                esp,
                SlotPartitions::default(),
                Some(booted),
                Some(Path::new("/proc/device-tree")),
            )
            .map_err(|e| backend_err(boot_dir, e.to_string()))?;
            let name = format!("tryboot autoboot.txt on {}", boot_dir.display());
            Ok((Box::new(tryboot), name))
        }
    }
}

/// The conditions for committing a trial boot.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The API's address (a wildcard address is checked on loopback).
    pub api: SocketAddr,
    /// Whether the root passed its full verity read.
    pub root_verified: bool,
    /// Whether the stored configuration was applied (true when there is none).
    pub config_applied: bool,
}

impl HealthCheck {
    /// The checks that fail now; empty when healthy.
    pub async fn failing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.root_verified {
            out.push("root filesystem not verified".to_string());
        }
        if !self.config_applied {
            out.push("configuration not applied".to_string());
        }
        let mut target = self.api;
        if target.ip().is_unspecified() {
            target.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(target),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => out.push(format!("API on {target} not accepting connections: {e}")),
            Err(_) => out.push(format!("API on {target} did not answer within 2 s")),
        }
        out
    }
}

/// A service the node is healthy only with, as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalService {
    /// Its name.
    pub name: String,
    /// Running and healthy.
    pub running: bool,
    /// Retrying a start that failed for a reason that may go away (its image pull).
    pub waiting_for_runtime: bool,
    /// Its state and message, for the console.
    pub detail: String,
}

/// What one round of health checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthFacts {
    /// The failing checks of [`HealthCheck::failing`].
    pub failing_checks: Vec<String>,
    /// The critical services.
    pub critical: Vec<CriticalService>,
    /// Whether the booted slot is on trial.
    pub on_trial: bool,
    /// Time since the checks started.
    pub elapsed: Duration,
}

/// What to do after a round of health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy: mark the booted slot good.
    Commit,
    /// Not yet healthy: check again (the reasons, for the console).
    Wait(Vec<String>),
    /// A trial that did not become healthy in time: reboot so the bootloader counts it.
    Reboot(Vec<String>),
}

/// The verdict on `facts` (pure).
pub fn decide(facts: &HealthFacts) -> Verdict {
    let mut failing = facts.failing_checks.clone();
    for s in &facts.critical {
        if !s.running && !s.waiting_for_runtime {
            failing.push(format!(
                "critical service {} is not running: {}",
                s.name, s.detail
            ));
        }
    }
    if failing.is_empty() {
        Verdict::Commit
    } else if facts.on_trial && facts.elapsed > TRIAL_DEADLINE {
        Verdict::Reboot(failing)
    } else {
        Verdict::Wait(failing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_bootloader::env::EnvUpdate;

    fn critical(name: &str, running: bool, waiting_for_runtime: bool) -> CriticalService {
        CriticalService {
            name: name.into(),
            running,
            waiting_for_runtime,
            detail: "backoff: exited with code 1".into(),
        }
    }

    #[test]
    fn verdicts() {
        let healthy = HealthFacts {
            failing_checks: vec![],
            critical: vec![critical("containerd", true, false)],
            on_trial: true,
            elapsed: Duration::from_secs(5),
        };
        assert_eq!(decide(&healthy), Verdict::Commit);
        let crashing = HealthFacts {
            critical: vec![
                critical("containerd", true, false),
                critical("app", false, false),
            ],
            ..healthy.clone()
        };
        assert_eq!(
            decide(&crashing),
            Verdict::Wait(vec![
                "critical service app is not running: backoff: exited with code 1".into()
            ])
        );
        let late = HealthFacts {
            elapsed: TRIAL_DEADLINE + Duration::from_secs(1),
            ..crashing.clone()
        };
        assert!(matches!(decide(&late), Verdict::Reboot(r) if r.len() == 1));
        let committed_slot = HealthFacts {
            on_trial: false,
            ..late.clone()
        };
        assert!(
            matches!(decide(&committed_slot), Verdict::Wait(_)),
            "a committed slot is never abandoned"
        );
        let pulling = HealthFacts {
            critical: vec![critical("app", false, true)],
            ..late.clone()
        };
        assert_eq!(
            decide(&pulling),
            Verdict::Commit,
            "an image pull that keeps failing does not roll an upgrade back"
        );
        let no_api = HealthFacts {
            failing_checks: vec!["API on 127.0.0.1:50000 not accepting connections".into()],
            critical: vec![],
            ..late
        };
        assert!(matches!(decide(&no_api), Verdict::Reboot(_)));
    }

    #[tokio::test]
    async fn health_check_reports_each_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ok = HealthCheck {
            api: addr,
            root_verified: true,
            config_applied: true,
        };
        assert!(ok.failing().await.is_empty());
        let bad = HealthCheck {
            root_verified: false,
            config_applied: false,
            ..ok.clone()
        };
        assert_eq!(bad.failing().await.len(), 2);
        drop(listener);
        let closed = ok.failing().await;
        assert_eq!(closed.len(), 1, "{closed:?}");
        assert!(closed[0].contains("not accepting"), "{closed:?}");
    }

    #[test]
    fn uboot_board_opens_the_env_file_on_boot() {
        let dir = tempfile::tempdir().unwrap();
        let board = Board::load("qemu-arm64").unwrap();
        // A fresh env as basalt-image writes it: slot A first.
        let file = dir.path().join("uboot.env");
        let mut env = UbootEnv::load_or_default(
            FileStore::new(&file),
            EnvLayout::single(0x4000),
            Default::default(),
        )
        .unwrap();
        let update = EnvUpdate::new()
            .set("BOOT_ORDER", "A")
            .set("BOOT_A_LEFT", "3")
            .set("BOOT_B_LEFT", "0");
        env.apply(&update).unwrap();
        let (mut boot, name) = open_bootloader(&board, dir.path(), Slot::A).unwrap();
        assert!(name.contains("uboot.env"), "{name}");
        let status = boot.status().unwrap();
        assert_eq!(status.booted, Some(Slot::A));
        boot.mark_good(Slot::A).unwrap();
        assert!(boot.status().unwrap().committed);
    }

    #[test]
    fn missing_board_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = slot_board(dir.path()).unwrap_err().to_string();
        assert!(e.contains("basalt/board"), "{e}");
    }
}
