//! `fw_env.config`: the device description shared with `fw_printenv`/`fw_setenv`.
//!
//! Each non-comment line is `DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]`; one line describes a
//! single env, two lines a redundant one (further lines are ignored, as libubootenv does).
//! The numbers follow libubootenv's `sscanf("%s %lli %zx ...")`, which has a trap:
//!
//! - OFFSET is C-style: `0x3fc000` is hex, `010` is *octal*, `4096` is decimal;
//! - SIZE is always hexadecimal: `0x4000` and `4000` both mean 16 KiB, and `16384` means
//!   0x16384.
//!
//! Unlike libubootenv, which silently skips a line it cannot scan, a malformed line is an
//! error here: a skipped line would turn a redundant env into a single one.

use std::path::{Path, PathBuf};

use super::format::EnvLayout;
use super::fs::{DeviceCopy, DeviceStore};

/// A malformed `fw_env.config`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line cannot be parsed.
    #[error("fw_env.config line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// No device line at all.
    #[error("fw_env.config describes no env device")]
    Empty,
    /// The two copies have different sizes (libubootenv refuses this too).
    #[error("fw_env.config copies have different sizes: {first:#x} and {second:#x}")]
    SizeMismatch {
        /// Size of the first copy.
        first: usize,
        /// Size of the second copy.
        second: usize,
    },
}

/// One device line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvDevice {
    /// Device or file.
    pub path: PathBuf,
    /// Byte offset of the copy.
    pub offset: u64,
    /// Env size.
    pub size: usize,
}

/// A parsed `fw_env.config`: one device line (single) or two (redundant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FwEnvConfig {
    /// The device lines in file order (one or two).
    pub devices: Vec<FwEnvDevice>,
}

impl FwEnvConfig {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let mut devices = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let mut fields = line.split_whitespace();
            let Some(path) = fields.next().filter(|f| !f.starts_with('#')) else {
                continue;
            };
            let bad = |problem: String| ConfigError::Line {
                line: index + 1,
                problem,
            };
            let (Some(offset), Some(size)) = (fields.next(), fields.next()) else {
                return Err(bad(format!(
                    "expected DEVICE OFFSET SIZE, got {:?}",
                    line.trim()
                )));
            };
            let offset =
                parse_c_integer(offset).ok_or_else(|| bad(format!("bad offset {offset:?}")))?;
            let size = parse_hex(size)
                .filter(|&s| s > 0)
                .ok_or_else(|| bad(format!("bad size {size:?} (hexadecimal, not zero)")))?;
            devices.push(FwEnvDevice {
                path: PathBuf::from(path),
                offset,
                size,
            });
            if devices.len() == 2 {
                break;
            }
        }
        match devices.as_slice() {
            [] => Err(ConfigError::Empty),
            [a, b] if a.size != b.size => Err(ConfigError::SizeMismatch {
                first: a.size,
                second: b.size,
            }),
            _ => Ok(Self { devices }),
        }
    }

    /// The layout: the configured size, redundant if there are two lines, little-endian CRC,
    /// 0xFF padding.
    pub fn layout(&self) -> EnvLayout {
        let size = self.devices.first().map_or(0, |d| d.size);
        if self.devices.len() > 1 {
            EnvLayout::redundant(size)
        } else {
            EnvLayout::single(size)
        }
    }

    /// A device store for the configured copies.
    pub fn store(&self) -> DeviceStore {
        let copy = |d: &FwEnvDevice| DeviceCopy {
            path: d.path.clone(),
            offset: d.offset,
        };
        match self.devices.as_slice() {
            [a, b, ..] => DeviceStore::redundant(copy(a), copy(b)),
            [a] => DeviceStore::single(a.path.clone(), a.offset),
            [] => DeviceStore::single(PathBuf::new(), 0),
        }
    }
}

/// `strtoull(s, 0)`: `0x` hex, leading `0` octal, otherwise decimal.
fn parse_c_integer(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if s.len() > 1
        && let Some(octal) = s.strip_prefix('0')
    {
        u64::from_str_radix(octal, 8).ok()
    } else {
        s.parse().ok()
    }
}

/// `%zx`: hexadecimal with an optional `0x`.
fn parse_hex(s: &str) -> Option<usize> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    usize::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redundant_config() {
        let text = "# device offset size sector\n\
                    \n  # indented comment\n\
                    /dev/mmcblk0 0x3f8000 0x4000 0x200\n\
                    /dev/mmcblk0\t0x3fc000\t4000\n\
                    /dev/ignored 0 0x4000\n";
        let config = FwEnvConfig::parse(text).unwrap();
        assert_eq!(config.devices.len(), 2);
        assert_eq!(config.devices[1].offset, 0x3fc000);
        assert_eq!(config.devices[1].size, 0x4000);
        assert_eq!(config.layout(), EnvLayout::redundant(0x4000));
        let store = config.store();
        assert_eq!(store.device_copies()[0].offset, 0x3f8000);
    }

    #[test]
    fn number_quirks_match_libubootenv() {
        let config = FwEnvConfig::parse("/boot/uboot.env 010 16384\n").unwrap();
        assert_eq!(config.devices[0].offset, 8);
        assert_eq!(config.devices[0].size, 0x16384);
        assert_eq!(config.layout(), EnvLayout::single(0x16384));
        let config = FwEnvConfig::parse("/f 4096 0X100").unwrap();
        assert_eq!(
            (config.devices[0].offset, config.devices[0].size),
            (4096, 0x100)
        );
        let config = FwEnvConfig::parse("/f 0 100").unwrap();
        assert_eq!(config.devices[0].offset, 0);
    }

    #[test]
    fn malformed_configs() {
        let err = FwEnvConfig::parse("/dev/mmcblk0 0x3fc000\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("fw_env.config line 1: expected"),
            "{err}"
        );
        let err = FwEnvConfig::parse("#x\n/dev/x 0x1g 0x4000\n").unwrap_err();
        assert_eq!(err.to_string(), "fw_env.config line 2: bad offset \"0x1g\"");
        assert!(FwEnvConfig::parse("/dev/x 08 0x4000").is_err());
        assert!(FwEnvConfig::parse("/dev/x 0 0").is_err());
        assert!(matches!(
            FwEnvConfig::parse("# nothing\n"),
            Err(ConfigError::Empty)
        ));
        let err = FwEnvConfig::parse("/a 0 0x4000\n/b 0 0x2000\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "fw_env.config copies have different sizes: 0x4000 and 0x2000"
        );
        let err = FwEnvConfig::read(Path::new("/nonexistent/fw_env.config")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("failed to read /nonexistent/fw_env.config: ")
        );
    }
}
