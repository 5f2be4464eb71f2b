//! Reading the copies of a store and choosing the one in effect (U-Boot's and libubootenv's
//! rule for redundant environments).

use std::collections::BTreeMap;

use super::format::{self, EnvLayout, FormatError};
use super::handle::EnvError;
use super::store::EnvStore;

/// Picks the copy that U-Boot and libubootenv use, given the flags of each copy whose CRC is
/// valid (`None` for an invalid copy).
///
/// One valid copy wins. With two, the higher flags wins, except that 0 beats 255 (the counter
/// wrapped); equal flags pick copy 0. Only the exact pair 255/0 counts as a wrap: 254 beats 0.
pub fn select_copy(first: Option<u8>, second: Option<u8>) -> Option<usize> {
    match (first, second) {
        (None, None) => None,
        (Some(_), None) => Some(0),
        (None, Some(_)) => Some(1),
        (Some(255), Some(0)) => Some(1),
        (Some(0), Some(255)) => Some(0),
        (Some(a), Some(b)) => Some(if b > a { 1 } else { 0 }),
    }
}

/// What a scan of the store found.
pub(super) struct Scan {
    /// The copy in effect and its variables.
    pub(super) selected: Option<(usize, BTreeMap<String, String>)>,
    /// Copy considered current: the selected one, or 0 if none is valid.
    pub(super) current: usize,
    /// Flags of `current` (its raw flags byte if it is invalid).
    pub(super) current_flags: u8,
    /// What is wrong with each invalid copy.
    pub(super) problems: Vec<String>,
    /// No copy exists at all.
    pub(super) all_missing: bool,
}

/// Reads every copy of `store`, checks CRCs and parses the copy in effect.
///
/// I/O errors fail the scan; a missing copy or a bad CRC only makes that copy invalid.
pub(super) fn scan<S: EnvStore>(store: &S, layout: &EnvLayout) -> Result<Scan, EnvError> {
    layout.check()?;
    let expected = if layout.redundant { 2 } else { 1 };
    if store.copies() != expected {
        return Err(EnvError::LayoutMismatch {
            copies: store.copies(),
            redundant: layout.redundant,
        });
    }
    store.check_size(layout.size)?;
    let mut raws = Vec::with_capacity(expected);
    let mut valid_flags = Vec::with_capacity(expected);
    let mut problems = Vec::new();
    for copy in 0..expected {
        let raw = store.read_copy(copy, layout.size)?;
        let name = format!("copy {} at {}", copy + 1, store.location(copy));
        match &raw {
            None => {
                problems.push(format!("{name}: missing"));
                valid_flags.push(None);
            }
            Some(bytes) => {
                let header = format::read_header(layout, bytes)?;
                valid_flags.push(header.crc_ok().then(|| header.flags.unwrap_or(0)));
                if !header.crc_ok() {
                    let err = FormatError::BadCrc {
                        stored: header.stored_crc,
                        computed: header.computed_crc,
                    };
                    problems.push(format!("{name}: {err}"));
                }
            }
        }
        raws.push(raw);
    }
    let all_missing = raws.iter().all(Option::is_none);
    let selected = match valid_flags.as_slice() {
        [first, second] => select_copy(*first, *second),
        [only] => only.map(|_| 0),
        _ => None,
    };
    let Some(index) = selected else {
        // Like libubootenv: with no valid copy, copy 0 counts as current, so the first write
        // goes to copy 1 (redundant) with copy 0's flags byte plus one.
        let flags = match raws.first() {
            Some(Some(bytes)) if layout.redundant => bytes.get(4).copied().unwrap_or(0),
            _ => 0,
        };
        return Ok(Scan {
            selected: None,
            current: 0,
            current_flags: flags,
            problems,
            all_missing,
        });
    };
    let bytes = raws
        .get(index)
        .and_then(Option::as_deref)
        .unwrap_or_default();
    let image = format::parse(layout, bytes).map_err(|source| EnvError::Undecodable {
        copy: index,
        location: store.location(index),
        source,
    })?;
    Ok(Scan {
        selected: Some((index, image.vars)),
        current: index,
        current_flags: valid_flags.get(index).copied().flatten().unwrap_or(0),
        problems,
        all_missing,
    })
}

/// The error for a scan that found no valid copy.
pub(super) fn no_valid_copy<S: EnvStore>(store: &S, scan: Scan) -> EnvError {
    if scan.all_missing {
        EnvError::Missing {
            locations: (0..store.copies()).map(|c| store.location(c)).collect(),
        }
    } else {
        EnvError::Corrupt {
            problems: scan.problems,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_copy_rules() {
        assert_eq!(select_copy(None, None), None);
        assert_eq!(select_copy(Some(9), None), Some(0));
        assert_eq!(select_copy(None, Some(9)), Some(1));
        assert_eq!(select_copy(Some(1), Some(2)), Some(1));
        assert_eq!(select_copy(Some(2), Some(1)), Some(0));
        assert_eq!(select_copy(Some(7), Some(7)), Some(0));
        assert_eq!(select_copy(Some(255), Some(0)), Some(1));
        assert_eq!(select_copy(Some(0), Some(255)), Some(0));
        // Only 255/0 is a wrap: 254 is "newer" than 0, as in libubootenv and U-Boot.
        assert_eq!(select_copy(Some(254), Some(0)), Some(0));
        assert_eq!(select_copy(Some(1), Some(255)), Some(1));
    }
}
