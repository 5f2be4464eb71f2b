//! System slots and the [`Bootloader`] trait every backend implements.
//!
//! A Basalt disk has two system slots, `A` and `B`. One booted; the other receives
//! upgrades. A backend (U-Boot environment, systemd-boot loader entries, Raspberry Pi
//! tryboot, memory for tests) stores which slot boots next and how many tries it has left.

use std::fmt;
use std::str::FromStr;

/// One of the two system slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    /// Slot A (partition label `SYSTEM-A`).
    A,
    /// Slot B (partition label `SYSTEM-B`).
    B,
}

impl Slot {
    /// Both slots, in order.
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// The letter used in variables, file names and on the kernel command line.
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }

    /// The partition label of this slot.
    pub fn partition_label(self) -> &'static str {
        match self {
            Slot::A => "SYSTEM-A",
            Slot::B => "SYSTEM-B",
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letter())
    }
}

/// A slot name that is neither `A` nor `B`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid slot name {0:?}: expected A or B")]
pub struct ParseSlotError(pub String);

impl FromStr for Slot {
    type Err = ParseSlotError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            other => Err(ParseSlotError(other.to_string())),
        }
    }
}

/// What a backend knows about one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// The slot described.
    pub slot: Slot,
    /// Whether the bootloader will consider this slot at all (in the boot order, not
    /// marked bad).
    pub bootable: bool,
    /// Boot attempts left before the bootloader gives up on the slot; `None` when the
    /// backend does not count (a blessed systemd-boot entry, a committed tryboot slot).
    pub tries_left: Option<u32>,
}

/// The boot state as a backend reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStatus {
    /// The slot the running system booted from, when known (from `basalt.slot=` on the
    /// kernel command line); `None` when inspecting an image from outside.
    pub booted: Option<Slot>,
    /// The slots in the order the bootloader tries them next boot.
    pub order: Vec<Slot>,
    /// Per-slot state, A then B.
    pub slots: Vec<SlotState>,
    /// Whether the booted slot is committed (marked good): `false` while it runs on trial.
    pub committed: bool,
    /// The slot activated by an update or rollback and not yet committed, if any.
    pub trial: Option<Slot>,
    /// The slot of the last trial that failed (ran out of tries or was refused by the
    /// firmware) and was never committed, when the backend records it.
    pub last_failed: Option<Slot>,
}

impl BootStatus {
    /// The slot the bootloader will pick next boot, if any has tries left.
    pub fn next_boot(&self) -> Option<Slot> {
        self.order.iter().copied().find(|slot| {
            self.slots
                .iter()
                .any(|s| s.slot == *slot && s.bootable && s.tries_left.is_none_or(|t| t > 0))
        })
    }
}
