//! Reading a sparse file (a disk image with unwritten gaps) as its full byte stream without
//! reading its holes: [`SparseReader`] asks the file system for the data extents once
//! ([`crate::bmap::mapped_extents`]) and returns zeros for the gaps itself. Reading a hole
//! through the kernel costs as much as reading data (pages are allocated, zeroed and
//! copied); a built disk image is mostly holes.

use std::fs::File;
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A [`Read`] over a whole file that reads only its data extents.
#[derive(Debug)]
pub struct SparseReader {
    file: File,
    extents: Vec<Range<u64>>,
    size: u64,
    pos: u64,
}

impl SparseReader {
    /// Opens `path` and maps its data extents.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let extents = crate::bmap::mapped_extents(&file, path).map_err(io::Error::other)?;
        Ok(Self {
            file,
            extents,
            size,
            pos: 0,
        })
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let left = usize::try_from(self.size - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        // The first extent that ends after the position (extents are sorted and merged).
        let i = self.extents.partition_point(|e| e.end <= self.pos);
        let n = match self.extents.get(i) {
            Some(e) if e.start <= self.pos => {
                let n = want.min(usize::try_from(e.end - self.pos).unwrap_or(usize::MAX));
                self.file.read_at(&mut buf[..n], self.pos)?
            }
            next => {
                let gap = next.map_or(u64::MAX, |e| e.start - self.pos);
                let n = want.min(usize::try_from(gap).unwrap_or(usize::MAX));
                buf[..n].fill(0);
                n
            }
        };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its size",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn reads_the_same_bytes_as_a_plain_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let mut f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        for (at, fill) in [(4096u64, 1u8), (3 << 20, 2), ((8 << 20) - 100, 3)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[fill; 100]).unwrap();
        }
        drop(f);
        let mut sparse = Vec::new();
        SparseReader::open(&path)
            .unwrap()
            .read_to_end(&mut sparse)
            .unwrap();
        assert_eq!(sparse, std::fs::read(&path).unwrap());
    }
}
