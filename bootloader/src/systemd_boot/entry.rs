//! Loader entry files and systemd-boot's rules for them, as implemented in systemd-boot 252
//! (Debian 12's `systemd-boot-efi`), `src/boot/efi/boot.c`:
//!
//! - **Boot counter in the file name:** `ID+LEFT[-DONE].conf`, counter after the *last* `+`,
//!   `LEFT`/`DONE` decimal; anything malformed means "no counter". Before booting an entry
//!   with a counter systemd-boot renames it to `+(LEFT-1 floored at 0)-(DONE+1)`, so
//!   `+3` → `+2-1` → `+1-2` → `+0-3`, and booting a `+0-3` entry anyway gives `+0-4`.
//! - **Entry id** = the file name lower-cased, *including* the counter and `.conf`.
//! - **Sort order** ([`compare_entries`]): entries with `LEFT == 0` ("bad") last; then entries
//!   with a `sort-key` before those without; with sort keys on both: `sort-key` ascending,
//!   `machine-id` ascending, `version` *descending* (newest first); then id *descending*; then
//!   more tries left first, fewer tries done first. Versions compare with
//!   [`strverscmp_improved`].
//! - **Default:** the first entry in that order whose id matches the `default` glob of
//!   `loader.conf` ([`fnmatch`]: `*`, `?`, `[...]`); none matching → the first entry. A bad
//!   entry still matches the glob: a glob naming one slot would keep booting it after its
//!   tries ran out. Basalt therefore writes `default basalt-*` and orders its two entries
//!   with `sort-key basalt` + `version <priority>`, so the highest non-bad priority wins.
//! - Entries whose `linux` file is missing are skipped entirely.
//! - EFI variables (`LoaderEntryDefault`, `LoaderEntryOneShot`, `@saved`) override
//!   `loader.conf`; Basalt never sets them, and this model assumes they are unset.

use std::cmp::Ordering;

use crate::slot::Slot;

/// Directory of the loader entries on the ESP.
pub const ENTRIES_DIR: &str = "loader/entries";
/// systemd-boot's configuration file on the ESP.
pub const LOADER_CONF: &str = "loader/loader.conf";
/// The `sort-key` of Basalt's entries.
pub const SORT_KEY: &str = "basalt";

/// The boot counter of a loader entry file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootCounter {
    /// Tries left (`+LEFT`).
    pub left: u32,
    /// Tries done (`-DONE`), `None` when the name has no `-DONE` part (same as 0).
    pub done: Option<u32>,
}

impl BootCounter {
    /// The counter systemd-boot renames the entry to before booting it.
    pub fn after_attempt(self) -> BootCounter {
        BootCounter {
            left: self.left.saturating_sub(1),
            done: Some(
                self.done
                    .unwrap_or(0)
                    .saturating_add(1)
                    .min(i32::MAX as u32),
            ),
        }
    }
}

/// A loader entry file name split into id stem and boot counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFileName {
    /// Everything before the counter (or before `.conf` without one).
    pub stem: String,
    /// The boot counter, if the name carries a valid one.
    pub counter: Option<BootCounter>,
}

impl EntryFileName {
    /// The canonical entry name of `slot`: `basalt-a` / `basalt-b`.
    pub fn for_slot(slot: Slot, counter: Option<BootCounter>) -> Self {
        EntryFileName {
            stem: format!("basalt-{}", slot.letter().to_ascii_lowercase()),
            counter,
        }
    }

    /// Parses `NAME[+LEFT[-DONE]].conf` with systemd-boot's rules; `None` if the name does
    /// not end in `.conf` (case-insensitive) or is a file systemd-boot ignores.
    pub fn parse(file_name: &str) -> Option<Self> {
        if file_name.starts_with('.') || file_name.starts_with("auto-") {
            return None;
        }
        let split = file_name.len().checked_sub(5)?;
        if !file_name.is_char_boundary(split) || !file_name[split..].eq_ignore_ascii_case(".conf") {
            return None;
        }
        let no_counter = || EntryFileName {
            stem: file_name[..split].to_string(),
            counter: None,
        };
        let Some(plus) = file_name.rfind('+') else {
            return Some(no_counter());
        };
        let Some((left, rest)) = leading_number(&file_name[plus + 1..]) else {
            return Some(no_counter());
        };
        let (done, rest) = match rest.strip_prefix('-') {
            Some(after) => match leading_number(after) {
                Some((done, rest)) => (Some(done), rest),
                None => return Some(no_counter()),
            },
            None => (None, rest),
        };
        // systemd compares the tail with ".conf" case-sensitively.
        if rest != ".conf" {
            return Some(no_counter());
        }
        Some(EntryFileName {
            stem: file_name[..plus].to_string(),
            counter: Some(BootCounter { left, done }),
        })
    }

    /// The file name.
    pub fn to_file_name(&self) -> String {
        match self.counter {
            None => format!("{}.conf", self.stem),
            Some(BootCounter { left, done: None }) => format!("{}+{left}.conf", self.stem),
            Some(BootCounter {
                left,
                done: Some(done),
            }) => format!("{}+{left}-{done}.conf", self.stem),
        }
    }

    /// The Basalt slot this entry belongs to (stem `basalt-a` / `basalt-b`, any case).
    pub fn slot(&self) -> Option<Slot> {
        Slot::ALL.into_iter().find(|slot| {
            self.stem
                .eq_ignore_ascii_case(&format!("basalt-{}", slot.letter()))
        })
    }
}

/// A leading decimal number up to `i32::MAX` and the rest; `None` without digits or on
/// overflow (both mean "no counter" to systemd-boot).
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let value = s[..digits]
        .parse::<u32>()
        .ok()
        .filter(|v| *v <= i32::MAX as u32)?;
    Some((value, &s[digits..]))
}

/// Iterates `key value` lines the way systemd-boot reads entry and loader.conf files.
pub fn key_values(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (key, value) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Some((key, value))
    })
}

/// The last value of `key` in an entry or loader.conf text (later lines win).
pub fn last_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    key_values(text)
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .last()
}

/// Replaces the `version` lines of an entry with one `version <version>` (in place of the
/// first, or after the `title` line / at the top when there is none).
pub fn set_version(text: &str, version: &str) -> String {
    let is_version = |line: &str| {
        let line = line.trim_start();
        line.strip_prefix("version")
            .is_some_and(|rest| rest.starts_with([' ', '\t']) || rest.is_empty())
    };
    let new_line = format!("version {version}");
    let mut out = Vec::new();
    let mut placed = false;
    for line in text.lines() {
        if is_version(line) {
            if !placed {
                out.push(new_line.clone());
                placed = true;
            }
        } else {
            out.push(line.to_string());
        }
    }
    if !placed {
        let at = out
            .iter()
            .position(|l| l.trim_start().starts_with("title"))
            .map_or(0, |i| i + 1);
        out.insert(at, new_line);
    }
    let mut joined = out.join("\n");
    joined.push('\n');
    joined
}

/// What the sort order needs to know about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortFields {
    /// Lower-cased file name.
    pub id: String,
    /// Boot counter from the file name.
    pub counter: Option<BootCounter>,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `machine-id`.
    pub machine_id: Option<String>,
    /// `version`.
    pub version: Option<String>,
}

impl SortFields {
    /// Reads the fields from a file name and its content.
    pub fn new(file_name: &str, content: &str) -> Self {
        SortFields {
            id: file_name.to_lowercase(),
            counter: EntryFileName::parse(file_name).and_then(|n| n.counter),
            sort_key: last_value(content, "sort-key").map(str::to_string),
            machine_id: last_value(content, "machine-id").map(str::to_string),
            version: last_value(content, "version").map(str::to_string),
        }
    }

    /// Whether systemd-boot considers the entry bad (no tries left).
    pub fn is_bad(&self) -> bool {
        self.counter.is_some_and(|c| c.left == 0)
    }
}

/// systemd-boot's `config_entry_compare`: `Less` means `a` is listed (and preferred) first.
pub fn compare_entries(a: &SortFields, b: &SortFields) -> Ordering {
    a.is_bad()
        .cmp(&b.is_bad())
        .then_with(|| b.sort_key.is_some().cmp(&a.sort_key.is_some()))
        .then_with(|| {
            if a.sort_key.is_some() && b.sort_key.is_some() {
                a.sort_key
                    .cmp(&b.sort_key)
                    .then_with(|| a.machine_id.cmp(&b.machine_id))
                    .then_with(|| {
                        strverscmp_improved(a.version.as_deref(), b.version.as_deref()).reverse()
                    })
            } else {
                Ordering::Equal
            }
        })
        .then_with(|| strverscmp_improved(Some(&a.id), Some(&b.id)).reverse())
        .then_with(|| match (a.counter, b.counter) {
            (Some(ca), Some(cb)) => cb
                .left
                .cmp(&ca.left)
                .then_with(|| ca.done.unwrap_or(0).cmp(&cb.done.unwrap_or(0))),
            _ => Ordering::Equal,
        })
}

fn is_version_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// systemd's `strverscmp_improved` (a variant of rpm's `rpmvercmp`): `Greater` means `a` is
/// newer. `None` (missing) and empty strings sort before everything else.
pub fn strverscmp_improved(a: Option<&str>, b: Option<&str>) -> Ordering {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => (a.as_bytes(), b.as_bytes()),
        (a, b) => return a.cmp(&b),
    };
    let (mut i, mut j) = (0, 0);
    let at = |s: &[u8], k: usize| s.get(k).copied().unwrap_or(0);
    loop {
        while i < a.len() && !is_version_char(a[i]) {
            i += 1;
        }
        while j < b.len() && !is_version_char(b[j]) {
            j += 1;
        }
        // '~' (pre-release) is older than anything, even the end of the string.
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        if i >= a.len() || j >= b.len() {
            return at(a, i).cmp(&at(b, j));
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            let ea = i + a[i.min(a.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let eb = j + b[j.min(b.len())..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            let r = (ea - i)
                .cmp(&(eb - j))
                .then_with(|| a[i..ea].cmp(&b[j..eb]));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ea, eb);
        } else {
            let ea = i + a[i..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            let eb = j + b[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphabetic())
                .count();
            let n = (ea - i).min(eb - j);
            let r = a[i..i + n]
                .cmp(&b[j..j + n])
                .then_with(|| (ea - i).cmp(&(eb - j)));
            if r != Ordering::Equal {
                return r;
            }
            (i, j) = (ea, eb);
        }
    }
}

/// fnmatch-style glob as systemd-boot matches `default` against entry ids: `*`, `?`,
/// `[abc]`, `[a-z]`, `[!x]`/`[^x]`, `\` escapes. Case-sensitive: callers lower-case both.
pub fn fnmatch(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    glob(&p, &t)
}

fn glob(p: &[char], t: &[char]) -> bool {
    match p.first() {
        None => t.is_empty(),
        Some('*') => (0..=t.len()).any(|skip| glob(&p[1..], &t[skip..])),
        Some('?') => !t.is_empty() && glob(&p[1..], &t[1..]),
        Some('[') => {
            let Some(&c) = t.first() else { return false };
            match class(&p[1..], c) {
                Some((matched, used)) => matched && glob(&p[1 + used..], &t[1..]),
                None => c == '[' && glob(&p[1..], &t[1..]),
            }
        }
        Some('\\') if p.len() > 1 => t.first() == Some(&p[1]) && glob(&p[2..], &t[1..]),
        Some(&pc) => t.first() == Some(&pc) && glob(&p[1..], &t[1..]),
    }
}

/// Matches `c` against a bracket class starting after `[`; returns (matched, chars used
/// including the closing `]`), or `None` if the class is not closed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut k = 0;
    let negate = matches!(p.first(), Some('!') | Some('^'));
    if negate {
        k += 1;
    }
    let mut matched = false;
    let mut first = true;
    while k < p.len() {
        if p[k] == ']' && !first {
            return Some((matched != negate, k + 1));
        }
        first = false;
        if k + 2 < p.len() && p[k + 1] == '-' && p[k + 2] != ']' {
            if p[k] <= c && c <= p[k + 2] {
                matched = true;
            }
            k += 3;
        } else {
            if p[k] == c {
                matched = true;
            }
            k += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> EntryFileName {
        EntryFileName::parse(s).unwrap()
    }

    #[test]
    fn counters_parse_like_systemd_boot() {
        assert_eq!(name("basalt-a.conf").counter, None);
        assert_eq!(
            name("basalt-a+3.conf").counter,
            Some(BootCounter {
                left: 3,
                done: None
            })
        );
        let n = name("basalt-b+2-1.conf");
        assert_eq!(n.stem, "basalt-b");
        assert_eq!(
            n.counter,
            Some(BootCounter {
                left: 2,
                done: Some(1)
            })
        );
        assert_eq!(n.slot(), Some(Slot::B));
        // Malformed counters are part of the name.
        for plain in [
            "x+.conf",
            "x+3x.conf",
            "x+3-.conf",
            "x+3.CONF",
            "a+1+b.conf",
        ] {
            assert_eq!(name(plain).counter, None, "{plain}");
        }
        assert_eq!(name("a+b+4.conf").counter.map(|c| c.left), Some(4));
        assert!(EntryFileName::parse("basalt-a.conf.basalt-tmp").is_none());
        assert!(EntryFileName::parse(".basalt-a.conf").is_none());
        assert!(EntryFileName::parse("auto-windows.conf").is_none());
        assert_eq!(name("BASALT-A+1.conf").slot(), Some(Slot::A));
        assert_eq!(name("BASALT-A.Conf").slot(), Some(Slot::A));
    }

    #[test]
    fn attempts_rename_like_systemd_boot() {
        let mut counter = BootCounter {
            left: 3,
            done: None,
        };
        let mut names = Vec::new();
        for _ in 0..4 {
            counter = counter.after_attempt();
            names.push(EntryFileName::for_slot(Slot::A, Some(counter)).to_file_name());
        }
        assert_eq!(
            names,
            [
                "basalt-a+2-1.conf",
                "basalt-a+1-2.conf",
                "basalt-a+0-3.conf",
                "basalt-a+0-4.conf"
            ]
        );
    }

    #[test]
    fn version_comparison_follows_systemd() {
        let older_to_newer = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for pair in older_to_newer.windows(2) {
            assert_eq!(
                strverscmp_improved(Some(pair[0]), Some(pair[1])),
                Ordering::Less,
                "{} < {}",
                pair[0],
                pair[1]
            );
            assert_eq!(
                strverscmp_improved(Some(pair[1]), Some(pair[0])),
                Ordering::Greater
            );
        }
        assert_eq!(
            strverscmp_improved(Some("10"), Some("9")),
            Ordering::Greater
        );
        assert_eq!(strverscmp_improved(Some("007"), Some("7")), Ordering::Equal);
        assert_eq!(strverscmp_improved(None, Some("1")), Ordering::Less);
        assert_eq!(
            strverscmp_improved(Some("basalt-b.conf"), Some("basalt-a+3.conf")),
            Ordering::Greater
        );
    }

    #[test]
    fn globs() {
        assert!(fnmatch("basalt-*", "basalt-a+2-1.conf"));
        assert!(!fnmatch("basalt-b*", "basalt-a.conf"));
        assert!(fnmatch("basalt-[ab].conf", "basalt-b.conf"));
        assert!(fnmatch("basalt-?+[!0]*", "basalt-b+3.conf"));
        assert!(!fnmatch("basalt-?+[!0]*", "basalt-b+0-3.conf"));
        assert!(fnmatch("a\\*", "a*"));
        assert!(!fnmatch("a\\*", "ab"));
    }

    fn fields(file: &str, version: &str) -> SortFields {
        SortFields::new(
            file,
            &format!("title x\nsort-key basalt\nversion {version}\n"),
        )
    }

    #[test]
    fn sort_order_puts_bad_last_then_highest_version() {
        let mut entries = [
            fields("basalt-a+0-3.conf", "9"),
            fields("basalt-b.conf", "1"),
            fields("basalt-a.conf", "2"),
            SortFields::new("other.conf", "title other\n"),
        ];
        entries.sort_by(compare_entries);
        let ids: Vec<_> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "basalt-a.conf",
                "basalt-b.conf",
                "other.conf",
                "basalt-a+0-3.conf"
            ]
        );

        // Without sort keys: by id, descending.
        let mut plain = [
            SortFields::new("basalt-a.conf", ""),
            SortFields::new("basalt-b+3.conf", ""),
        ];
        plain.sort_by(compare_entries);
        assert_eq!(plain[0].id, "basalt-b+3.conf");
    }

    #[test]
    fn version_lines_are_replaced_or_inserted() {
        assert_eq!(
            set_version("title T\nversion 1\nlinux /x\nversion 7\n", "3"),
            "title T\nversion 3\nlinux /x\n"
        );
        assert_eq!(
            set_version("title T\nlinux /x", "4"),
            "title T\nversion 4\nlinux /x\n"
        );
        assert_eq!(
            last_value("options a\noptions \"b c\"\n", "options"),
            Some("b c")
        );
    }
}
