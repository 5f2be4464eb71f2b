//! The U-Boot environment: binary format, storage, and the redundant-copy protocol.
//!
//! Compatible with U-Boot itself, Debian's `fw_printenv`/`fw_setenv` (libubootenv) and
//! `mkenvimage` (u-boot-tools); `tests/env_interop.rs` checks this against the real tools.
//!
//! # Format
//!
//! One copy is exactly `size` bytes (`CONFIG_ENV_SIZE`):
//!
//! ```text
//! single:     | crc32 (4) |           data (size - 4)                     |
//! redundant:  | crc32 (4) | flags (1) | data (size - 5)                   |
//! data:       key=value\0 key=value\0 ... \0  padding up to the end
//! ```
//!
//! - `crc32` is the zlib CRC32 of the whole data area, padding included, little-endian by
//!   default ([`Endianness::Big`] for `mkenvimage -b` images).
//! - The entries are followed by one extra `\0` (an empty environment is a single `\0`);
//!   the rest is padding: 0xFF by default as `mkenvimage` writes it, configurable (U-Boot's
//!   own `saveenv` pads with 0x00; `fw_setenv` leaves whatever its buffer held). Padding is
//!   never checked on read, only covered by the CRC.
//! - The data must fit: every `key=value\0` plus the final `\0` ≤ `size - header`.
//! - Entries are written sorted by name ([`std::collections::BTreeMap`] order, i.e. byte
//!   order), as U-Boot's `env export`/`saveenv` and `fw_setenv` do, so the data area is
//!   byte-identical to theirs and to `mkenvimage` given sorted input. One exception:
//!   libubootenv moves `.flags` to the end; here it is an ordinary variable, sorted first.
//! - Reading follows libubootenv: an entry without `=` or with an empty name is skipped, a
//!   duplicate name keeps its last value, and the list ends at an empty entry or at the end of
//!   the data area. Unlike libubootenv, entries must be UTF-8 (an error otherwise, never a
//!   lossy rewrite).
//!
//! Names are validated before they are set ([`validate_var`]): not empty, no `=` (both refused
//! by libubootenv), no control characters such as newline (the tools are line based), not
//! starting with `#` or a blank (U-Boot's importer skips those). Values may hold anything but
//! NUL. Two U-Boot behaviours to keep in mind: it reads `key=` (empty value) as "unset", and
//! its importer (`himport_r`) treats `\` in a value as an escape (its own `saveenv` doubles
//! backslashes, while libubootenv, `mkenvimage` and this crate store values verbatim), so
//! avoid backslashes in values U-Boot must read.
//!
//! # Storage
//!
//! [`EnvStore`] reads and writes raw copies: [`FileStore`] (whole files such as `uboot.env`,
//! replaced atomically), [`DeviceStore`] (offsets of a block device or image, written in place
//! and fsynced), [`MemoryStore`] (tests, with torn and failed writes). [`FwEnvConfig`] reads
//! the `fw_env.config` that `fw_printenv` uses and gives the matching layout and store.
//!
//! # Redundant protocol
//!
//! Two copies (two offsets of a device, two devices, or two files). The API numbers them 0
//! and 1; messages say "copy 1" and "copy 2". The flags byte is a counter incremented on every
//! write:
//!
//! - a reader uses the copy with a valid CRC; if both are valid, the higher flags wins, except
//!   that 0 beats 255 (the counter wrapped); equal flags pick the first copy
//!   ([`select_copy`]). This is exactly libubootenv's and U-Boot's rule; note that only the
//!   pair 255/0 is a wrap: 254 still beats 0.
//! - a write goes to the *other* copy with the current flags + 1 (wrapping), followed by
//!   fsync. The copy in use is never touched, so a power cut mid-write leaves a torn copy
//!   with a bad CRC and the previous environment still valid.
//! - if no copy is valid, [`UbootEnv::load`] fails ([`EnvError::Corrupt`] or
//!   [`EnvError::Missing`]); only [`UbootEnv::load_or_default`] starts from defaults. Its
//!   first write then goes to the second copy with the first copy's flags byte + 1, as
//!   libubootenv does.
//!
//! Limits: the "boolean" flag scheme of some NAND/NOR drivers (active/obsolete flags) is not
//! supported, only the incrementing counter used on block devices and files. A single-copy
//! environment on a block device can be torn by a power cut (U-Boot then boots with its
//! built-in default environment); [`FileStore`] avoids that with an atomic rename, though
//! FAT's rename is only as crash-safe as the FAT driver. There is no locking against a
//! concurrent `fw_setenv`. With no valid copy, libubootenv's `fw_setenv` silently starts from
//! its default environment; this crate refuses unless asked.
//!
//! # Use
//!
//! ```no_run
//! use basalt_bootloader::env::{DeviceCopy, DeviceStore, EnvLayout, EnvUpdate, UbootEnv};
//!
//! let store = DeviceStore::redundant(
//!     DeviceCopy { path: "/dev/mmcblk0".into(), offset: 0x3f8000 },
//!     DeviceCopy { path: "/dev/mmcblk0".into(), offset: 0x3fc000 },
//! );
//! let mut env = UbootEnv::load(store, EnvLayout::redundant(0x4000))?;
//! println!("order: {:?}", env.get("BOOT_ORDER"));
//! env.apply(&EnvUpdate::new().set("BOOT_ORDER", "B A").set("BOOT_B_LEFT", "3"))?;
//! # Ok::<(), basalt_bootloader::env::EnvError>(())
//! ```

mod config;
mod format;
mod fs;
mod handle;
mod select;
mod store;
mod update;

pub use config::{ConfigError, FwEnvConfig, FwEnvDevice};
pub use format::{
    CopyHeader, Endianness, EnvImage, EnvLayout, FormatError, MAX_ENV_SIZE, check_entry,
    encoded_len, parse, parse_data, read_header, serialize, validate_key, validate_var,
};
pub use fs::{DeviceCopy, DeviceStore, FileStore};
pub use handle::{ApplyOutcome, EnvError, EnvSource, UbootEnv};
pub use select::select_copy;
pub use store::{EnvStore, MemoryStore, StoreError, WriteFault};
pub use update::EnvUpdate;
