//! The verified root: the slot's `rootfs.img` (squashfs, then at the next 4096-byte
//! boundary a dm-verity superblock and hash tree; `basalt-image`'s `verity` module) mapped
//! through the kernel's dm-verity with the root hash from the kernel command line.
//!
//! Nothing read from the image is trusted on its own. The squashfs superblock only says
//! where the hash area starts (`bytes_used`, rounded up to 4096); the verity superblock
//! gives block sizes, block count and salt. If either lies, the tree the kernel walks does
//! not hash to the command line's root hash and every read fails. The fields are checked
//! for sanity anyway (and the algorithm name is restricted to `sha256`, so nothing from
//! the image is pasted into the table unchecked) to turn a damaged image into a clear
//! error instead of a kernel log line.
//!
//! **Corruption handling.** The table carries `panic_on_corruption`: the first block
//! that does not match its hash panics the kernel, and `panic=10` on the command line (from
//! the board) resets the board 10 s later. The boot attempt was already counted by the boot
//! script, so after the tries run out U-Boot falls back to the other slot. The alternatives
//! are worse for an unattended node: `restart_on_corruption` reboots at once without
//! leaving the error readable on the console, and the default (EIO) leaves a half-working
//! system whose failures depend on which files happen to be read.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// squashfs magic, "hsqs" little-endian.
pub const SQUASHFS_MAGIC: u32 = 0x7371_7368;
/// Offset of `bytes_used` (u64 LE) in the squashfs superblock.
const SQUASHFS_BYTES_USED: usize = 40;
/// The hash area starts at this alignment after the data.
pub const HASH_ALIGN: u64 = 4096;
/// dm-verity superblock signature.
pub const VERITY_SIGNATURE: &[u8; 8] = b"verity\0\0";
/// Longest salt the superblock holds.
const MAX_SALT: usize = 256;
/// The only algorithm accepted (the root hash on the command line is 64 hex digits).
pub const ALGORITHM: &str = "sha256";

/// A damaged or unexpected image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Too short to hold a superblock.
    #[error("{0} superblock is truncated")]
    Truncated(&'static str),
    /// Wrong magic.
    #[error("not a squashfs image (magic {0:#010x})")]
    NotSquashfs(u32),
    /// No verity signature at the hash offset.
    #[error("no dm-verity superblock at byte {0}")]
    NoVeritySuperblock(u64),
    /// A field out of range.
    #[error("dm-verity superblock: {0}")]
    Invalid(String),
}

/// `bytes_used` from a squashfs superblock (its first 96 bytes suffice).
pub fn squashfs_bytes_used(superblock: &[u8]) -> Result<u64, FormatError> {
    if superblock.len() < SQUASHFS_BYTES_USED + 8 {
        return Err(FormatError::Truncated("squashfs"));
    }
    let magic = u32::from_le_bytes(superblock[0..4].try_into().unwrap_or_default());
    if magic != SQUASHFS_MAGIC {
        return Err(FormatError::NotSquashfs(magic));
    }
    Ok(u64::from_le_bytes(
        superblock[SQUASHFS_BYTES_USED..SQUASHFS_BYTES_USED + 8]
            .try_into()
            .unwrap_or_default(),
    ))
}

/// Where the hash area starts: `bytes_used` rounded up to 4096.
pub fn hash_offset(bytes_used: u64) -> u64 {
    bytes_used.div_ceil(HASH_ALIGN) * HASH_ALIGN
}

/// The fields of a dm-verity superblock (`struct verity_sb`, version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// Hash format type (1: normal, the kernel table's first parameter).
    pub hash_type: u32,
    /// Algorithm name.
    pub algorithm: String,
    /// Data block size.
    pub data_block_size: u32,
    /// Hash block size.
    pub hash_block_size: u32,
    /// Data blocks.
    pub data_blocks: u64,
    /// Salt.
    pub salt: Vec<u8>,
}

/// Parses the 512-byte superblock at the hash offset.
pub fn parse_superblock(sb: &[u8], at: u64) -> Result<Superblock, FormatError> {
    if sb.len() < 88 + MAX_SALT {
        return Err(FormatError::Truncated("dm-verity"));
    }
    if &sb[0..8] != VERITY_SIGNATURE {
        return Err(FormatError::NoVeritySuperblock(at));
    }
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap_or_default());
    let version = u32_at(8);
    if version != 1 {
        return Err(FormatError::Invalid(format!(
            "version {version}, expected 1"
        )));
    }
    let hash_type = u32_at(12);
    if hash_type != 1 {
        return Err(FormatError::Invalid(format!(
            "hash type {hash_type}, expected 1"
        )));
    }
    let alg_raw = &sb[32..64];
    let alg_len = alg_raw
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(alg_raw.len());
    let algorithm = String::from_utf8_lossy(&alg_raw[..alg_len]).into_owned();
    if algorithm != ALGORITHM {
        return Err(FormatError::Invalid(format!(
            "algorithm {algorithm:?}, expected {ALGORITHM}"
        )));
    }
    let data_block_size = u32_at(64);
    let hash_block_size = u32_at(68);
    for (name, size) in [("data", data_block_size), ("hash", hash_block_size)] {
        if !size.is_power_of_two() || !(512..=65536).contains(&size) {
            return Err(FormatError::Invalid(format!("{name} block size {size}")));
        }
    }
    let data_blocks = u64::from_le_bytes(sb[72..80].try_into().unwrap_or_default());
    if data_blocks == 0 {
        return Err(FormatError::Invalid("no data blocks".into()));
    }
    let salt_size = u16::from_le_bytes(sb[80..82].try_into().unwrap_or_default()) as usize;
    if salt_size > MAX_SALT {
        return Err(FormatError::Invalid(format!("salt of {salt_size} bytes")));
    }
    Ok(Superblock {
        hash_type,
        algorithm,
        data_block_size,
        hash_block_size,
        data_blocks,
        salt: sb[88..88 + salt_size].to_vec(),
    })
}

/// What the kernel does when a block does not match its hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// Return `EIO` (the kernel's default).
    Error,
    /// `restart_on_corruption`.
    Restart,
    /// `panic_on_corruption` (Basalt's choice, see the module documentation).
    Panic,
}

/// Everything needed to map a verity image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of squashfs data.
    pub bytes_used: u64,
    /// Byte offset of the verity superblock.
    pub hash_offset: u64,
    /// The superblock.
    pub superblock: Superblock,
}

impl Layout {
    /// Checks that the superblock describes exactly the squashfs before it.
    pub fn check(&self, file_size: u64) -> Result<(), FormatError> {
        let sb = &self.superblock;
        let data_bytes = sb.data_blocks * u64::from(sb.data_block_size);
        if data_bytes < self.bytes_used || data_bytes > self.hash_offset {
            return Err(FormatError::Invalid(format!(
                "{} data blocks of {} bytes do not cover the {} bytes of squashfs before the hash area at {}",
                sb.data_blocks, sb.data_block_size, self.bytes_used, self.hash_offset
            )));
        }
        if !self
            .hash_offset
            .is_multiple_of(u64::from(sb.hash_block_size))
        {
            return Err(FormatError::Invalid(format!(
                "hash area at {} is not aligned to the hash block size {}",
                self.hash_offset, sb.hash_block_size
            )));
        }
        if file_size < self.hash_offset + u64::from(sb.hash_block_size) {
            return Err(FormatError::Invalid(format!(
                "the image ({file_size} bytes) ends inside the hash area at {}",
                self.hash_offset
            )));
        }
        Ok(())
    }

    /// Sectors (512 bytes) of the mapped device.
    pub fn data_sectors(&self) -> u64 {
        self.superblock.data_blocks * u64::from(self.superblock.data_block_size) / 512
    }

    /// The `verity` target parameters with data and hashes on `dev`:
    /// `1 <dev> <dev> <data bs> <hash bs> <blocks> <hash start> sha256 <root> <salt> [opts]`,
    /// the hash tree starting one hash block after the superblock.
    pub fn params(&self, dev: &str, root_hash: &str, on_corruption: OnCorruption) -> String {
        let sb = &self.superblock;
        let salt = if sb.salt.is_empty() {
            "-".to_string()
        } else {
            sb.salt.iter().map(|b| format!("{b:02x}")).collect()
        };
        let mut p = format!(
            "{} {dev} {dev} {} {} {} {} {} {root_hash} {salt}",
            sb.hash_type,
            sb.data_block_size,
            sb.hash_block_size,
            sb.data_blocks,
            self.hash_offset / u64::from(sb.hash_block_size) + 1,
            sb.algorithm,
        );
        match on_corruption {
            OnCorruption::Error => {}
            OnCorruption::Restart => p.push_str(" 1 restart_on_corruption"),
            OnCorruption::Panic => p.push_str(" 1 panic_on_corruption"),
        }
        p
    }

    /// The table's one `verity` target.
    pub fn target(
        &self,
        dev: &str,
        root_hash: &str,
        on_corruption: OnCorruption,
    ) -> super::dm::Target {
        super::dm::Target {
            start: 0,
            length: self.data_sectors(),
            kind: "verity".to_string(),
            params: self.params(dev, root_hash, on_corruption),
        }
    }
}

/// Reads the layout of the image at `path`.
pub fn read_layout(path: &Path) -> anyhow::Result<Layout> {
    use anyhow::Context;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut head = [0u8; 96];
    f.read_exact(&mut head)
        .with_context(|| format!("reading the squashfs superblock of {}", path.display()))?;
    let bytes_used = squashfs_bytes_used(&head).with_context(|| path.display().to_string())?;
    let hash_offset = hash_offset(bytes_used);
    let mut sb = [0u8; 512];
    f.seek(SeekFrom::Start(hash_offset))
        .and_then(|_| f.read_exact(&mut sb))
        .with_context(|| {
            format!(
                "reading the dm-verity superblock of {} at byte {hash_offset}",
                path.display()
            )
        })?;
    let layout = Layout {
        bytes_used,
        hash_offset,
        superblock: parse_superblock(&sb, hash_offset)
            .with_context(|| path.display().to_string())?,
    };
    layout
        .check(size)
        .with_context(|| path.display().to_string())?;
    Ok(layout)
}

/// Reads `device` from start to end (every block passes dm-verity once); returns the
/// bytes read.
pub fn read_all(device: &Path) -> io::Result<u64> {
    let mut f = std::fs::File::open(device)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{} at byte {total}: {e}", device.display()),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "6f1ed002ab5595859014ebf0951522d9a3c6f1ed002ab5595859014ebf095152";

    fn squashfs_head(bytes_used: u64) -> Vec<u8> {
        let mut h = vec![0u8; 96];
        h[0..4].copy_from_slice(b"hsqs");
        h[40..48].copy_from_slice(&bytes_used.to_le_bytes());
        h
    }

    /// A superblock laid out like `basalt_image::verity::superblock`.
    fn verity_sb(salt: &[u8], data_blocks: u64) -> Vec<u8> {
        let mut sb = vec![0u8; 4096];
        sb[0..8].copy_from_slice(b"verity\0\0");
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        sb[12..16].copy_from_slice(&1u32.to_le_bytes());
        sb[16..32].copy_from_slice(&[7; 16]);
        sb[32..38].copy_from_slice(b"sha256");
        sb[64..68].copy_from_slice(&4096u32.to_le_bytes());
        sb[68..72].copy_from_slice(&4096u32.to_le_bytes());
        sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
        sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
        sb[88..88 + salt.len()].copy_from_slice(salt);
        sb
    }

    #[test]
    fn squashfs_superblock() {
        assert_eq!(squashfs_bytes_used(&squashfs_head(5000)), Ok(5000));
        assert_eq!(
            squashfs_bytes_used(&[0u8; 96]),
            Err(FormatError::NotSquashfs(0))
        );
        assert_eq!(
            squashfs_bytes_used(b"hsqs"),
            Err(FormatError::Truncated("squashfs"))
        );
        assert_eq!(hash_offset(4096), 4096);
        assert_eq!(hash_offset(4097), 8192);
        assert_eq!(hash_offset(1), 4096);
    }

    #[test]
    fn table_matches_the_image_builder() {
        // basalt_image::verity::VerityInfo::dm_target_params for 2 data blocks, hash area at
        // 8192, salt [0xab; 32]: "1 DEV DEV 4096 4096 2 3 sha256 <root> abab…"
        let layout = Layout {
            bytes_used: 5000,
            hash_offset: 8192,
            superblock: parse_superblock(&verity_sb(&[0xab; 32], 2), 8192).unwrap(),
        };
        layout.check(8192 + 8192).unwrap();
        assert_eq!(layout.data_sectors(), 16);
        let salt = "ab".repeat(32);
        assert_eq!(
            layout.params("7:0", ROOT, OnCorruption::Error),
            format!("1 7:0 7:0 4096 4096 2 3 sha256 {ROOT} {salt}")
        );
        assert_eq!(
            layout.target("254:0", ROOT, OnCorruption::Panic).line(),
            format!(
                "0 16 verity 1 254:0 254:0 4096 4096 2 3 sha256 {ROOT} {salt} 1 panic_on_corruption"
            )
        );
        assert!(
            layout
                .params("d", ROOT, OnCorruption::Restart)
                .ends_with(" 1 restart_on_corruption")
        );
        let no_salt = Layout {
            superblock: parse_superblock(&verity_sb(&[], 2), 8192).unwrap(),
            ..layout
        };
        assert!(
            no_salt
                .params("d", ROOT, OnCorruption::Error)
                .ends_with(&format!("{ROOT} -"))
        );
    }

    #[test]
    fn refuses_inconsistent_superblocks() {
        assert_eq!(
            parse_superblock(&[0u8; 4096], 4096),
            Err(FormatError::NoVeritySuperblock(4096))
        );
        assert_eq!(
            parse_superblock(&[0u8; 100], 0),
            Err(FormatError::Truncated("dm-verity"))
        );
        let mut bad_alg = verity_sb(&[], 2);
        bad_alg[32..38].copy_from_slice(b"sha1 x");
        assert!(parse_superblock(&bad_alg, 0).is_err());
        let mut bad_bs = verity_sb(&[], 2);
        bad_bs[64..68].copy_from_slice(&4095u32.to_le_bytes());
        assert!(parse_superblock(&bad_bs, 0).is_err());
        let mut long_salt = verity_sb(&[], 2);
        long_salt[80..82].copy_from_slice(&300u16.to_le_bytes());
        assert!(parse_superblock(&long_salt, 0).is_err());
        let mut v2 = verity_sb(&[], 2);
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(parse_superblock(&v2, 0).is_err());
        assert!(parse_superblock(&verity_sb(&[], 0), 0).is_err());

        // blocks that do not cover the squashfs, or run into the hash area
        let sb = parse_superblock(&verity_sb(&[], 1), 8192).unwrap();
        let short = Layout {
            bytes_used: 5000,
            hash_offset: 8192,
            superblock: sb,
        };
        assert!(short.check(1 << 20).is_err());
        let sb = parse_superblock(&verity_sb(&[], 3), 8192).unwrap();
        let long = Layout {
            bytes_used: 5000,
            hash_offset: 8192,
            superblock: sb.clone(),
        };
        assert!(long.check(1 << 20).is_err());
        let ok = Layout {
            bytes_used: 5000,
            hash_offset: 8192,
            superblock: parse_superblock(&verity_sb(&[], 2), 8192).unwrap(),
        };
        assert!(ok.check(8192).is_err(), "truncated before the hash area");
    }

    #[test]
    fn layout_from_a_file() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("rootfs.img");
        let mut img = squashfs_head(5000);
        img.resize(8192, 0);
        img.extend(verity_sb(&[1, 2, 3], 2));
        img.extend(vec![0u8; 4096]);
        std::fs::write(&path, &img).unwrap();
        let layout = read_layout(&path).unwrap();
        assert_eq!(layout.hash_offset, 8192);
        assert_eq!(layout.superblock.salt, [1, 2, 3]);
        assert_eq!(read_all(&path).unwrap(), img.len() as u64);

        std::fs::write(&path, &img[..8192]).unwrap();
        let err = format!("{:#}", read_layout(&path).unwrap_err());
        assert!(err.contains("dm-verity superblock"), "{err}");
    }
}
