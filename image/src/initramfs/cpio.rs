//! A writer for the cpio "newc" format (`070701`), the format the kernel unpacks into its
//! initial rootfs.
//!
//! Each entry is a 110-byte ASCII header (magic and 13 eight-digit hex fields: inode, mode,
//! uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize,
//! check), the NUL-terminated name padded to a multiple of 4, then the data padded to a
//! multiple of 4. A symlink's data is its target. The archive ends with the `TRAILER!!!`
//! entry and is padded to 512 bytes, as GNU cpio does.
//!
//! The writer itself is deterministic: it writes what it is given, in the order given, with
//! inode numbers 1, 2, 3, … ; owners, times and devices come from the caller (the
//! [`super::Initramfs`] builder uses uid/gid 0, one mtime, sorted names).
//! Limits: names and file sizes must fit the format's 32-bit fields (files < 4 GiB).

use std::io::{self, Read, Write};

/// File type bits of `st_mode`.
pub mod mode {
    /// Regular file.
    pub const S_IFREG: u32 = 0o100_000;
    /// Directory.
    pub const S_IFDIR: u32 = 0o040_000;
    /// Symbolic link.
    pub const S_IFLNK: u32 = 0o120_000;
    /// Character device.
    pub const S_IFCHR: u32 = 0o020_000;
}

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// Header fields of one entry (inode and name size are filled by the writer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// Full mode: type bits and permissions.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds since the epoch).
    pub mtime: u32,
    /// Device major number (for character and block devices).
    pub rdev_major: u32,
    /// Device minor number.
    pub rdev_minor: u32,
}

/// Streams a newc archive into `W`.
#[derive(Debug)]
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// A writer whose first entry gets inode 1.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Writes one entry whose content (of `size` bytes) is read from `data`.
    pub fn entry(
        &mut self,
        name: &str,
        h: &Header,
        size: u64,
        data: &mut dyn Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {size} bytes is too large for cpio"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(name, ino, h, size32)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.written += copied;
        self.pad(4)
    }

    /// Writes one entry with in-memory content.
    pub fn entry_bytes(&mut self, name: &str, h: &Header, data: &[u8]) -> io::Result<()> {
        self.entry(name, h, data.len() as u64, &mut &data[..])
    }

    fn header(&mut self, name: &str, ino: u32, h: &Header, size: u32) -> io::Result<()> {
        if name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NUL in cpio name",
            ));
        }
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name too long"))?;
        let fields = [
            ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            size,
            0,
            0,
            h.rdev_major,
            h.rdev_minor,
            namesize,
            0,
        ];
        let mut text = String::with_capacity(110 + name.len() + 4);
        text.push_str(MAGIC);
        for f in fields {
            text.push_str(&format!("{f:08X}"));
        }
        text.push_str(name);
        text.push('\0');
        self.out.write_all(text.as_bytes())?;
        self.written += text.len() as u64;
        self.pad(4)
    }

    fn pad(&mut self, to: u64) -> io::Result<()> {
        let n = (to - self.written % to) % to;
        if n > 0 {
            self.out.write_all(&[0u8; 512][..n as usize])?;
            self.written += n;
        }
        Ok(())
    }

    /// Writes the trailer, pads to 512 bytes and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..Header::default()
        };
        self.header(TRAILER, 0, &h, 0)?;
        self.pad(512)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_format() {
        let mut w = CpioWriter::new(Vec::new());
        let h = Header {
            mode: mode::S_IFREG | 0o644,
            nlink: 1,
            mtime: 0x1234,
            ..Header::default()
        };
        w.entry_bytes("init", &h, b"hello").unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 512, 0);
        let text = String::from_utf8_lossy(&out[..110]);
        assert_eq!(
            text,
            "070701\
             00000001000081A4000000000000000000000001000012340000000500000000\
             0000000000000000000000000000000500000000"
        );
        // name "init\0" at 110..115, padded to 116, data at 116..121, padded to 124
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(&out[124..130], b"070701");
        let trailer = String::from_utf8_lossy(&out[124 + 110..124 + 120]);
        assert_eq!(trailer, "TRAILER!!!");
    }

    #[test]
    fn short_reader_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w
            .entry("x", &Header::default(), 10, &mut &b"abc"[..])
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
