//! A U-Boot environment stored as a file on a FAT volume reached through [`EspFs`]: the
//! `uboot.env` on the BOOT partition of a Raspberry Pi or QEMU virt image, read and written
//! inside an image file or device without mounting it (or on a mounted BOOT directory).
//!
//! One copy only (the boards that keep the env in a FAT file use a single copy). Writes go
//! through [`EspFs::write_file_atomic`], so a reader sees the old or the new file.

use std::io;

use crate::env::{EnvStore, StoreError};
use crate::systemd_boot::EspFs;

/// The env file `path` on the FAT volume `esp`.
#[derive(Debug)]
pub struct EspFileStore<E: EspFs> {
    esp: E,
    path: String,
}

impl<E: EspFs> EspFileStore<E> {
    /// The env in file `path` (e.g. `uboot.env`) of `esp`.
    pub fn new(esp: E, path: impl Into<String>) -> Self {
        Self {
            esp,
            path: path.into(),
        }
    }

    /// The volume holding the file.
    pub fn esp(&self) -> &E {
        &self.esp
    }
}

impl<E: EspFs> EnvStore for EspFileStore<E> {
    fn copies(&self) -> usize {
        1
    }

    fn location(&self, _copy: usize) -> String {
        format!("{} on {}", self.path, self.esp.describe())
    }

    fn read_copy(&self, copy: usize, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        if copy != 0 {
            return Err(StoreError::NoSuchCopy { copy, copies: 1 });
        }
        match self.esp.read_file(&self.path) {
            Ok(data) if data.len() < len => Err(StoreError::Short {
                copy,
                location: self.location(copy),
                needed: len,
            }),
            Ok(mut data) => {
                data.truncate(len);
                Ok(Some(data))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(StoreError::Read {
                copy,
                location: self.location(copy),
                source: io::Error::other(e),
            }),
        }
    }

    fn write_copy(&mut self, copy: usize, data: &[u8]) -> Result<(), StoreError> {
        if copy != 0 {
            return Err(StoreError::NoSuchCopy { copy, copies: 1 });
        }
        let location = self.location(copy);
        self.esp
            .write_file_atomic(&self.path, data)
            .map_err(|e| StoreError::Write {
                copy,
                location,
                source: io::Error::other(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{EnvLayout, EnvUpdate, UbootEnv};
    use crate::systemd_boot::{FatEsp, format_fat};

    #[test]
    fn env_round_trips_through_a_fat_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("boot.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        format_fat(&img, 0, 16 << 20, None, "BOOT").unwrap();
        let layout = EnvLayout::single(0x4000);
        let store = EspFileStore::new(FatEsp::open_whole(&img).unwrap(), "uboot.env");
        let err = UbootEnv::load(store, layout).unwrap_err();
        assert!(err.to_string().contains("uboot.env"), "{err}");

        let store = EspFileStore::new(FatEsp::open_whole(&img).unwrap(), "uboot.env");
        let mut env = UbootEnv::load_or_default(store, layout, Default::default()).unwrap();
        env.apply(&EnvUpdate::new().set("BOOT_ORDER", "A B"))
            .unwrap();

        let store = EspFileStore::new(FatEsp::open_whole(&img).unwrap(), "uboot.env");
        let env = UbootEnv::load(store, layout).unwrap();
        assert_eq!(env.get("BOOT_ORDER"), Some("A B"));
    }
}
