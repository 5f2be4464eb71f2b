//! [`UbootEnv`]: a store, a layout and the loaded variables, with the redundant protocol.

use std::collections::BTreeMap;

use super::format::{self, EnvLayout, FormatError};
use super::select::{no_valid_copy, scan};
use super::store::{EnvStore, StoreError};
use super::update::EnvUpdate;

/// Failure to load or change an environment.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// Reading or writing the storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The layout is unusable, or an update or default set cannot be encoded.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// The copy chosen by CRC and flags could not be decoded.
    #[error(
        "U-Boot env copy {} at {location} has a valid CRC but cannot be read: {source}",
        copy + 1
    )]
    Undecodable {
        /// Copy index (0-based).
        copy: usize,
        /// Where the copy lives.
        location: String,
        /// What is wrong.
        #[source]
        source: FormatError,
    },
    /// The store's number of copies does not match the layout.
    #[error(
        "U-Boot env store has {copies} copies but the layout is {}",
        if *redundant { "redundant (2 copies)" } else { "single (1 copy)" }
    )]
    LayoutMismatch {
        /// Copies of the store.
        copies: usize,
        /// Whether the layout is redundant.
        redundant: bool,
    },
    /// No copy has a valid CRC.
    #[error("no valid U-Boot env (refusing to fall back to defaults): {}", problems.join("; "))]
    Corrupt {
        /// One description per copy, naming it and what is wrong.
        problems: Vec<String>,
    },
    /// No copy exists at all (e.g. no `uboot.env` file yet).
    #[error("no U-Boot env stored at {}", locations.join(" or "))]
    Missing {
        /// Where the copies were looked for.
        locations: Vec<String>,
    },
}

/// Where the loaded variables come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvSource {
    /// A stored copy with a valid CRC.
    Copy {
        /// Copy index (0-based).
        index: usize,
        /// Its flags byte (redundant layouts only).
        flags: Option<u8>,
    },
    /// No valid copy was found; the variables are the defaults given to
    /// [`UbootEnv::load_or_default`] and nothing has been written yet.
    Defaults,
}

/// The result of [`UbootEnv::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The variables already had these values and were stored: nothing was written.
    Unchanged,
    /// One copy was written and synced.
    Written {
        /// Copy index (0-based).
        copy: usize,
        /// Flags byte written (redundant layouts only).
        flags: Option<u8>,
    },
}

/// A U-Boot environment: storage, layout and the variables currently in effect.
///
/// Changes go through [`UbootEnv::apply`], which writes exactly one copy. In a redundant
/// layout that is never the copy the variables were loaded from.
#[derive(Debug)]
pub struct UbootEnv<S> {
    store: S,
    layout: EnvLayout,
    vars: BTreeMap<String, String>,
    source: EnvSource,
    /// Copy the variables are considered to come from; the next write goes to the other one.
    current: usize,
    /// Flags of `current`; the next write stores this plus one.
    current_flags: u8,
}

impl<S: EnvStore> UbootEnv<S> {
    /// Loads the newest valid copy. Fails with [`EnvError::Corrupt`] or
    /// [`EnvError::Missing`] when there is none.
    pub fn load(store: S, layout: EnvLayout) -> Result<Self, EnvError> {
        let scan = scan(&store, &layout)?;
        match scan.selected {
            Some((index, vars)) => Ok(Self::loaded(store, layout, index, vars, scan.current_flags)),
            None => Err(no_valid_copy(&store, scan)),
        }
    }

    /// Like [`UbootEnv::load`], but when no copy is valid (or none exists), starts from
    /// `defaults` instead of failing, as `fw_setenv -f` does. Nothing is written until the
    /// first [`UbootEnv::apply`] or [`UbootEnv::save`].
    pub fn load_or_default(
        store: S,
        layout: EnvLayout,
        defaults: BTreeMap<String, String>,
    ) -> Result<Self, EnvError> {
        let scan = scan(&store, &layout)?;
        if let Some((index, vars)) = scan.selected {
            return Ok(Self::loaded(store, layout, index, vars, scan.current_flags));
        }
        format::serialize(&layout, &defaults, 0)?;
        Ok(Self {
            store,
            layout,
            vars: defaults,
            source: EnvSource::Defaults,
            current: scan.current,
            current_flags: scan.current_flags,
        })
    }

    fn loaded(
        store: S,
        layout: EnvLayout,
        index: usize,
        vars: BTreeMap<String, String>,
        flags: u8,
    ) -> Self {
        Self {
            store,
            layout,
            vars,
            source: EnvSource::Copy {
                index,
                flags: layout.redundant.then_some(flags),
            },
            current: index,
            current_flags: flags,
        }
    }

    /// Reads the storage again, e.g. after another program changed it.
    pub fn reload(&mut self) -> Result<(), EnvError> {
        let scan = scan(&self.store, &self.layout)?;
        let Some((index, vars)) = scan.selected else {
            return Err(no_valid_copy(&self.store, scan));
        };
        self.vars = vars;
        self.source = EnvSource::Copy {
            index,
            flags: self.layout.redundant.then_some(scan.current_flags),
        };
        self.current = scan.current;
        self.current_flags = scan.current_flags;
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }

    /// All variables, sorted by name.
    pub fn vars(&self) -> &BTreeMap<String, String> {
        &self.vars
    }

    /// The layout.
    pub fn layout(&self) -> &EnvLayout {
        &self.layout
    }

    /// Where the variables come from.
    pub fn source(&self) -> EnvSource {
        self.source
    }

    /// The store. Changing it behind the handle's back requires [`UbootEnv::reload`].
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Mutable access to the store (fault injection in tests). See [`UbootEnv::store`].
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back.
    pub fn into_store(self) -> S {
        self.store
    }

    /// Applies all of `update` in one write. Every operation is validated and the result
    /// encoded before anything is written; on any error the storage and the variables in
    /// memory are unchanged (a failed device write may leave the *target* copy torn, never
    /// the current one). Writes nothing if the result equals the stored variables.
    pub fn apply(&mut self, update: &EnvUpdate) -> Result<ApplyOutcome, EnvError> {
        let vars = update.apply_to(&self.vars)?;
        if vars == self.vars && self.source != EnvSource::Defaults {
            return Ok(ApplyOutcome::Unchanged);
        }
        self.write(vars)
    }

    /// Writes the current variables to the next copy even if nothing changed (e.g. to store
    /// the defaults after [`UbootEnv::load_or_default`]).
    pub fn save(&mut self) -> Result<ApplyOutcome, EnvError> {
        self.write(self.vars.clone())
    }

    fn write(&mut self, vars: BTreeMap<String, String>) -> Result<ApplyOutcome, EnvError> {
        let (target, flags) = if self.layout.redundant {
            (1 - self.current, self.current_flags.wrapping_add(1))
        } else {
            (0, 0)
        };
        let bytes = format::serialize(&self.layout, &vars, flags)?;
        self.store.write_copy(target, &bytes)?;
        let flags = self.layout.redundant.then_some(flags);
        self.vars = vars;
        self.current = target;
        self.current_flags = flags.unwrap_or(0);
        self.source = EnvSource::Copy {
            index: target,
            flags,
        };
        Ok(ApplyOutcome::Written {
            copy: target,
            flags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::store::{MemoryStore, WriteFault};

    const SIZE: usize = 0x100;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn image(layout: &EnvLayout, pairs: &[(&str, &str)], flags: u8) -> Vec<u8> {
        format::serialize(layout, &vars(pairs), flags).unwrap()
    }

    fn corrupt(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes[0] ^= 0xFF;
        bytes
    }

    #[test]
    fn single_round_trip() {
        let layout = EnvLayout::single(SIZE);
        let store = MemoryStore::with_copies(vec![image(&layout, &[("a", "1")], 0)]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        assert_eq!(env.get("a"), Some("1"));
        assert_eq!(
            env.source(),
            EnvSource::Copy {
                index: 0,
                flags: None
            }
        );
        let out = env
            .apply(&EnvUpdate::new().set("b", "2").unset("a"))
            .unwrap();
        assert_eq!(
            out,
            ApplyOutcome::Written {
                copy: 0,
                flags: None
            }
        );
        let again = UbootEnv::load(env.into_store(), layout).unwrap();
        assert_eq!(again.vars(), &vars(&[("b", "2")]));
    }

    #[test]
    fn redundant_writes_alternate_and_never_touch_current() {
        let layout = EnvLayout::redundant(SIZE);
        let first = image(&layout, &[("n", "0")], 5);
        let store = MemoryStore::with_copies(vec![first.clone(), corrupt(first.clone())]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        assert_eq!(
            env.source(),
            EnvSource::Copy {
                index: 0,
                flags: Some(5)
            }
        );
        // The corrupt copy 2 is the one written.
        let out = env.apply(&EnvUpdate::new().set("n", "1")).unwrap();
        assert_eq!(
            out,
            ApplyOutcome::Written {
                copy: 1,
                flags: Some(6)
            }
        );
        assert_eq!(env.store().copy(0), Some(&first[..]));
        let out = env.apply(&EnvUpdate::new().set("n", "2")).unwrap();
        assert_eq!(
            out,
            ApplyOutcome::Written {
                copy: 0,
                flags: Some(7)
            }
        );
        assert_eq!(env.store().writes(), &[1, 0]);
        let reread = UbootEnv::load(env.into_store(), layout).unwrap();
        assert_eq!(reread.get("n"), Some("2"));
        assert_eq!(
            reread.source(),
            EnvSource::Copy {
                index: 0,
                flags: Some(7)
            }
        );
    }

    #[test]
    fn flags_wrap_picks_newest_each_time() {
        let layout = EnvLayout::redundant(SIZE);
        let store = MemoryStore::with_copies(vec![
            image(&layout, &[("gen", "253")], 253),
            image(&layout, &[("gen", "254")], 254),
        ]);
        let mut store = Some(store);
        for (expect_copy, flags) in [(1, 254u8), (0, 255), (1, 0), (0, 1), (1, 2)] {
            let env = UbootEnv::load(store.take().unwrap(), layout).unwrap();
            // Both copies stay valid: the choice is made by the flags alone.
            let s = env.store();
            assert!(format::parse(&layout, s.copy(0).unwrap()).is_ok());
            assert!(format::parse(&layout, s.copy(1).unwrap()).is_ok());
            assert_eq!(
                env.source(),
                EnvSource::Copy {
                    index: expect_copy,
                    flags: Some(flags)
                }
            );
            assert_eq!(env.get("gen"), Some(flags.to_string().as_str()));
            let mut env = env;
            let next = flags.wrapping_add(1);
            let out = env
                .apply(&EnvUpdate::new().set("gen", next.to_string()))
                .unwrap();
            assert_eq!(
                out,
                ApplyOutcome::Written {
                    copy: 1 - expect_copy,
                    flags: Some(next)
                }
            );
            store = Some(env.into_store());
        }
    }

    #[test]
    fn torn_write_keeps_old_copy() {
        let layout = EnvLayout::redundant(SIZE);
        let old = image(&layout, &[("BOOT_ORDER", "A B")], 10);
        let older = image(&layout, &[("BOOT_ORDER", "B A")], 9);
        let store = MemoryStore::with_copies(vec![old.clone(), older]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        env.store_mut()
            .fail_next_write(WriteFault::Torn { written: 20 });
        let err = env
            .apply(&EnvUpdate::new().set("BOOT_ORDER", "B"))
            .unwrap_err();
        assert!(err.to_string().contains("copy 2"), "{err}");
        // In memory: unchanged. On storage: copy 1 intact, copy 2 torn (bad CRC).
        assert_eq!(env.get("BOOT_ORDER"), Some("A B"));
        assert_eq!(env.store().copy(0), Some(&old[..]));
        let store = env.into_store();
        let header = format::read_header(&layout, store.copy(1).unwrap()).unwrap();
        assert!(!header.crc_ok());
        let mut env = UbootEnv::load(store, layout).unwrap();
        assert_eq!(env.get("BOOT_ORDER"), Some("A B"));
        // A retry goes to the same (torn) copy.
        let out = env.apply(&EnvUpdate::new().set("BOOT_ORDER", "B")).unwrap();
        assert_eq!(
            out,
            ApplyOutcome::Written {
                copy: 1,
                flags: Some(11)
            }
        );
    }

    #[test]
    fn failed_single_write_changes_nothing_in_memory() {
        let layout = EnvLayout::single(SIZE);
        let store = MemoryStore::with_copies(vec![image(&layout, &[("a", "1")], 0)]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        env.store_mut().fail_next_write(WriteFault::Fail);
        assert!(env.apply(&EnvUpdate::new().set("a", "2")).is_err());
        assert_eq!(env.get("a"), Some("1"));
    }

    #[test]
    fn invalid_update_or_overflow_writes_nothing() {
        let layout = EnvLayout::redundant(SIZE);
        let store = MemoryStore::with_copies(vec![
            image(&layout, &[("a", "1")], 1),
            image(&layout, &[("a", "0")], 0),
        ]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        let err = env
            .apply(&EnvUpdate::new().set("ok", "1").set("bad=key", "2"))
            .unwrap_err();
        assert!(err.to_string().contains("\"bad=key\""), "{err}");
        let err = env
            .apply(&EnvUpdate::new().set("big", "x".repeat(SIZE)))
            .unwrap_err();
        assert!(
            matches!(err, EnvError::Format(FormatError::TooLarge { .. })),
            "{err}"
        );
        assert!(
            err.to_string().contains("does not fit in env size 0x100"),
            "{err}"
        );
        assert_eq!(
            env.apply(&EnvUpdate::new().set("a", "1")).unwrap(),
            ApplyOutcome::Unchanged
        );
        assert!(env.store().writes().is_empty());
        assert_eq!(env.vars(), &vars(&[("a", "1")]));
    }

    #[test]
    fn corrupt_env_is_an_error_unless_defaults_are_asked_for() {
        let layout = EnvLayout::redundant(SIZE);
        let a = corrupt(image(&layout, &[("a", "1")], 41));
        let b = corrupt(image(&layout, &[("a", "2")], 42));
        let store = MemoryStore::with_copies(vec![a, b]);
        let err = UbootEnv::load(store.clone(), layout).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("no valid U-Boot env"), "{msg}");
        assert!(msg.contains("copy 1 at memory slot 0: bad CRC"), "{msg}");
        assert!(msg.contains("copy 2 at memory slot 1: bad CRC"), "{msg}");

        let defaults = vars(&[("BOOT_ORDER", "A B")]);
        let mut env = UbootEnv::load_or_default(store, layout, defaults.clone()).unwrap();
        assert_eq!(env.source(), EnvSource::Defaults);
        assert_eq!(env.vars(), &defaults);
        assert!(env.store().writes().is_empty());
        // As libubootenv: copy 2 is written, with copy 1's flags byte plus one.
        let out = env.apply(&EnvUpdate::new()).unwrap();
        assert_eq!(
            out,
            ApplyOutcome::Written {
                copy: 1,
                flags: Some(42)
            }
        );
        let env = UbootEnv::load(env.into_store(), layout).unwrap();
        assert_eq!(env.vars(), &defaults);
    }

    #[test]
    fn missing_env() {
        let layout = EnvLayout::single(SIZE);
        let err = UbootEnv::load(MemoryStore::new(1), layout).unwrap_err();
        assert_eq!(err.to_string(), "no U-Boot env stored at memory slot 0");
        let mut env =
            UbootEnv::load_or_default(MemoryStore::new(1), layout, BTreeMap::new()).unwrap();
        assert_eq!(
            env.save().unwrap(),
            ApplyOutcome::Written {
                copy: 0,
                flags: None
            }
        );
        assert!(
            UbootEnv::load(env.into_store(), layout)
                .unwrap()
                .vars()
                .is_empty()
        );
        // Defaults that cannot be encoded are refused up front.
        let big = vars(&[("k", &"v".repeat(SIZE))]);
        assert!(UbootEnv::load_or_default(MemoryStore::new(1), layout, big).is_err());
    }

    #[test]
    fn layout_mismatch_and_undecodable_copy() {
        let err = UbootEnv::load(MemoryStore::new(1), EnvLayout::redundant(SIZE)).unwrap_err();
        assert!(matches!(
            err,
            EnvError::LayoutMismatch {
                copies: 1,
                redundant: true
            }
        ));
        let layout = EnvLayout::single(0x10);
        let mut bytes = vec![0u8; 0x10];
        bytes[4..8].copy_from_slice(b"a=\xff\0");
        let crc = crc32fast::hash(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        let err = UbootEnv::load(MemoryStore::with_copies(vec![bytes]), layout).unwrap_err();
        assert!(
            matches!(err, EnvError::Undecodable { copy: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn reload_sees_external_changes() {
        let layout = EnvLayout::single(SIZE);
        let store = MemoryStore::with_copies(vec![image(&layout, &[("a", "1")], 0)]);
        let mut env = UbootEnv::load(store, layout).unwrap();
        env.store_mut()
            .set_copy(0, Some(image(&layout, &[("a", "2")], 0)));
        env.reload().unwrap();
        assert_eq!(env.get("a"), Some("2"));
        env.store_mut()
            .set_copy(0, Some(corrupt(image(&layout, &[], 0))));
        assert!(matches!(env.reload(), Err(EnvError::Corrupt { .. })));
    }
}
