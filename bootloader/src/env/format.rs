//! Binary layout of one U-Boot environment copy: header, `key=value\0` data area, padding.
//!
//! See the [parent module](super) for the format description. Everything here is pure:
//! bytes in, bytes out, no I/O.

use std::collections::BTreeMap;

/// Largest env size this crate accepts (64 MiB). Real environments are a few KiB to a few
/// hundred KiB; the cap only stops a mistyped size from allocating gigabytes.
pub const MAX_ENV_SIZE: usize = 64 << 20;

/// Byte order of the CRC32 stored at the start of each copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Endianness {
    /// Little-endian (the default, as on ARM and x86 targets).
    #[default]
    Little,
    /// Big-endian (`mkenvimage -b`).
    Big,
}

/// Geometry of one environment copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvLayout {
    /// Total size of one copy in bytes, header included (`CONFIG_ENV_SIZE`).
    pub size: usize,
    /// Redundant format: a flags byte follows the CRC and the env is kept in two copies.
    pub redundant: bool,
    /// Byte order of the stored CRC.
    pub endianness: Endianness,
    /// Byte used to fill the data area after the terminator when writing.
    pub padding: u8,
}

impl EnvLayout {
    /// A single-copy layout of `size` bytes: little-endian CRC, 0xFF padding.
    pub const fn single(size: usize) -> Self {
        Self {
            size,
            redundant: false,
            endianness: Endianness::Little,
            padding: 0xFF,
        }
    }

    /// A redundant layout (two copies with a flags byte) of `size` bytes per copy.
    pub const fn redundant(size: usize) -> Self {
        Self {
            size,
            redundant: true,
            endianness: Endianness::Little,
            padding: 0xFF,
        }
    }

    /// The same layout with another CRC byte order.
    pub const fn with_endianness(self, endianness: Endianness) -> Self {
        Self { endianness, ..self }
    }

    /// The same layout with another padding byte.
    pub const fn with_padding(self, padding: u8) -> Self {
        Self { padding, ..self }
    }

    /// Length of the header: 4 (CRC) or 5 (CRC and flags) bytes.
    pub const fn header_len(&self) -> usize {
        if self.redundant { 5 } else { 4 }
    }

    /// Bytes available for `key=value\0` entries and the final `\0`.
    pub const fn data_capacity(&self) -> usize {
        self.size.saturating_sub(self.header_len())
    }

    /// Checks that the size can hold a header and at least an empty environment.
    pub fn check(&self) -> Result<(), FormatError> {
        if self.size < self.header_len() + 1 {
            return Err(FormatError::SizeTooSmall {
                size: self.size,
                header: self.header_len(),
            });
        }
        if self.size > MAX_ENV_SIZE {
            return Err(FormatError::SizeTooLarge {
                size: self.size,
                max: MAX_ENV_SIZE,
            });
        }
        Ok(())
    }
}

/// A malformed environment image or an environment that cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The env size cannot even hold the header and the terminator.
    #[error("env size {size:#x} is too small: the header alone takes {header} bytes")]
    SizeTooSmall {
        /// The configured env size.
        size: usize,
        /// Header length of the layout.
        header: usize,
    },
    /// The env size is above [`MAX_ENV_SIZE`].
    #[error("env size {size:#x} exceeds the supported maximum {max:#x}")]
    SizeTooLarge {
        /// The configured env size.
        size: usize,
        /// The maximum.
        max: usize,
    },
    /// A buffer handed to the parser is not exactly one copy long.
    #[error("env copy is {len} bytes but the env size is {size:#x}")]
    LengthMismatch {
        /// Length of the buffer.
        len: usize,
        /// The configured env size.
        size: usize,
    },
    /// The stored CRC does not match the data area.
    #[error("bad CRC: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC read from the header.
        stored: u32,
        /// CRC of the data area.
        computed: u32,
    },
    /// An entry runs to the end of the data area without its `\0`.
    #[error("env entry at data offset {offset} is not terminated by NUL")]
    Unterminated {
        /// Offset of the entry inside the data area.
        offset: usize,
    },
    /// An entry is not valid UTF-8.
    #[error("env entry at data offset {offset} is not valid UTF-8")]
    NotUtf8 {
        /// Offset of the entry inside the data area.
        offset: usize,
    },
    /// A variable name that the format or U-Boot cannot represent.
    #[error("invalid U-Boot env variable name {key:?}: {problem}")]
    InvalidKey {
        /// The offending name.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A value that the format cannot represent.
    #[error("invalid value for U-Boot env variable {key:?}: {problem}")]
    InvalidValue {
        /// The variable whose value is refused.
        key: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The entries do not fit in the data area.
    #[error(
        "env data of {needed} bytes does not fit in env size {size:#x} \
         ({capacity} bytes available after the header)"
    )]
    TooLarge {
        /// Bytes the entries and terminator need.
        needed: usize,
        /// The configured env size.
        size: usize,
        /// Bytes available in the data area.
        capacity: usize,
    },
}

/// The header of one copy, decoded without parsing the data area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyHeader {
    /// CRC stored in the header.
    pub stored_crc: u32,
    /// CRC computed over the data area.
    pub computed_crc: u32,
    /// The flags byte (redundant layouts only).
    pub flags: Option<u8>,
}

impl CopyHeader {
    /// Whether the stored CRC matches the data.
    pub const fn crc_ok(&self) -> bool {
        self.stored_crc == self.computed_crc
    }
}

/// A parsed environment copy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvImage {
    /// The variables, sorted by name.
    pub vars: BTreeMap<String, String>,
    /// The flags byte (redundant layouts only).
    pub flags: Option<u8>,
}

/// Decodes the header of `bytes` (one whole copy) and computes the data CRC.
pub fn read_header(layout: &EnvLayout, bytes: &[u8]) -> Result<CopyHeader, FormatError> {
    layout.check()?;
    if bytes.len() != layout.size {
        return Err(FormatError::LengthMismatch {
            len: bytes.len(),
            size: layout.size,
        });
    }
    let (head, data) = bytes.split_at(layout.header_len());
    let crc_bytes = [head[0], head[1], head[2], head[3]];
    let stored_crc = match layout.endianness {
        Endianness::Little => u32::from_le_bytes(crc_bytes),
        Endianness::Big => u32::from_be_bytes(crc_bytes),
    };
    let flags = layout.redundant.then(|| head[4]);
    Ok(CopyHeader {
        stored_crc,
        computed_crc: crc32fast::hash(data),
        flags,
    })
}

/// Parses one whole copy: checks length and CRC, then reads the entries.
pub fn parse(layout: &EnvLayout, bytes: &[u8]) -> Result<EnvImage, FormatError> {
    let header = read_header(layout, bytes)?;
    if !header.crc_ok() {
        return Err(FormatError::BadCrc {
            stored: header.stored_crc,
            computed: header.computed_crc,
        });
    }
    let vars = parse_data(&bytes[layout.header_len()..])?;
    Ok(EnvImage {
        vars,
        flags: header.flags,
    })
}

/// Parses a data area (no header, no CRC check).
///
/// Reads `key=value\0` entries until an empty entry (the terminating `\0`) or the end of the
/// area. Like libubootenv, entries without `=` and entries with an empty name are skipped, and
/// a name that appears twice keeps its last value.
pub fn parse_data(data: &[u8]) -> Result<BTreeMap<String, String>, FormatError> {
    let mut vars = BTreeMap::new();
    let mut offset = 0;
    while let Some(rest) = data
        .get(offset..)
        .filter(|r| r.first().is_some_and(|&b| b != 0))
    {
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(FormatError::Unterminated { offset });
        };
        let entry =
            std::str::from_utf8(&rest[..len]).map_err(|_| FormatError::NotUtf8 { offset })?;
        if let Some((key, value)) = entry.split_once('=')
            && !key.is_empty()
        {
            vars.insert(key.to_owned(), value.to_owned());
        }
        offset += len + 1;
    }
    Ok(vars)
}

/// Bytes the data area needs for `vars`: every `key=value\0` plus the final `\0`.
pub fn encoded_len(vars: &BTreeMap<String, String>) -> usize {
    vars.iter()
        .map(|(k, v)| k.len() + v.len() + 2)
        .sum::<usize>()
        + 1
}

/// Encodes `vars` into one whole copy of `layout.size` bytes.
///
/// Entries are written in name order (as U-Boot's `env export`/`saveenv` and `fw_setenv` do),
/// then one `\0`, then `layout.padding` up to the end. `flags` is written only for redundant
/// layouts. Every entry must pass [`check_entry`].
pub fn serialize(
    layout: &EnvLayout,
    vars: &BTreeMap<String, String>,
    flags: u8,
) -> Result<Vec<u8>, FormatError> {
    layout.check()?;
    for (key, value) in vars {
        check_entry(key, value)?;
    }
    let needed = encoded_len(vars);
    let capacity = layout.data_capacity();
    if needed > capacity {
        return Err(FormatError::TooLarge {
            needed,
            size: layout.size,
            capacity,
        });
    }
    let mut out = Vec::with_capacity(layout.size);
    out.extend_from_slice(&[0; 4]);
    if layout.redundant {
        out.push(flags);
    }
    for (key, value) in vars {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out.push(0);
    out.resize(layout.size, layout.padding);
    let crc = crc32fast::hash(&out[layout.header_len()..]);
    let crc_bytes = match layout.endianness {
        Endianness::Little => crc.to_le_bytes(),
        Endianness::Big => crc.to_be_bytes(),
    };
    out[..4].copy_from_slice(&crc_bytes);
    Ok(out)
}

/// Checks what the binary format itself cannot represent: an empty name, a name containing
/// `=` or NUL, a value containing NUL. Used by [`serialize`]; anything [`parse_data`] returns
/// passes it.
pub fn check_entry(key: &str, value: &str) -> Result<(), FormatError> {
    let problem = if key.is_empty() {
        Some("the name is empty")
    } else if key.contains('=') {
        Some("the name contains '='")
    } else if key.contains('\0') {
        Some("the name contains NUL")
    } else {
        None
    };
    if let Some(problem) = problem {
        return Err(FormatError::InvalidKey {
            key: key.to_owned(),
            problem,
        });
    }
    if value.contains('\0') {
        return Err(FormatError::InvalidValue {
            key: key.to_owned(),
            problem: "the value contains NUL",
        });
    }
    Ok(())
}

/// Checks a variable before it is set: [`check_entry`], plus names that U-Boot or the
/// line-based tools would misread.
///
/// Refused names: empty, or containing `=` (libubootenv refuses both), or containing NUL or
/// any other control character such as a newline (`fw_printenv`, `fw_setenv -s` and
/// `mkenvimage` are line based), or starting with `#`, a space or a tab (U-Boot's importer
/// skips leading blanks and treats `#` entries as comments). Values may hold anything but NUL.
pub fn validate_var(key: &str, value: &str) -> Result<(), FormatError> {
    check_entry(key, value)?;
    validate_key(key)
}

/// The name part of [`validate_var`], also used for variables being removed.
pub fn validate_key(key: &str) -> Result<(), FormatError> {
    check_entry(key, "")?;
    let problem = if key.chars().any(char::is_control) {
        Some("the name contains a control character (newline, tab, ...)")
    } else if key.starts_with('#') {
        Some("the name starts with '#' (U-Boot reads such entries as comments)")
    } else if key.starts_with(' ') {
        Some("the name starts with a space (U-Boot strips leading blanks)")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(FormatError::InvalidKey {
            key: key.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn single_layout_bytes() {
        let layout = EnvLayout::single(0x20);
        let out = serialize(&layout, &vars(&[("b", "2"), ("a", "1")]), 7).unwrap();
        assert_eq!(out.len(), 0x20);
        assert_eq!(&out[4..13], b"a=1\0b=2\0\0");
        assert!(out[13..].iter().all(|&b| b == 0xFF));
        let crc = crc32fast::hash(&out[4..]);
        assert_eq!(&out[..4], &crc.to_le_bytes());
        let image = parse(&layout, &out).unwrap();
        assert_eq!(image.vars, vars(&[("a", "1"), ("b", "2")]));
        assert_eq!(image.flags, None);
    }

    #[test]
    fn redundant_layout_has_flags_byte() {
        let layout = EnvLayout::redundant(0x20).with_padding(0);
        let out = serialize(&layout, &vars(&[("k", "v")]), 0xAB).unwrap();
        assert_eq!(out[4], 0xAB);
        assert_eq!(&out[5..10], b"k=v\0\0");
        assert!(out[10..].iter().all(|&b| b == 0));
        assert_eq!(&out[..4], &crc32fast::hash(&out[5..]).to_le_bytes());
        assert_eq!(parse(&layout, &out).unwrap().flags, Some(0xAB));
    }

    #[test]
    fn big_endian_crc() {
        let le = EnvLayout::single(0x40);
        let be = le.with_endianness(Endianness::Big);
        let v = vars(&[("x", "y")]);
        let a = serialize(&le, &v, 0).unwrap();
        let b = serialize(&be, &v, 0).unwrap();
        assert_eq!(a[4..], b[4..]);
        let mut swapped = [a[0], a[1], a[2], a[3]];
        swapped.reverse();
        assert_eq!(swapped, [b[0], b[1], b[2], b[3]]);
        assert_eq!(parse(&be, &b).unwrap().vars, v);
        // The wrong byte order is a CRC error, not a silent misread.
        assert!(matches!(parse(&le, &b), Err(FormatError::BadCrc { .. })));
    }

    #[test]
    fn empty_env_is_one_nul() {
        let layout = EnvLayout::single(8);
        let out = serialize(&layout, &BTreeMap::new(), 0).unwrap();
        assert_eq!(&out[4..], &[0, 0xFF, 0xFF, 0xFF]);
        assert!(parse(&layout, &out).unwrap().vars.is_empty());
    }

    #[test]
    fn bad_crc_and_length_are_reported() {
        let layout = EnvLayout::single(0x20);
        let mut out = serialize(&layout, &vars(&[("a", "1")]), 0).unwrap();
        out[10] ^= 1;
        assert!(matches!(
            parse(&layout, &out),
            Err(FormatError::BadCrc { .. })
        ));
        assert_eq!(
            parse(&layout, &out[..0x1F]),
            Err(FormatError::LengthMismatch {
                len: 0x1F,
                size: 0x20
            })
        );
    }

    #[test]
    fn parse_data_follows_libubootenv() {
        // Entry without '=', empty name, duplicate (last wins), empty value, then the end.
        let data = b"noequals\0=x\0a=1\0a=2\0e=\0c=x=y\0\0z=ignored\0";
        let parsed = parse_data(data).unwrap();
        assert_eq!(parsed, vars(&[("a", "2"), ("c", "x=y"), ("e", "")]));
        // The end of the area also ends the list.
        assert_eq!(parse_data(b"a=1\0").unwrap(), vars(&[("a", "1")]));
        assert_eq!(parse_data(b"").unwrap(), BTreeMap::new());
        assert_eq!(
            parse_data(b"a=1\0b=2"),
            Err(FormatError::Unterminated { offset: 4 })
        );
        assert_eq!(
            parse_data(b"a=1\0b=\xff\0"),
            Err(FormatError::NotUtf8 { offset: 4 })
        );
    }

    #[test]
    fn exact_fit_and_overflow() {
        // 0x10 - 4 = 12 bytes of data: "k=" + 8 + "\0" + "\0" is exactly 12.
        let layout = EnvLayout::single(0x10);
        let fits = vars(&[("k", "12345678")]);
        assert_eq!(encoded_len(&fits), 12);
        let out = serialize(&layout, &fits, 0).unwrap();
        assert_eq!(parse(&layout, &out).unwrap().vars, fits);
        let over = vars(&[("k", "123456789")]);
        let err = serialize(&layout, &over, 0).unwrap_err();
        assert_eq!(
            err,
            FormatError::TooLarge {
                needed: 13,
                size: 0x10,
                capacity: 12
            }
        );
        assert_eq!(
            err.to_string(),
            "env data of 13 bytes does not fit in env size 0x10 \
             (12 bytes available after the header)"
        );
        // The flags byte takes one more byte in redundant mode.
        assert!(serialize(&EnvLayout::redundant(0x10), &fits, 0).is_err());
    }

    #[test]
    fn layout_size_limits() {
        assert!(EnvLayout::single(4).check().is_err());
        assert!(EnvLayout::single(5).check().is_ok());
        assert!(EnvLayout::redundant(5).check().is_err());
        assert!(EnvLayout::single(MAX_ENV_SIZE + 1).check().is_err());
        assert_eq!(EnvLayout::redundant(0x4000).data_capacity(), 0x4000 - 5);
    }

    #[test]
    fn serialize_refuses_unencodable_entries() {
        let layout = EnvLayout::single(0x100);
        for (key, value) in [("", "v"), ("a=b", "v"), ("a\0b", "v"), ("k", "a\0b")] {
            let err = serialize(&layout, &vars(&[(key, value)]), 0).unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::InvalidKey { .. } | FormatError::InvalidValue { .. }
                ),
                "{key:?}={value:?}: {err}"
            );
        }
    }

    #[test]
    fn validation_names_the_key_and_problem() {
        assert!(validate_var("BOOT_ORDER", "A B").is_ok());
        assert!(validate_var("bootcmd", "run a\nrun b; echo \\ ok").is_ok());
        assert!(validate_var(".flags", "x:sa").is_ok());
        assert!(validate_var("k", "").is_ok());
        for key in ["", "a=b", "a\nb", "a\rb", "a\tb", "#c", " k", "\tk", "a\0"] {
            let err = validate_var(key, "v").unwrap_err();
            let FormatError::InvalidKey { key: k, .. } = &err else {
                panic!("{err}")
            };
            assert_eq!(k, key);
            assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
        }
        let err = validate_var("k", "a\0b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for U-Boot env variable \"k\": the value contains NUL"
        );
    }
}
