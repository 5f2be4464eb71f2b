//! dm-verity hash trees, computed in Rust, in the on-disk format `veritysetup format` writes
//! by default: format version 1, sha256, 4096-byte data and hash blocks, a superblock.
//!
//! **Layout decision.** The hash area is appended to the data in the same file (the slot's
//! `rootfs.squashfs`), starting at the first 4096-aligned offset after the data (the data
//! is zero-padded to it):
//!
//! ```text
//! 0                       data (squashfs), data_blocks × 4096 bytes
//! hash_offset             superblock (512 bytes used, zero-padded to 4096)
//! hash_offset + 4096      hash tree, top level first, level 0 (hashes of data) last
//! ```
//!
//! So `veritysetup verify --hash-offset=<hash_offset> --data-blocks=<n> FILE FILE <root>`
//! checks it, and the kernel table is `verity 1 DEV DEV 4096 4096 <n> <hash_offset/4096 + 1>
//! sha256 <root> <salt>` ([`VerityInfo::dm_table`]).
//!
//! Tree: level 0 holds sha256(salt ‖ block) of every data block, 128 digests per hash block,
//! the last block zero-padded; each higher level hashes the blocks of the one below, until
//! one block remains; the root hash is sha256(salt ‖ that block). With a single data block
//! there are no levels and the root hash is that block's digest. This mirrors cryptsetup's
//! `VERITY_create` (checked against the real `veritysetup format` in the tests).
//!
//! **Salt and UUID.** veritysetup picks both at random; for reproducible images they are
//! either given or derived from the data: salt = sha256("basalt dm-verity salt v1\0" ‖
//! data), UUID = the first 16 bytes of sha256("basalt dm-verity uuid v1\0" ‖ salt) with
//! RFC 4122 version-4 and variant bits. The salt is public (it is in the superblock and the
//! kernel table); deriving it from the content only makes identical inputs give identical
//! images.

use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Data and hash block size (bytes).
pub const BLOCK_SIZE: u64 = 4096;
/// sha256 digest size.
const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: u64 = BLOCK_SIZE / DIGEST as u64;
/// Longest salt the superblock holds.
pub const MAX_SALT: usize = 256;

/// A failure computing or writing a hash tree.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// Reading or writing the image failed.
    #[error("dm-verity {}: {source}", path.display())]
    Io {
        /// The image file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The salt is too long or the data is empty.
    #[error("dm-verity {}: {reason}", path.display())]
    Invalid {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Which salt to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Salt {
    /// Derived from the data (reproducible, see the module documentation).
    FromContent,
    /// These bytes (at most [`MAX_SALT`]).
    Given(Vec<u8>),
}

/// The result of appending a hash tree: everything needed to verify or map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityInfo {
    /// Root hash.
    pub root_hash: [u8; 32],
    /// Salt.
    pub salt: Vec<u8>,
    /// Superblock UUID.
    pub uuid: [u8; 16],
    /// Number of 4096-byte data blocks.
    pub data_blocks: u64,
    /// Byte offset of the superblock (= padded data size).
    pub hash_offset: u64,
    /// Bytes of the hash area (superblock and tree).
    pub hash_size: u64,
}

impl VerityInfo {
    /// Root hash, lower-case hex.
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// Salt, lower-case hex (`-` when empty, as the kernel table wants).
    pub fn salt_hex(&self) -> String {
        if self.salt.is_empty() {
            "-".to_string()
        } else {
            hex::encode(&self.salt)
        }
    }

    /// UUID in the usual 8-4-4-4-12 form.
    pub fn uuid_string(&self) -> String {
        let h = hex::encode(self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Total file size: data, padding and hash area.
    pub fn total_size(&self) -> u64 {
        self.hash_offset + self.hash_size
    }

    /// Length of the mapped device in 512-byte sectors.
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * (BLOCK_SIZE / 512)
    }

    /// The `verity` target parameters for `device` holding data and hashes:
    /// `1 DEV DEV 4096 4096 <data blocks> <hash start block> sha256 <root> <salt>`.
    pub fn dm_target_params(&self, device: &str) -> String {
        format!(
            "1 {device} {device} {BLOCK_SIZE} {BLOCK_SIZE} {} {} sha256 {} {}",
            self.data_blocks,
            self.hash_offset / BLOCK_SIZE + 1,
            self.root_hash_hex(),
            self.salt_hex()
        )
    }

    /// The device-mapper table line (`dmsetup create --table`) for `device`.
    pub fn dm_table(&self, device: &str) -> String {
        format!(
            "0 {} verity {}",
            self.data_sectors(),
            self.dm_target_params(device)
        )
    }
}

/// Number of hash blocks per level, level 0 first (cryptsetup's `hash_levels`).
pub fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        sizes.push(n);
    }
    sizes
}

fn hash_block(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Derives the salt from the data (see the module documentation).
pub fn content_salt(data: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut h = Sha256::new();
    h.update(b"basalt dm-verity salt v1\0");
    io::copy(data, &mut HashWriter(&mut h))?;
    Ok(h.finalize().to_vec())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Derives the superblock UUID from the salt.
pub fn salt_uuid(salt: &[u8]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"basalt dm-verity uuid v1\0");
    h.update(salt);
    let d = h.finalize();
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// The 4096-byte superblock block (`struct verity_sb`, little-endian).
pub fn superblock(uuid: &[u8; 16], salt: &[u8], data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK_SIZE as usize];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    sb
}

/// Hash tree of `data_blocks` blocks read from `data` (short last block zero-padded):
/// returns the levels (level 0 first, each a whole number of blocks) and the root hash.
pub fn hash_tree(
    data: &mut dyn Read,
    data_blocks: u64,
    salt: &[u8],
) -> io::Result<(Vec<Vec<u8>>, [u8; 32])> {
    let mut block = vec![0u8; BLOCK_SIZE as usize];
    let mut level0 = Vec::with_capacity(usize::try_from(data_blocks).unwrap_or(0) * DIGEST);
    let mut first = [0u8; 32];
    for i in 0..data_blocks {
        block.fill(0);
        read_full(data, &mut block)?;
        let d = hash_block(salt, &block);
        if i == 0 {
            first = d;
        }
        level0.extend_from_slice(&d);
    }
    if data_blocks <= 1 {
        return Ok((Vec::new(), first));
    }
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut current = level0;
    loop {
        let blocks = (current.len() as u64).div_ceil(BLOCK_SIZE);
        current.resize((blocks * BLOCK_SIZE) as usize, 0);
        if blocks == 1 {
            let root = hash_block(salt, &current);
            levels.push(current);
            return Ok((levels, root));
        }
        let next: Vec<u8> = current
            .chunks(BLOCK_SIZE as usize)
            .flat_map(|b| hash_block(salt, b))
            .collect();
        levels.push(current);
        current = next;
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match r.read(&mut buf[off..]) {
            Ok(0) => break,
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Pads `path` to a multiple of 4096 bytes and appends the superblock and hash tree; see the
/// module documentation for the layout.
pub fn append_hash_tree(path: &Path, salt: Salt) -> Result<VerityInfo, VerityError> {
    let io_err = |source| VerityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size == 0 {
        return Err(VerityError::Invalid {
            path: path.to_path_buf(),
            reason: "the data is empty".to_string(),
        });
    }
    let data_blocks = size.div_ceil(BLOCK_SIZE);
    let salt = match salt {
        Salt::Given(s) => s,
        Salt::FromContent => content_salt(&mut io::BufReader::new(&mut file)).map_err(io_err)?,
    };
    if salt.len() > MAX_SALT {
        return Err(VerityError::Invalid {
            path: path.to_path_buf(),
            reason: format!("salt of {} bytes, at most {MAX_SALT}", salt.len()),
        });
    }
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let (levels, root_hash) = {
        let mut r = io::BufReader::with_capacity(1 << 20, (&mut file).take(size));
        hash_tree(&mut r, data_blocks, &salt).map_err(io_err)?
    };
    let uuid = salt_uuid(&salt);
    let hash_offset = data_blocks * BLOCK_SIZE;
    file.set_len(hash_offset).map_err(io_err)?;
    file.seek(SeekFrom::Start(hash_offset)).map_err(io_err)?;
    let mut w = io::BufWriter::new(&mut file);
    w.write_all(&superblock(&uuid, &salt, data_blocks))
        .map_err(io_err)?;
    let mut hash_size = BLOCK_SIZE;
    for level in levels.iter().rev() {
        w.write_all(level).map_err(io_err)?;
        hash_size += level.len() as u64;
    }
    w.flush().map_err(io_err)?;
    drop(w);
    file.sync_all().map_err(io_err)?;
    Ok(VerityInfo {
        root_hash,
        salt,
        uuid,
        data_blocks,
        hash_offset,
        hash_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_sizes_match_cryptsetup() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), [1]);
        assert_eq!(level_sizes(128), [1]);
        assert_eq!(level_sizes(129), [2, 1]);
        assert_eq!(level_sizes(128 * 128 + 1), [129, 2, 1]);
    }

    #[test]
    fn tree_shape_and_root() {
        let data = vec![0xabu8; 129 * 4096];
        let (levels, root) = hash_tree(&mut &data[..], 129, b"salt").unwrap();
        assert_eq!(
            levels.iter().map(Vec::len).collect::<Vec<_>>(),
            [2 * 4096, 4096]
        );
        let leaf = hash_block(b"salt", &data[..4096]);
        assert_eq!(&levels[0][..32], &leaf);
        assert_eq!(root, hash_block(b"salt", &levels[1]));
        // one block: the root is the block's digest
        let (levels, root) = hash_tree(&mut &data[..100], 1, b"").unwrap();
        assert!(levels.is_empty());
        let mut padded = data[..100].to_vec();
        padded.resize(4096, 0);
        assert_eq!(root, hash_block(b"", &padded));
    }

    #[test]
    fn superblock_fields() {
        let sb = superblock(&[1; 16], &[9; 32], 77);
        assert_eq!(&sb[..8], b"verity\0\0");
        assert_eq!(u64::from_le_bytes(sb[72..80].try_into().unwrap()), 77);
        assert_eq!(u16::from_le_bytes(sb[80..82].try_into().unwrap()), 32);
        assert_eq!(&sb[88..120], &[9; 32]);
        assert!(sb[120..].iter().all(|b| *b == 0));
    }

    #[test]
    fn uuid_is_v4_shaped() {
        let info = VerityInfo {
            root_hash: [0; 32],
            salt: vec![],
            uuid: salt_uuid(b"x"),
            data_blocks: 2,
            hash_offset: 8192,
            hash_size: 8192,
        };
        let u = info.uuid_string();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(info.salt_hex(), "-");
        assert!(
            info.dm_table("/dev/vda2")
                .starts_with("0 16 verity 1 /dev/vda2 /dev/vda2 4096 4096 2 3 sha256 ")
        );
    }
}
