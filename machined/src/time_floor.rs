//! The node's time floor: a time its clock cannot be before.
//!
//! A board without a battery-backed clock (most Raspberry Pis) boots with its clock in the
//! past until the first time sync. Checked against such a clock, an expired bearer token
//! looks valid. The floor is the newer of [`RELEASE_FLOOR`] (compiled in: no node running
//! this release can be earlier) and the last time a time server confirmed the clock,
//! kept on STATE ([`FLOOR_FILE`]) so it survives reboots. While the clock is before the
//! floor, bearer tokens are refused (client certificates still work, and their validity is
//! checked by TLS with the same clock: a certificate does not grant more than its role).
//!
//! Only a clock that already agreed with a time server (a sync that did not step it) moves
//! the floor, and it is written to STATE at most once an hour of progress.
//!
//! Limits: the floor only moves forward; a clock that is wrong but after the floor is not
//! detected, and a time server that lies consistently can move the floor ahead (a reset of
//! STATE removes it).

use crate::state::{StateError, write_atomic};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file on STATE holding the floor (Unix seconds, decimal).
pub const FLOOR_FILE: &str = "time-floor";
/// The floor of this release (2026-12-01T00:00:00Z), raised with each release.
pub const RELEASE_FLOOR: u64 = 1_796_083_200;
/// The floor is written to STATE only when it moves by at least this much (seconds), so a
/// sync every few minutes does not wear the card.
pub const RECORD_STEP: u64 = 3600;

/// The time floor, in memory and on STATE.
#[derive(Debug)]
pub struct TimeFloor {
    path: PathBuf,
    floor: AtomicU64,
}

/// The floor recorded in `text` (the file's content), if it is one.
pub fn parse(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

impl TimeFloor {
    /// The floor kept in `state_dir`, and why the file was ignored when it was.
    pub fn open(state_dir: &Path) -> (TimeFloor, Option<String>) {
        let path = state_dir.join(FLOOR_FILE);
        let (stored, problem) = match std::fs::read_to_string(&path) {
            Ok(text) => match parse(&text) {
                Some(t) => (t, None),
                None => (
                    0,
                    Some(format!(
                        "{}: not a number of seconds: ignored",
                        path.display()
                    )),
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
            Err(e) => (0, Some(format!("{}: {e}: ignored", path.display()))),
        };
        let floor = TimeFloor {
            path,
            floor: AtomicU64::new(stored.max(RELEASE_FLOOR)),
        };
        (floor, problem)
    }

    /// The floor (Unix seconds).
    pub fn get(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Raises the floor to `confirmed` (a time a time server confirmed) and records it on
    /// STATE; a time less than [`RECORD_STEP`] after the floor changes nothing. Answers
    /// whether it moved.
    pub fn raise(&self, confirmed: u64) -> Result<bool, StateError> {
        if confirmed < self.get().saturating_add(RECORD_STEP) {
            return Ok(false);
        }
        write_atomic(&self.path, format!("{confirmed}\n").as_bytes())?;
        self.floor.fetch_max(confirmed, Ordering::Relaxed);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_only_rises_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (floor, problem) = TimeFloor::open(dir.path());
        assert_eq!((floor.get(), problem), (RELEASE_FLOOR, None));
        assert!(!floor.raise(RELEASE_FLOOR - 1).unwrap());
        assert!(!dir.path().join(FLOOR_FILE).exists());
        assert!(
            !floor.raise(RELEASE_FLOOR + 100).unwrap(),
            "less than an hour on"
        );
        assert!(floor.raise(RELEASE_FLOOR + 4000).unwrap());
        assert!(!floor.raise(RELEASE_FLOOR + 50).unwrap());
        let (again, _) = TimeFloor::open(dir.path());
        assert_eq!(again.get(), RELEASE_FLOOR + 4000);

        std::fs::write(dir.path().join(FLOOR_FILE), "yesterday").unwrap();
        let (damaged, problem) = TimeFloor::open(dir.path());
        assert_eq!(damaged.get(), RELEASE_FLOOR);
        assert!(problem.unwrap().contains("not a number of seconds"));
        assert_eq!(parse(" 1800000000\n"), Some(1_800_000_000));
    }
}
