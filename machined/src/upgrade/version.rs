//! Release versions as the upgrade engine compares them.
//!
//! A version is dotted decimal numbers with an optional pre-release suffix after the first
//! `-`: `1`, `1.2`, `1.2.3`, `1.2.3.4`, `1.2.0-rc1`. A leading `v` is accepted and ignored.
//! Ordering:
//!
//! - numbers compare numerically, component by component; a missing component is 0, so
//!   `1.2` = `1.2.0` and `1.10` > `1.9`;
//! - with equal numbers, a version with a suffix is older than the one without
//!   (`1.2.0-rc1` < `1.2.0`), as in semver;
//! - two suffixes compare by their dot-separated identifiers: numeric ones numerically,
//!   others as text, numeric before text, a shorter list first when it is a prefix
//!   (`rc.2` < `rc.10`, `alpha` < `beta`).
//!
//! Build metadata (`+…`) is ignored for ordering. Anything else (empty, a non-numeric
//! component, an empty component) is an error: the engine refuses to guess.

use std::cmp::Ordering;
use std::fmt;

/// A version string the engine cannot compare.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version {text:?} is not dotted numbers with an optional -suffix: {reason}")]
pub struct VersionError {
    /// The string.
    pub text: String,
    /// What is wrong.
    pub reason: String,
}

/// A parsed release version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    text: String,
    numbers: Vec<u64>,
    suffix: Option<String>,
}

impl Version {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Version, VersionError> {
        let err = |reason: &str| VersionError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let core = text.trim();
        let core = core.strip_prefix('v').unwrap_or(core);
        let core = core.split('+').next().unwrap_or("");
        let (numbers, suffix) = match core.split_once('-') {
            Some((n, "")) => {
                return Err(err(&format!("empty suffix after {n}-")));
            }
            Some((n, s)) => (n, Some(s.to_string())),
            None => (core, None),
        };
        if numbers.is_empty() {
            return Err(err("no number"));
        }
        let numbers = numbers
            .split('.')
            .map(|c| {
                if c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit()) {
                    Err(err(&format!("component {c:?} is not a decimal number")))
                } else {
                    c.parse::<u64>()
                        .map_err(|_| err(&format!("component {c} is too large")))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Version {
            text: text.to_string(),
            numbers,
            suffix,
        })
    }

    /// The text it was parsed from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn compare_suffix(a: &str, b: &str) -> Ordering {
    let mut ia = a.split('.');
    let mut ib = b.split('.');
    loop {
        match (ia.next(), ib.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let o = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(x), Ok(y)) => x.cmp(&y),
                    (Ok(_), Err(_)) => Ordering::Less,
                    (Err(_), Ok(_)) => Ordering::Greater,
                    (Err(_), Err(_)) => x.cmp(y),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.numbers.len().max(other.numbers.len());
        for i in 0..n {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (&self.suffix, &other.suffix) {
            (None, None) => Ordering::Equal,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => compare_suffix(a, b),
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn numeric_order() {
        assert!(v("1.10.0") > v("1.9.0"));
        assert!(v("2") > v("1.99.99"));
        assert!(v("1.2.1") > v("1.2"));
        assert_eq!(v("1.2").cmp(&v("1.2.0")), Ordering::Equal);
        assert_eq!(v("v1.2.0").cmp(&v("1.2.0")), Ordering::Equal);
        assert_eq!(v("1.2.0+build7").cmp(&v("1.2.0")), Ordering::Equal);
    }

    #[test]
    fn suffix_order() {
        assert!(v("1.2.0-rc1") < v("1.2.0"));
        assert!(v("1.2.0-rc1") > v("1.1.9"));
        assert!(v("1.2.0-rc.2") < v("1.2.0-rc.10"));
        assert!(v("1.2.0-alpha") < v("1.2.0-beta"));
        assert!(v("1.2.0-1") < v("1.2.0-alpha"));
        assert!(v("1.2.0-rc") < v("1.2.0-rc.1"));
        assert_eq!(v("1.2.0-rc1").cmp(&v("1.2-rc1")), Ordering::Equal);
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "v",
            "1..2",
            "1.x",
            "1.2-",
            "-rc1",
            "1.2.3a",
            " ",
            "99999999999999999999",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = Version::parse("1.x").unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
    }
}
