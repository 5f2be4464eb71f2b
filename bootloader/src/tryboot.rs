//! The Raspberry Pi firmware's own A/B mechanism: `autoboot.txt` on the FAT BOOT partition
//! plus the one-shot `tryboot` reboot flag (Pi 4/5 bootloader EEPROM, no U-Boot).
//!
//! ```text
//! [all]
//! tryboot_a_b=1
//! boot_partition=2      <- the committed slot: every normal boot
//! [tryboot]
//! boot_partition=3      <- booted once after `reboot "0 tryboot"`
//! ```
//!
//! Slot A/B map to configured partition numbers ([`SlotPartitions`]). The `[tryboot]` line
//! names the other slot while it may be tried (after an update, or as the previous good
//! system for a rollback); pointing it at the committed slot disables the other slot.
//!
//! `reboot "0 tryboot"` sets a flag in the firmware that survives one reboot only, so a
//! trial is one attempt whatever `tries` says: `tries_left` is 1 for a pending trial, 0 once
//! it runs. The OS sees a tryboot boot in `/proc/device-tree/chosen/bootloader/tryboot`
//! (a big-endian `u32` cell, 1 = tryboot). If the trial system never commits, the next
//! reboot of any kind starts the committed slot again.
//!
//! | operation | effect |
//! |---|---|
//! | `activate(t, _)` | `[tryboot]` → `t`; [`Tryboot::required_reboot`] becomes [`RebootMode::Tryboot`]: machined must reboot with `reboot "0 tryboot"` |
//! | `mark_good(t)` on the trial | `[all]` → `t`, `[tryboot]` → the previous slot (the rollback target) |
//! | `prepare_update(t)`, `mark_bad(t)` | `[tryboot]` → the committed slot; refused for the committed slot itself |
//! | `rollback()` during a trial | `[tryboot]` → the committed slot, which the next normal boot starts |
//! | `rollback()` from the committed slot | the other slot is tried once with a tryboot reboot, as after an update; `mark_good` commits it |
//!
//! Every change replaces `autoboot.txt` atomically through [`EspFs`]. The tryboot request
//! lives in this object only (the firmware flag is set by the reboot itself); a failed trial
//! cannot be recognised afterwards, so `last_failed` is always `None`.

use std::path::{Path, PathBuf};

use crate::backend::{Bootloader, BootloaderError};
use crate::slot::{BootStatus, Slot, SlotState};
use crate::systemd_boot::{EspError, EspFs};

/// File name of the firmware's A/B configuration on the BOOT partition.
pub const AUTOBOOT_TXT: &str = "autoboot.txt";
/// The firmware reads at most this many bytes of `autoboot.txt`.
pub const AUTOBOOT_MAX_LEN: usize = 512;
/// The argument of `reboot` that requests a one-shot tryboot.
pub const TRYBOOT_REBOOT_ARG: &str = "0 tryboot";
/// The tryboot flag, relative to the device-tree root (`/proc/device-tree`).
pub const TRYBOOT_FLAG: &str = "chosen/bootloader/tryboot";

/// A failed tryboot operation.
#[derive(Debug, thiserror::Error)]
pub enum TrybootError {
    /// The BOOT partition could not be read or written.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// `autoboot.txt` has a line this backend does not understand.
    #[error("autoboot.txt line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// `autoboot.txt` would be too long for the firmware.
    #[error("autoboot.txt is {len} bytes; the firmware reads at most 512")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// A `boot_partition` that is neither slot's partition.
    #[error("autoboot.txt boot_partition={partition} is neither slot A ({a}) nor slot B ({b})")]
    UnknownPartition {
        /// The partition number found.
        partition: u32,
        /// Slot A's partition.
        a: u32,
        /// Slot B's partition.
        b: u32,
    },
    /// The tryboot flag could not be read.
    #[error("failed to read the tryboot flag {path}: {source}")]
    DeviceTree {
        /// The flag's path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The tryboot flag is not one 32-bit cell.
    #[error("tryboot flag {path} has {len} bytes, expected one big-endian u32 cell")]
    BadFlag {
        /// The flag's path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The transition is not allowed in the current state.
    #[error("{0}")]
    Refused(String),
}

/// The partition numbers of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPartitions {
    /// Partition of slot A.
    pub a: u32,
    /// Partition of slot B.
    pub b: u32,
}

impl Default for SlotPartitions {
    /// BOOT = 1, SYSTEM-A = 2, SYSTEM-B = 3.
    fn default() -> Self {
        SlotPartitions { a: 2, b: 3 }
    }
}

impl SlotPartitions {
    /// The partition of `slot`.
    pub fn partition(self, slot: Slot) -> u32 {
        match slot {
            Slot::A => self.a,
            Slot::B => self.b,
        }
    }

    /// The slot on `partition`.
    pub fn slot(self, partition: u32) -> Result<Slot, TrybootError> {
        match partition {
            p if p == self.a => Ok(Slot::A),
            p if p == self.b => Ok(Slot::B),
            partition => Err(TrybootError::UnknownPartition {
                partition,
                a: self.a,
                b: self.b,
            }),
        }
    }
}

/// The content of `autoboot.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Autoboot {
    /// `[all] boot_partition`: what every normal boot starts.
    pub boot_partition: u32,
    /// `[tryboot] boot_partition`: what a tryboot reboot starts.
    pub tryboot_partition: u32,
}

impl Autoboot {
    /// The file content.
    pub fn render(&self) -> String {
        format!(
            "[all]\ntryboot_a_b=1\nboot_partition={}\n[tryboot]\nboot_partition={}\n",
            self.boot_partition, self.tryboot_partition
        )
    }

    /// Parses `autoboot.txt`: sections `[all]` and `[tryboot]`, keys `boot_partition` and
    /// `tryboot_a_b` (which must be set to 1), `#` comments. Anything else is refused rather than lost on
    /// the next rewrite. Without a `[tryboot] boot_partition` the firmware uses `[all]`'s.
    pub fn parse(text: &str) -> Result<Self, TrybootError> {
        if text.len() > AUTOBOOT_MAX_LEN {
            return Err(TrybootError::TooLarge { len: text.len() });
        }
        let (mut section, mut a_b, mut all, mut tryboot) = ("all", false, None, None);
        for (index, raw) in text.lines().enumerate() {
            let err = |reason: String| TrybootError::Parse {
                line: index + 1,
                reason,
            };
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = match name {
                    "all" => "all",
                    "tryboot" => "tryboot",
                    other => return Err(err(format!("unsupported section [{other}]"))),
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(format!("expected key=value, found {line:?}")));
            };
            let number = || {
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| err(format!("{key} needs a number, found {value:?}")))
            };
            match (section, key.trim()) {
                ("all", "tryboot_a_b") => a_b = number()? == 1,
                ("all", "boot_partition") => all = Some(number()?),
                ("tryboot", "boot_partition") => tryboot = Some(number()?),
                (section, key) => return Err(err(format!("unsupported key {key} in [{section}]"))),
            }
        }
        let missing = |reason: &str| TrybootError::Parse {
            line: 0,
            reason: reason.to_string(),
        };
        if !a_b {
            return Err(missing("[all] must set tryboot_a_b=1"));
        }
        let boot_partition = all.ok_or_else(|| missing("[all] has no boot_partition"))?;
        Ok(Autoboot {
            boot_partition,
            tryboot_partition: tryboot.unwrap_or(boot_partition),
        })
    }
}

/// How machined must reboot for the next boot to do what the backend was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebootMode {
    /// A plain reboot.
    Normal,
    /// `reboot "0 tryboot"` ([`TRYBOOT_REBOOT_ARG`]): start the `[tryboot]` partition once.
    Tryboot,
}

impl RebootMode {
    /// The argument for the `reboot(2)` `LINUX_REBOOT_CMD_RESTART2` call, if any.
    pub fn reboot_argument(self) -> Option<&'static str> {
        match self {
            RebootMode::Normal => None,
            RebootMode::Tryboot => Some(TRYBOOT_REBOOT_ARG),
        }
    }
}

/// Whether this boot is a tryboot, from the device tree under `device_tree_root`
/// (normally `/proc/device-tree`). A missing flag (older firmware) means no.
pub fn read_tryboot_flag(device_tree_root: &Path) -> Result<bool, TrybootError> {
    let path = device_tree_root.join(TRYBOOT_FLAG);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(TrybootError::DeviceTree { path, source }),
    };
    let cell: [u8; 4] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| TrybootError::BadFlag {
            path,
            len: bytes.len(),
        })?;
    Ok(u32::from_be_bytes(cell) != 0)
}

/// Writes a fresh `autoboot.txt`: `committed` boots; the other slot is the `[tryboot]`
/// target when `other_bootable`, else `[tryboot]` names `committed` too.
pub fn install_autoboot<E: EspFs>(
    esp: &mut E,
    partitions: SlotPartitions,
    committed: Slot,
    other_bootable: bool,
) -> Result<(), TrybootError> {
    let tryboot = if other_bootable {
        committed.other()
    } else {
        committed
    };
    let autoboot = Autoboot {
        boot_partition: partitions.partition(committed),
        tryboot_partition: partitions.partition(tryboot),
    };
    esp.write_file_atomic(AUTOBOOT_TXT, autoboot.render().as_bytes())?;
    Ok(())
}

/// The tryboot backend on a BOOT partition.
#[derive(Debug)]
pub struct Tryboot<E: EspFs> {
    esp: E,
    partitions: SlotPartitions,
    booted: Option<Slot>,
    tryboot_active: bool,
    reboot: RebootMode,
}

/// The slots named by `autoboot.txt`.
#[derive(Debug, Clone, Copy)]
struct State {
    committed: Slot,
    tryboot: Slot,
}

impl<E: EspFs> Tryboot<E> {
    /// The backend on `esp`. `booted` is the running slot (`basalt.slot=`); `device_tree_root`
    /// (normally `/proc/device-tree`) tells whether this boot is a tryboot; when `booted` is
    /// `None` it is derived from that flag and `autoboot.txt`. Both `None`: an image seen
    /// from outside.
    pub fn new(
        esp: E,
        partitions: SlotPartitions,
        booted: Option<Slot>,
        device_tree_root: Option<&Path>,
    ) -> Result<Self, TrybootError> {
        let tryboot_active = match device_tree_root {
            Some(root) => read_tryboot_flag(root)?,
            None => false,
        };
        let mut backend = Tryboot {
            esp,
            partitions,
            booted,
            tryboot_active,
            reboot: RebootMode::Normal,
        };
        if backend.booted.is_none() && device_tree_root.is_some() {
            let state = backend.state()?;
            backend.booted = Some(if tryboot_active {
                state.tryboot
            } else {
                state.committed
            });
        }
        Ok(backend)
    }

    /// Whether this boot is a tryboot.
    pub fn tryboot_active(&self) -> bool {
        self.tryboot_active
    }

    /// How machined must reboot next.
    pub fn required_reboot(&self) -> RebootMode {
        self.reboot
    }

    /// The BOOT partition.
    pub fn esp(&self) -> &E {
        &self.esp
    }

    /// The current `autoboot.txt`.
    pub fn read_autoboot(&self) -> Result<Autoboot, TrybootError> {
        let bytes = self.esp.read_file(AUTOBOOT_TXT)?;
        Autoboot::parse(&String::from_utf8_lossy(&bytes))
    }

    fn state(&self) -> Result<State, TrybootError> {
        let autoboot = self.read_autoboot()?;
        Ok(State {
            committed: self.partitions.slot(autoboot.boot_partition)?,
            tryboot: self.partitions.slot(autoboot.tryboot_partition)?,
        })
    }

    fn write(&mut self, committed: Slot, tryboot: Slot) -> Result<(), TrybootError> {
        let autoboot = Autoboot {
            boot_partition: self.partitions.partition(committed),
            tryboot_partition: self.partitions.partition(tryboot),
        };
        self.esp
            .write_file_atomic(AUTOBOOT_TXT, autoboot.render().as_bytes())?;
        Ok(())
    }

    /// Whether the running system is the trial started by a tryboot reboot.
    fn trial_running(&self, state: State) -> bool {
        self.tryboot_active
            && state.tryboot != state.committed
            && self.booted == Some(state.tryboot)
    }

    fn status_of(&self, state: State) -> BootStatus {
        let (committed, other) = (state.committed, state.committed.other());
        let enabled = state.tryboot == other;
        let running = self.trial_running(state);
        let pending = enabled && self.reboot == RebootMode::Tryboot;
        let order = match (enabled, pending) {
            (true, true) => vec![other, committed],
            (true, false) => vec![committed, other],
            (false, _) => vec![committed],
        };
        let slots = Slot::ALL
            .into_iter()
            .map(|slot| SlotState {
                slot,
                bootable: slot == committed || enabled,
                tries_left: (slot == other && enabled).then_some(u32::from(!running)),
            })
            .collect();
        BootStatus {
            booted: self.booted,
            order,
            slots,
            committed: self.booted == Some(committed),
            trial: (running || pending).then_some(other),
            last_failed: None,
        }
    }

    fn refuse<T>(&self, message: String) -> Result<T, TrybootError> {
        Err(TrybootError::Refused(message))
    }

    fn do_prepare_update(&mut self, target: Slot) -> Result<(), TrybootError> {
        let state = self.state()?;
        if self.booted == Some(target) {
            return self.refuse(format!(
                "slot {target} is the running system and cannot receive an update"
            ));
        }
        if target == state.committed {
            return self.refuse(format!(
                "slot {target} is the committed slot in autoboot.txt; commit or roll back to the other slot first"
            ));
        }
        self.disable(state)
    }

    /// Points `[tryboot]` at the committed slot: the other slot is not started any more.
    fn disable(&mut self, state: State) -> Result<(), TrybootError> {
        self.reboot = RebootMode::Normal;
        if state.tryboot != state.committed {
            self.write(state.committed, state.committed)?;
        }
        Ok(())
    }

    fn do_activate(&mut self, target: Slot, tries: u32) -> Result<(), TrybootError> {
        if tries == 0 {
            return self.refuse(format!("activating slot {target} needs at least one try"));
        }
        let state = self.state()?;
        if target == state.committed {
            self.reboot = RebootMode::Normal;
            return Ok(());
        }
        if state.tryboot != target {
            self.write(state.committed, target)?;
        }
        self.reboot = RebootMode::Tryboot;
        Ok(())
    }

    fn do_mark_good(&mut self, booted: Slot) -> Result<(), TrybootError> {
        if let Some(running) = self.booted.filter(|r| *r != booted) {
            return self.refuse(format!(
                "cannot mark slot {booted} good: the running system booted from slot {running}"
            ));
        }
        let state = self.state()?;
        if booted == state.committed {
            return Ok(());
        }
        if booted != state.tryboot {
            return self.refuse(format!(
                "slot {booted} is neither committed nor enabled for tryboot in autoboot.txt"
            ));
        }
        self.write(booted, state.committed)?;
        self.reboot = RebootMode::Normal;
        Ok(())
    }

    fn do_mark_bad(&mut self, slot: Slot) -> Result<(), TrybootError> {
        let state = self.state()?;
        if slot == state.committed {
            return self.refuse(format!(
                "slot {slot} is the committed slot in autoboot.txt; tryboot cannot disable it (use rollback)"
            ));
        }
        self.disable(state)
    }

    fn do_rollback(&mut self) -> Result<Slot, TrybootError> {
        let state = self.state()?;
        let current = self.booted.unwrap_or(state.committed);
        if current != state.committed {
            // Running (or about to run) the trial: the next normal boot is the committed slot.
            self.disable(state)?;
            return Ok(state.committed);
        }
        let other = current.other();
        if state.tryboot != other {
            return self.refuse(format!(
                "cannot roll back to slot {other}: autoboot.txt does not enable it for tryboot"
            ));
        }
        self.reboot = RebootMode::Tryboot;
        Ok(other)
    }

    fn map_err(&self, error: TrybootError) -> BootloaderError {
        match error {
            TrybootError::Refused(message) => BootloaderError::Refused(message),
            other => BootloaderError::Storage {
                backend: format!("tryboot {AUTOBOOT_TXT} on {}", self.esp.describe()),
                source: Box::new(other),
            },
        }
    }
}

impl<E: EspFs> Bootloader for Tryboot<E> {
    /// `tries_left`: `None` for the committed slot, 1 for a slot a tryboot reboot would start,
    /// 0 while that trial runs. `trial`: the other slot while a tryboot is pending or running.
    fn status(&self) -> Result<BootStatus, BootloaderError> {
        let state = self.state().map_err(|e| self.map_err(e))?;
        Ok(self.status_of(state))
    }

    fn prepare_update(&mut self, target: Slot) -> Result<(), BootloaderError> {
        self.do_prepare_update(target).map_err(|e| self.map_err(e))
    }

    fn activate(&mut self, target: Slot, tries: u32) -> Result<(), BootloaderError> {
        self.do_activate(target, tries).map_err(|e| self.map_err(e))
    }

    fn mark_good(&mut self, booted: Slot) -> Result<(), BootloaderError> {
        self.do_mark_good(booted).map_err(|e| self.map_err(e))
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootloaderError> {
        self.do_mark_bad(slot).map_err(|e| self.map_err(e))
    }

    fn rollback(&mut self) -> Result<Slot, BootloaderError> {
        self.do_rollback().map_err(|e| self.map_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoboot_round_trip_and_defaults() {
        let autoboot = Autoboot {
            boot_partition: 2,
            tryboot_partition: 3,
        };
        let text = autoboot.render();
        assert_eq!(
            text,
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
        );
        assert_eq!(Autoboot::parse(&text).unwrap(), autoboot);
        let short = Autoboot::parse("# comment\ntryboot_a_b=1\nboot_partition=3\n").unwrap();
        assert_eq!(short.tryboot_partition, 3, "[tryboot] defaults to [all]");
    }

    #[test]
    fn autoboot_refuses_what_it_would_lose() {
        for (text, needle) in [
            ("[all]\nboot_partition=2\n", "tryboot_a_b=1"),
            ("[all]\ntryboot_a_b=1\n", "no boot_partition"),
            ("[all]\ntryboot_a_b=1\nboot_partition=2\n[pi4]\n", "[pi4]"),
            ("[all]\ntryboot_a_b=1\nboot_partition=x\n", "number"),
            (
                "[all]\ntryboot_a_b=1\nboot_partition=2\nkernel=x\n",
                "kernel",
            ),
            ("[all]\ntryboot_a_b=1\nnonsense\n", "key=value"),
        ] {
            let err = Autoboot::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        let long = format!("{}tryboot_a_b=1\nboot_partition=2\n", "#".repeat(600));
        assert!(matches!(
            Autoboot::parse(&long),
            Err(TrybootError::TooLarge { .. })
        ));
    }

    #[test]
    fn partitions_map_to_slots() {
        let parts = SlotPartitions { a: 5, b: 6 };
        assert_eq!(parts.slot(6).unwrap(), Slot::B);
        assert_eq!(parts.partition(Slot::A), 5);
        let err = parts.slot(2).unwrap_err().to_string();
        assert!(
            err.contains("boot_partition=2") && err.contains("(5)"),
            "{err}"
        );
    }

    #[test]
    fn reboot_argument() {
        assert_eq!(RebootMode::Tryboot.reboot_argument(), Some("0 tryboot"));
        assert_eq!(RebootMode::Normal.reboot_argument(), None);
    }
}
