//! The systemd-boot backend: A/B slots as two loader entries with boot counting in the file
//! name, on an ESP reached through [`EspFs`] (a mounted directory, [`DirEsp`], or a FAT
//! volume inside an image or block device, [`FatEsp`]).
//!
//! Layout on the ESP:
//!
//! ```text
//! loader/loader.conf               default basalt-*   (matches both slots)
//! loader/entries/basalt-a.conf     blessed: no counter
//! loader/entries/basalt-b+3.conf   on trial: 3 tries left
//! basalt/a/vmlinuz, initrd.img ... kernels referenced by `linux`/`initrd` (SlotEntry::standard)
//! ```
//!
//! Each entry carries `sort-key basalt` and `version <priority>`; the slot with the highest
//! priority among entries that are not bad boots first. systemd-boot's rules are in
//! [`entry`]; [`SystemdBoot::inspect`] applies them to report what it will boot next.
//!
//! | operation | files |
//! |---|---|
//! | `prepare_update(t)`, `mark_bad(t)` | rename `t`'s entry to `+0-DONE` (bad: sorted last) |
//! | `activate(t, n)` | rename `t`'s entry to `+n` (still lower priority), then rewrite it with the highest priority: the commit |
//! | `mark_good(b)` | rename `b`'s entry to the name without counter (what `systemd-bless-boot` does) |
//! | `rollback()` | rewrite the other entry with the highest priority (commit), then mark the current one bad |
//!
//! Every step is one atomic rename or write; a crash between two steps leaves the old or
//! the new boot choice, never a slot that is half written and preferred. Kernel files are
//! not touched: write them, then the entry content with [`SystemdBoot::write_entry`], between
//! `prepare_update` and `activate`. `activate` refuses a slot whose kernel is missing
//! (systemd-boot would silently skip the entry).
//!
//! Kernels: systemd-boot reads them only from the ESP, so each slot's kernel and initramfs
//! are copied to `basalt/<a|b>/` there after the slot is written and before `activate`
//! ([`slot_boot`], [`Bootloader::install_slot_boot_files`]).
//!
//! Limits: EFI variables (`LoaderEntryDefault`, `LoaderEntryOneShot`) would override the
//! choice; Basalt never sets them and the model assumes they are unset. A slot booted on its
//! last try is already renamed to `+0-N` by systemd-boot: it reports as bad until
//! `mark_good` blesses it. The tryboot backend ([`crate::tryboot`]) reuses [`EspFs`].
//!
//! Checked with Debian 12's systemd-boot 252 under OVMF on an ESP written by [`FatEsp`]: it
//! booted `basalt-b+3.conf` and renamed it `+2-1`, `+1-2`, `+0-3`, then fell back to
//! `basalt-a.conf`; and it preferred `basalt-a+3.conf` (version 4) over `basalt-b.conf`
//! (version 3), although B sorts first by name.

pub mod entry;
pub mod esp;
pub mod fat;
mod fat_fix;
pub mod install;
pub mod slot_boot;

pub use entry::{BootCounter, ENTRIES_DIR, EntryFileName, LOADER_CONF, SORT_KEY};
pub use esp::{DirEntry, DirEsp, EspError, EspFs};
pub use fat::{FatEsp, FatType, FileSlice, format_fat};
pub use install::{EntrySet, InactiveSlot, LoaderConfig, SlotEntry, install_entry_set};
pub use slot_boot::{SlotBootFiles, install_slot_boot};

use crate::backend::{Bootloader, BootloaderError};
use crate::slot::{BootStatus, Slot, SlotState};
use entry::{SortFields, compare_entries, fnmatch, last_value, set_version};

/// A failed systemd-boot operation.
#[derive(Debug, thiserror::Error)]
pub enum SystemdBootError {
    /// The ESP could not be read or written.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// An entry Basalt must rewrite is not UTF-8.
    #[error("loader entry {path} on {esp} is not UTF-8")]
    NotUtf8 {
        /// Entry path.
        path: String,
        /// Which ESP.
        esp: String,
    },
    /// Entry content that cannot be written.
    #[error("invalid loader entry: {0}")]
    InvalidEntry(String),
    /// The transition is not allowed in the current state.
    #[error("{0}")]
    Refused(String),
}

/// One loader entry as systemd-boot sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryState {
    /// File name in `loader/entries`.
    pub file_name: String,
    /// The Basalt slot, for `basalt-a*`/`basalt-b*` entries.
    pub slot: Option<Slot>,
    /// Boot counter from the file name.
    pub counter: Option<BootCounter>,
    /// `version` as a number (Basalt's priority), when it is one.
    pub priority: Option<u64>,
    /// Whether the `linux` (or `efi`) file exists: systemd-boot skips the entry otherwise.
    pub loadable: bool,
    /// The `linux` (or `efi`) path.
    pub linux: Option<String>,
    fields: SortFields,
}

impl EntryState {
    /// Whether the entry has no tries left.
    pub fn is_bad(&self) -> bool {
        self.fields.is_bad()
    }

    fn path(&self) -> String {
        format!("{ENTRIES_DIR}/{}", self.file_name)
    }
}

/// The loader entries in the order systemd-boot lists them, and its pick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspState {
    /// Loadable entries in systemd-boot's order, then unloadable ones (which it ignores).
    pub entries: Vec<EntryState>,
    /// The `default` glob from `loader.conf`, lower-cased (`@saved` counts as none).
    pub default_pattern: Option<String>,
    /// Index in `entries` of the entry systemd-boot boots next.
    pub selected: Option<usize>,
}

impl EspState {
    /// The entry systemd-boot prefers for `slot` (the first of that slot in its order).
    pub fn slot_entry(&self, slot: Slot) -> Option<&EntryState> {
        self.entries.iter().find(|e| e.slot == Some(slot))
    }

    /// The entry systemd-boot boots next.
    pub fn next_entry(&self) -> Option<&EntryState> {
        self.selected.and_then(|i| self.entries.get(i))
    }

    fn bootable(&self, slot: Slot) -> bool {
        self.slot_entry(slot)
            .is_some_and(|e| e.loadable && !e.is_bad())
    }

    fn max_priority(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.slot.is_some())
            .filter_map(|e| e.priority)
            .max()
            .unwrap_or(0)
    }
}

/// The systemd-boot backend on an ESP.
#[derive(Debug)]
pub struct SystemdBoot<E: EspFs> {
    esp: E,
    booted: Option<Slot>,
    slot_files: Option<SlotBootFiles>,
}

impl<E: EspFs> SystemdBoot<E> {
    /// The backend on `esp`; `booted` is the running slot (`basalt.slot=` on the kernel
    /// command line), `None` when working on an image from outside.
    pub fn new(esp: E, booted: Option<Slot>) -> Self {
        SystemdBoot {
            esp,
            booted,
            slot_files: None,
        }
    }

    /// Where the kernel and initramfs are inside a slot partition, for
    /// [`Bootloader::install_slot_boot_files`] (which refuses without it).
    pub fn with_slot_files(mut self, files: SlotBootFiles) -> Self {
        self.slot_files = Some(files);
        self
    }

    /// The ESP.
    pub fn esp(&self) -> &E {
        &self.esp
    }

    /// Gives the ESP back.
    pub fn into_inner(self) -> E {
        self.esp
    }

    /// Reads `loader.conf` and all entries and applies systemd-boot's rules.
    pub fn inspect(&self) -> Result<EspState, SystemdBootError> {
        let default_pattern = match self.esp.read_file(LOADER_CONF) {
            Ok(bytes) => last_value(&String::from_utf8_lossy(&bytes), "default")
                .map(str::to_lowercase)
                .filter(|p| p != "@saved"),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let listing = match self.esp.list_dir(ENTRIES_DIR) {
            Ok(listing) => listing,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut entries = Vec::new();
        for item in listing.into_iter().filter(|e| !e.is_dir) {
            let Some(name) = EntryFileName::parse(&item.name) else {
                continue;
            };
            let path = format!("{ENTRIES_DIR}/{}", item.name);
            let content = String::from_utf8_lossy(&self.esp.read_file(&path)?).into_owned();
            let linux = last_value(&content, "linux")
                .or_else(|| last_value(&content, "efi"))
                .map(str::to_string);
            let loadable = match &linux {
                Some(linux) => self.esp.exists(linux)?,
                None => false,
            };
            let fields = SortFields::new(&item.name, &content);
            entries.push(EntryState {
                slot: name.slot(),
                counter: name.counter,
                priority: fields.version.as_deref().and_then(|v| v.parse().ok()),
                loadable,
                linux,
                file_name: item.name,
                fields,
            });
        }
        entries.sort_by(|a, b| {
            b.loadable
                .cmp(&a.loadable)
                .then_with(|| compare_entries(&a.fields, &b.fields))
        });
        let loadable = entries.iter().take_while(|e| e.loadable).count();
        let selected = default_pattern
            .as_deref()
            .and_then(|p| {
                entries[..loadable]
                    .iter()
                    .position(|e| fnmatch(p, &e.fields.id))
            })
            .or((loadable > 0).then_some(0));
        Ok(EspState {
            entries,
            default_pattern,
            selected,
        })
    }

    /// Writes the content of `slot`'s entry, keeping its file name (boot state) and
    /// priority; a slot without an entry gets one marked bad, for `activate` to enable.
    pub fn write_entry(&mut self, slot: Slot, entry: &SlotEntry) -> Result<(), SystemdBootError> {
        let state = self.inspect()?;
        let (path, priority) = match state.slot_entry(slot) {
            Some(current) => (current.path(), current.priority.unwrap_or(0)),
            None => {
                let bad = BootCounter {
                    left: 0,
                    done: None,
                };
                let name = EntryFileName::for_slot(slot, Some(bad)).to_file_name();
                (format!("{ENTRIES_DIR}/{name}"), 0)
            }
        };
        let text = entry.render(slot, priority)?;
        self.esp.write_file_atomic(&path, text.as_bytes())?;
        self.remove_duplicates(&state, slot, &[&path])
    }

    fn refused(&self, message: String) -> SystemdBootError {
        SystemdBootError::Refused(message)
    }

    fn read_text(&self, path: &str) -> Result<String, SystemdBootError> {
        String::from_utf8(self.esp.read_file(path)?).map_err(|_| SystemdBootError::NotUtf8 {
            path: path.to_string(),
            esp: self.esp.describe(),
        })
    }

    /// Deletes every entry of `slot` in `state` except the paths in `keep` (leftovers of an
    /// interrupted operation).
    fn remove_duplicates(
        &mut self,
        state: &EspState,
        slot: Slot,
        keep: &[&str],
    ) -> Result<(), SystemdBootError> {
        for entry in state.entries.iter().filter(|e| e.slot == Some(slot)) {
            let path = entry.path();
            if !keep.contains(&path.as_str()) {
                self.esp.delete(&path)?;
            }
        }
        Ok(())
    }

    /// Renames `slot`'s entry to `counter` (`None`: blessed), returns the new path.
    fn rename_entry(
        &mut self,
        state: &EspState,
        slot: Slot,
        counter: Option<BootCounter>,
    ) -> Result<Option<String>, SystemdBootError> {
        let Some(current) = state.slot_entry(slot) else {
            return Ok(None);
        };
        let target = format!(
            "{ENTRIES_DIR}/{}",
            EntryFileName::for_slot(slot, counter).to_file_name()
        );
        let current = current.path();
        if current != target {
            self.esp.rename(&current, &target)?;
        }
        self.remove_duplicates(state, slot, &[&current, &target])?;
        Ok(Some(target))
    }

    fn set_bad(&mut self, state: &EspState, slot: Slot) -> Result<(), SystemdBootError> {
        let done = state
            .slot_entry(slot)
            .and_then(|e| e.counter)
            .and_then(|c| c.done);
        self.rename_entry(state, slot, Some(BootCounter { left: 0, done }))?;
        Ok(())
    }

    /// Rewrites the entry at `path` with a priority above every other Basalt entry.
    fn promote(&mut self, state: &EspState, path: &str) -> Result<(), SystemdBootError> {
        let text = self.read_text(path)?;
        let priority = state.max_priority().saturating_add(1);
        let text = set_version(&text, &priority.to_string());
        self.esp.write_file_atomic(path, text.as_bytes())?;
        Ok(())
    }

    fn do_prepare_update(&mut self, target: Slot) -> Result<(), SystemdBootError> {
        if self.booted == Some(target) {
            return Err(self.refused(format!(
                "slot {target} is the running system and cannot receive an update"
            )));
        }
        let state = self.inspect()?;
        self.set_bad(&state, target)
    }

    fn do_activate(&mut self, target: Slot, tries: u32) -> Result<(), SystemdBootError> {
        if tries == 0 {
            return Err(self.refused(format!("activating slot {target} needs at least one try")));
        }
        let state = self.inspect()?;
        let Some(entry) = state.slot_entry(target) else {
            return Err(self.refused(format!(
                "slot {target} has no loader entry in {ENTRIES_DIR} on {}; write it first",
                self.esp.describe()
            )));
        };
        if !entry.loadable {
            return Err(self.refused(format!(
                "kernel {} of slot {target} ({}) is missing on {}",
                entry.linux.as_deref().unwrap_or("(no linux line)"),
                entry.file_name,
                self.esp.describe()
            )));
        }
        let counter = BootCounter {
            left: tries,
            done: None,
        };
        if let Some(path) = self.rename_entry(&state, target, Some(counter))? {
            self.promote(&state, &path)?;
        }
        Ok(())
    }

    fn do_mark_good(&mut self, booted: Slot) -> Result<(), SystemdBootError> {
        if let Some(running) = self.booted.filter(|r| *r != booted) {
            return Err(self.refused(format!(
                "cannot mark slot {booted} good: the running system booted from slot {running}"
            )));
        }
        let state = self.inspect()?;
        if state.slot_entry(booted).is_none() {
            return Err(self.refused(format!(
                "slot {booted} has no loader entry on {}",
                self.esp.describe()
            )));
        }
        self.rename_entry(&state, booted, None)?;
        Ok(())
    }

    fn do_mark_bad(&mut self, slot: Slot) -> Result<(), SystemdBootError> {
        let state = self.inspect()?;
        self.set_bad(&state, slot)
    }

    fn do_rollback(&mut self) -> Result<Slot, SystemdBootError> {
        let state = self.inspect()?;
        let current = self
            .booted
            .or_else(|| state.next_entry().and_then(|e| e.slot))
            .ok_or_else(|| self.refused("no Basalt slot is booted or boots next".to_string()))?;
        let other = current.other();
        if !state.bootable(other) {
            return Err(self.refused(format!(
                "cannot roll back to slot {other}: it has no loadable loader entry with tries left"
            )));
        }
        if let Some(entry) = state.slot_entry(other) {
            let path = entry.path();
            self.promote(&state, &path)?;
        }
        let state = self.inspect()?;
        self.set_bad(&state, current)?;
        Ok(other)
    }

    fn to_status(&self, state: &EspState) -> BootStatus {
        let mut order: Vec<Slot> = Vec::new();
        let loadable = state.entries.iter().filter(|e| e.loadable);
        for entry in state.next_entry().into_iter().chain(loadable) {
            if let Some(slot) = entry.slot.filter(|s| !order.contains(s)) {
                order.push(slot);
            }
        }
        let slots = Slot::ALL
            .into_iter()
            .map(|slot| SlotState {
                slot,
                bootable: state.bootable(slot),
                tries_left: state
                    .slot_entry(slot)
                    .and_then(|e| e.counter)
                    .map(|c| c.left),
            })
            .collect();
        let counter = |slot: Slot| state.slot_entry(slot).and_then(|e| e.counter);
        let committed = self
            .booted
            .is_some_and(|b| state.slot_entry(b).is_some_and(|e| e.counter.is_none()));
        let trial = self.booted.filter(|b| counter(*b).is_some()).or_else(|| {
            Slot::ALL
                .into_iter()
                .find(|s| counter(*s).is_some_and(|c| c.left > 0))
        });
        let last_failed = Slot::ALL.into_iter().find(|s| {
            Some(*s) != self.booted
                && counter(*s).is_some_and(|c| c.left == 0 && c.done.unwrap_or(0) > 0)
        });
        BootStatus {
            booted: self.booted,
            order,
            slots,
            committed,
            trial,
            last_failed,
        }
    }

    fn map_err(&self, error: SystemdBootError) -> BootloaderError {
        match error {
            SystemdBootError::Refused(message) => BootloaderError::Refused(message),
            other => BootloaderError::Storage {
                backend: format!("systemd-boot on {}", self.esp.describe()),
                source: Box::new(other),
            },
        }
    }
}

impl<E: EspFs> Bootloader for SystemdBoot<E> {
    /// Order: the entry systemd-boot picks, then the rest in its order. A blessed entry has
    /// `tries_left: None`. `committed`: the booted slot's entry is blessed (`false` when
    /// `booted` is unknown). `trial`: the booted slot while its entry still counts, else a
    /// slot whose entry has tries left. `last_failed`: a slot other than the booted one
    /// whose entry is `+0-N` with `N > 0` (tries used up, or marked bad during a trial).
    fn status(&self) -> Result<BootStatus, BootloaderError> {
        let state = self.inspect().map_err(|e| self.map_err(e))?;
        Ok(self.to_status(&state))
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

    /// Copies the slot's kernel and initramfs from the slot partition `device` to the ESP
    /// and writes its entry (still bad until `activate`): [`install_slot_boot`].
    fn install_slot_boot_files(
        &mut self,
        target: Slot,
        device: &std::path::Path,
    ) -> Result<(), BootloaderError> {
        let files = self.slot_files.clone().ok_or_else(|| {
            BootloaderError::Refused(format!(
                "systemd-boot on {} does not know the slot's file names",
                self.esp.describe()
            ))
        })?;
        let source = FatEsp::open_whole(device)
            .map(|f| f.with_label(&format!("slot {target}")))
            .map_err(|e| self.map_err(e.into()))?;
        install_slot_boot(self, target, &source, &files)
            .map(|_| ())
            .map_err(|e| self.map_err(e))
    }
}
