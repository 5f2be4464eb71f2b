//! The U-Boot backend: the [`Bootloader`] trait over a U-Boot environment.
//!
//! Every operation reloads the environment (so a change made by the boot script or by
//! `fw_setenv` since the last call is seen), computes the new variables with the pure
//! transitions of [`crate::boot_counting`], and stores them in **one** env write: in a
//! redundant layout the copy that is not current is written with flags+1 and synced, so a
//! power cut leaves the old or the new state, never a mix.
//!
//! Over a [`MemoryStore`](crate::env::MemoryStore) this is also the memory backend used by
//! machined's tests ([`UbootBootloader::in_memory`]).

use crate::backend::{Bootloader, BootloaderError};
use crate::boot_counting::{self, EnvVars, TransitionError};
use crate::env::{EnvError, EnvLayout, EnvStore, EnvUpdate, MemoryStore, UbootEnv};
use crate::slot::{BootStatus, Slot};

/// A [`Bootloader`] whose state lives in a U-Boot environment.
#[derive(Debug)]
pub struct UbootBootloader<S: EnvStore> {
    env: UbootEnv<S>,
    booted: Option<Slot>,
    name: String,
}

impl<S: EnvStore> UbootBootloader<S> {
    /// Wraps a loaded environment. `booted` is the slot the running system came from
    /// (`basalt.slot=` on the kernel command line), or `None` when inspecting from outside.
    pub fn new(env: UbootEnv<S>, booted: Option<Slot>) -> Self {
        let name = format!("u-boot env at {}", env.store().location(0));
        Self { env, booted, name }
    }

    /// The environment, e.g. to read other variables.
    pub fn env(&self) -> &UbootEnv<S> {
        &self.env
    }

    /// Gives the environment back.
    pub fn into_env(self) -> UbootEnv<S> {
        self.env
    }

    fn storage_error(&self, source: EnvError) -> BootloaderError {
        BootloaderError::Storage {
            backend: self.name.clone(),
            source: Box::new(source),
        }
    }

    fn current(&mut self) -> Result<EnvVars, BootloaderError> {
        self.env.reload().map_err(|e| self.storage_error(e))?;
        Ok(self.env.vars().clone())
    }

    /// Writes `new` in one env write: every changed variable set, every removed one unset.
    fn write(&mut self, old: &EnvVars, new: &EnvVars) -> Result<(), BootloaderError> {
        let update = diff(old, new);
        if update.is_empty() {
            return Ok(());
        }
        self.env
            .apply(&update)
            .map(|_| ())
            .map_err(|e| self.storage_error(e))
    }

    fn transition(
        &mut self,
        f: impl FnOnce(&EnvVars) -> Result<EnvVars, TransitionError>,
    ) -> Result<(), BootloaderError> {
        let old = self.current()?;
        let new = f(&old).map_err(refused)?;
        self.write(&old, &new)
    }
}

impl UbootBootloader<MemoryStore> {
    /// A backend over a redundant env in memory holding a fresh image's variables (slot A
    /// active and committed): the memory backend for tests.
    pub fn in_memory(booted: Option<Slot>) -> Self {
        let layout = EnvLayout::redundant(0x4000);
        let env =
            UbootEnv::load_or_default(MemoryStore::new(2), layout, boot_counting::initial_vars())
                .and_then(|mut env| env.save().map(|_| env));
        match env {
            Ok(env) => Self::new(env, booted),
            // A memory store of a valid layout cannot fail to load or save.
            Err(e) => unreachable!("memory env failed: {e}"),
        }
    }
}

/// The update that turns `old` into `new`.
pub fn diff(old: &EnvVars, new: &EnvVars) -> EnvUpdate {
    let mut update = EnvUpdate::new();
    for (key, value) in new {
        if old.get(key) != Some(value) {
            update = update.set(key.clone(), value.clone());
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            update = update.unset(key.clone());
        }
    }
    update
}

fn refused(e: TransitionError) -> BootloaderError {
    BootloaderError::Refused(e.to_string())
}

impl<S: EnvStore> Bootloader for UbootBootloader<S> {
    fn status(&self) -> Result<BootStatus, BootloaderError> {
        boot_counting::status(self.env.vars(), self.booted).map_err(refused)
    }

    fn prepare_update(&mut self, target: Slot) -> Result<(), BootloaderError> {
        let booted = self.booted;
        self.transition(|v| boot_counting::prepare_update(v, booted, target))
    }

    fn activate(&mut self, target: Slot, tries: u32) -> Result<(), BootloaderError> {
        self.transition(|v| boot_counting::activate(v, target, tries))
    }

    fn mark_good(&mut self, booted: Slot) -> Result<(), BootloaderError> {
        self.transition(|v| boot_counting::mark_good(v, booted))
    }

    fn mark_bad(&mut self, slot: Slot) -> Result<(), BootloaderError> {
        let booted = self.booted;
        self.transition(|v| boot_counting::mark_bad(v, booted, slot))
    }

    fn rollback(&mut self) -> Result<Slot, BootloaderError> {
        let old = self.current()?;
        let (target, new) = boot_counting::rollback(&old, self.booted).map_err(refused)?;
        self.write(&old, &new)?;
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_counting::{BootDecision, boot_decision};
    use crate::env::WriteFault;

    fn boot(env_vars: &EnvVars) -> (Slot, EnvVars) {
        let mut cur = env_vars.clone();
        loop {
            match boot_decision(&cur) {
                BootDecision::Boot { slot, vars } => return (slot, vars),
                BootDecision::ResetCounters { vars } => cur = vars,
            }
        }
    }

    /// Simulates the boot script: reads the env, decides, writes it back like `saveenv`.
    fn script_boot(bl: &mut UbootBootloader<MemoryStore>) -> Result<Slot, BootloaderError> {
        let old = bl.current()?;
        let (slot, new) = boot(&old);
        bl.write(&old, &new)?;
        Ok(slot)
    }

    /// A backend booted from A whose env has both slots bootable (a node that has been
    /// upgraded before), so every transition changes something.
    fn both_slots_bootable() -> UbootBootloader<MemoryStore> {
        let mut bl = UbootBootloader::in_memory(Some(Slot::A));
        let update = EnvUpdate::new()
            .set("BOOT_ORDER", "A B")
            .set("BOOT_A_LEFT", "3")
            .set("BOOT_B_LEFT", "3");
        bl.env.apply(&update).unwrap();
        bl
    }

    #[test]
    fn fresh_image_has_only_slot_a() {
        let bl = UbootBootloader::in_memory(Some(Slot::A));
        let st = bl.status().unwrap();
        assert_eq!(st.order, vec![Slot::A]);
        assert!(st.committed);
    }

    #[test]
    fn update_cycle_through_the_env() {
        let mut bl = UbootBootloader::in_memory(Some(Slot::A));
        bl.prepare_update(Slot::B).unwrap();
        assert!(!bl.status().unwrap().slots[1].bootable);
        bl.activate(Slot::B, 3).unwrap();
        assert_eq!(bl.status().unwrap().next_boot(), Some(Slot::B));
        let slot = script_boot(&mut bl).unwrap();
        assert_eq!(slot, Slot::B);
        let mut on_b = UbootBootloader::new(bl.into_env(), Some(Slot::B));
        assert!(!on_b.status().unwrap().committed);
        on_b.mark_good(Slot::B).unwrap();
        let st = on_b.status().unwrap();
        assert!(st.committed);
        assert_eq!(st.order, vec![Slot::B, Slot::A]);
        assert_eq!(on_b.rollback().unwrap(), Slot::A);
        assert_eq!(on_b.status().unwrap().next_boot(), Some(Slot::A));
    }

    #[test]
    fn refused_transition_writes_nothing() {
        let mut bl = UbootBootloader::in_memory(Some(Slot::A));
        let writes = bl.env().store().writes().len();
        let err = bl.prepare_update(Slot::A).unwrap_err();
        assert!(err.to_string().contains("booted slot"), "{err}");
        assert_eq!(bl.env().store().writes().len(), writes);
    }

    #[test]
    fn each_operation_is_one_write() {
        let mut bl = both_slots_bootable();
        let before = bl.env().store().writes().len();
        bl.prepare_update(Slot::B).unwrap();
        bl.activate(Slot::B, 3).unwrap();
        assert_eq!(bl.env().store().writes().len(), before + 2);
    }

    /// Tears every env write of an update sequence in turn (a power cut in the middle of
    /// writing a redundant copy), and cuts power while slot B's content is being written,
    /// then checks the env still loads, leads to a slot, and never to a half-written B.
    #[test]
    fn power_cut_at_every_step_keeps_a_bootable_slot() {
        type Step = fn(&mut UbootBootloader<MemoryStore>) -> Result<(), BootloaderError>;
        // (name, env write, whether slot B is consistent — old or new — if power is cut
        // during this step). `None` is the slot write itself, which does not touch the env.
        let steps: [(&str, Option<Step>, bool); 5] = [
            (
                "prepare_update",
                Some(|bl| bl.prepare_update(Slot::B)),
                true,
            ),
            ("write slot B", None, false),
            ("activate", Some(|bl| bl.activate(Slot::B, 3)), true),
            (
                "first boot of B",
                Some(|bl| script_boot(bl).map(|_| ())),
                true,
            ),
            ("mark_good", Some(|bl| bl.mark_good(Slot::B)), true),
        ];
        for cut in 0..steps.len() {
            for torn_bytes in [0, 5, 100, 0x3fff] {
                let mut bl = both_slots_bootable();
                let mut b_consistent = true;
                for (i, (name, step, consistent_if_cut)) in steps.iter().enumerate() {
                    if i == cut {
                        b_consistent = *consistent_if_cut;
                        if let Some(step) = step {
                            bl.env.store_mut().fail_next_write(WriteFault::Torn {
                                written: torn_bytes,
                            });
                            assert!(step(&mut bl).is_err(), "{name}: the torn write must fail");
                        }
                        break;
                    }
                    if let Some(step) = step {
                        step(&mut bl).unwrap();
                    }
                }
                // Power back on: the env must load and lead somewhere safe, repeatedly.
                let mut vars = bl.current().unwrap();
                assert!(!boot_counting::status(&vars, None).unwrap().order.is_empty());
                for attempt in 0..6 {
                    let (slot, next) = boot(&vars);
                    assert!(
                        slot == Slot::A || b_consistent,
                        "cut {cut}, torn {torn_bytes}, attempt {attempt}: B chosen half-written"
                    );
                    vars = next;
                }
            }
        }
    }
}
