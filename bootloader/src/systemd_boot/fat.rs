//! A FAT file system inside a byte range of an image file or block device, used without
//! mounting (the `fatfs` crate), e.g. the ESP of a disk image being built or flashed.
//!
//! Every [`EspFs`] call opens the file, mounts the volume, performs the operation, unmounts
//! (which writes the FSInfo sector and clears the dirty flag) and `fsync`s the file, so no
//! state is cached between calls. Nothing outside `offset..offset+len` is ever touched.
//!
//! Limits: FAT has no journal. An atomic write is temp file → delete target → rename temp,
//! so a power cut between the last two steps leaves the target missing (the hidden temp file
//! holds the new content); a rename rewrites directory entries in place. Timestamps are
//! always 1980-01-01 00:00, which keeps images reproducible. `fatfs` 0.3.6 writes new
//! directories in a layout `fsck.vfat` rejects; a small raw fix-up (`fat_fix.rs`) repairs each one right
//! after it is created. Do not use this on a partition that is mounted at the same time.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};

use super::esp::{DirEntry, EspError, EspFs, components, temp_name};
use super::fat_fix::fix_dot_entries;

/// Timestamps for everything written: 1980-01-01 00:00, the first valid DOS date (fatfs
/// without a clock would write the invalid month 0, day 0). Fixed times keep images
/// reproducible.
#[derive(Debug)]
struct DosEpoch;

static DOS_EPOCH: DosEpoch = DosEpoch;

impl fatfs::TimeProvider for DosEpoch {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

/// `Read`/`Write`/`Seek` on the byte range `start..start+len` of a file.
#[derive(Debug)]
pub struct FileSlice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl FileSlice {
    /// The range `start..start+len` of `file`; position 0 is `start`.
    pub fn new(file: File, start: u64, len: u64) -> io::Result<Self> {
        start.checked_add(len).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "slice end overflows u64")
        })?;
        Ok(FileSlice {
            file,
            start,
            len,
            pos: 0,
        })
    }

    /// Gives the file back.
    pub fn into_inner(self) -> File {
        self.file
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }
}

impl Read for FileSlice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.remaining()).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        // Positioned I/O: one system call, no seek (fatfs reads and writes sector by sector).
        let read = self.file.read_at(&mut buf[..want], self.start + self.pos)?;
        self.pos += read as u64;
        Ok(read)
    }
}

impl Write for FileSlice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let room = usize::try_from(self.remaining()).unwrap_or(usize::MAX);
        if room == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        let want = buf.len().min(room);
        let written = self.file.write_at(&buf[..want], self.start + self.pos)?;
        self.pos += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Seek for FileSlice {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the slice",
            )
        })?;
        self.pos = target;
        Ok(target)
    }
}

/// The FAT variant to create with [`format_fat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// FAT16 (up to 65524 clusters).
    Fat16,
    /// FAT32 (at least 65525 clusters: 32 MiB and more with 512-byte clusters).
    Fat32,
}

/// Creates a FAT file system on `image[offset..offset+len]`; `fat_type` `None` lets
/// `fatfs` choose by size. `label` is the volume label (at most 11 ASCII characters).
pub fn format_fat(
    image: &Path,
    offset: u64,
    len: u64,
    fat_type: Option<FatType>,
    label: &str,
) -> Result<(), EspError> {
    let esp = FatEsp::unchecked(image, offset, len);
    if label.len() > 11 || !label.is_ascii() {
        return Err(EspError::InvalidPath {
            path: label.to_string(),
            esp: esp.describe(),
            reason: "a volume label has at most 11 ASCII characters",
        });
    }
    let mut label_bytes = [b' '; 11];
    label_bytes[..label.len()].copy_from_slice(label.to_ascii_uppercase().as_bytes());
    let mut options = FormatVolumeOptions::new().volume_label(label_bytes);
    match fat_type {
        Some(FatType::Fat16) => options = options.fat_type(fatfs::FatType::Fat16),
        Some(FatType::Fat32) => {
            options = options
                .fat_type(fatfs::FatType::Fat32)
                .bytes_per_cluster(512)
        }
        None => {}
    }
    let slice = esp.slice(true).map_err(|e| esp.io("open", "", e))?;
    let file = {
        let mut slice = slice;
        fatfs::format_volume(&mut slice, options).map_err(|e| esp.io("format", "", e))?;
        slice.into_inner()
    };
    file.sync_all().map_err(|e| esp.io("fsync", "", e))
}

/// A FAT volume in `image[offset..offset+len]`, accessed without mounting.
#[derive(Debug, Clone)]
pub struct FatEsp {
    image: PathBuf,
    offset: u64,
    len: u64,
    label: String,
}

impl FatEsp {
    /// The volume at `offset` (bytes) of length `len` in `image` (file or block device);
    /// checks that a FAT file system is there.
    pub fn open(image: impl Into<PathBuf>, offset: u64, len: u64) -> Result<Self, EspError> {
        let esp = Self::unchecked(image, offset, len);
        esp.mount(false)?;
        Ok(esp)
    }

    /// The volume filling all of `image` (an image file or a partition's block device).
    pub fn open_whole(image: impl Into<PathBuf>) -> Result<Self, EspError> {
        let image = image.into();
        let probe = Self::unchecked(&image, 0, 0);
        let len = File::open(&image)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(|e| probe.io("open", "", e))?;
        Self::open(image, 0, len)
    }

    /// Names the volume `<label> in <image> at offset N` in messages (default label "ESP").
    pub fn with_label(mut self, label: &str) -> Self {
        self.label = label.to_string();
        self
    }

    fn unchecked(image: impl Into<PathBuf>, offset: u64, len: u64) -> Self {
        FatEsp {
            image: image.into(),
            offset,
            len,
            label: "ESP".to_string(),
        }
    }

    fn io(&self, op: &'static str, path: &str, source: io::Error) -> EspError {
        EspError::Io {
            op,
            path: path.to_string(),
            esp: self.describe(),
            source,
        }
    }

    fn slice(&self, writable: bool) -> io::Result<FileSlice> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&self.image)?;
        let size = (&file).seek(SeekFrom::End(0))?;
        if self.offset.saturating_add(self.len) > size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the volume ends at byte {} but the image has {size} bytes",
                    self.offset.saturating_add(self.len)
                ),
            ));
        }
        (&file).seek(SeekFrom::Start(0))?;
        FileSlice::new(file, self.offset, self.len)
    }

    fn mount(&self, writable: bool) -> Result<FileSystem<FileSlice>, EspError> {
        let slice = self
            .slice(writable)
            .map_err(|e| self.io("open", "the volume", e))?;
        let options = FsOptions::new().time_provider(&DOS_EPOCH);
        FileSystem::new(slice, options).map_err(|e| self.io("mount", "the volume", e))
    }

    /// Runs `op` on the mounted volume, then unmounts and `fsync`s.
    fn modify<R>(
        &self,
        op: &'static str,
        path: &str,
        f: impl FnOnce(&FileSystem<FileSlice>) -> io::Result<R>,
    ) -> Result<R, EspError> {
        let fs = self.mount(true)?;
        let result = f(&fs).map_err(|e| self.io(op, path, e))?;
        fs.unmount()
            .map_err(|e| self.io("unmount after", path, e))?;
        // The FileSystem owned the only handle; reopen to fsync everything written through it.
        OpenOptions::new()
            .write(true)
            .open(&self.image)
            .and_then(|f| f.sync_all())
            .map_err(|e| self.io("fsync after", path, e))?;
        Ok(result)
    }

    fn path(&self, path: &str) -> Result<String, EspError> {
        Ok(components(path, &|| self.describe())?.join("/"))
    }
}

fn parent_and_name(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

type FatDir<'a> = fatfs::Dir<'a, FileSlice>;
type FatEntry<'a> = fatfs::DirEntry<'a, FileSlice>;

/// The entry `name` (case-insensitive, long or short name) in `dir`.
fn lookup<'a>(dir: &FatDir<'a>, name: &str) -> io::Result<Option<FatEntry<'a>>> {
    for entry in dir.iter() {
        let entry = entry?;
        if entry.file_name().eq_ignore_ascii_case(name)
            || entry.short_file_name().eq_ignore_ascii_case(name)
        {
            return Ok(Some(entry));
        }
    }
    Ok(None)
}

/// Creates the missing directories of `dir`; returns the short-name paths of those created,
/// for [`fix_dot_entries`].
fn create_dirs(fs: &FileSystem<FileSlice>, dir: &str) -> io::Result<Vec<Vec<Vec<u8>>>> {
    let mut parent = fs.root_dir();
    let mut short_path = Vec::new();
    let mut created = Vec::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        let is_new = lookup(&parent, part)?.is_none();
        if is_new {
            parent.create_dir(part)?;
        }
        let entry = lookup(&parent, part)?
            .filter(FatEntry::is_dir)
            .ok_or_else(|| io::Error::other(format!("{part} is not a directory")))?;
        short_path.push(entry.short_file_name_as_bytes().to_vec());
        if is_new {
            created.push(short_path.clone());
        }
        parent = entry.to_dir();
    }
    Ok(created)
}

/// Whether `path` exists, and whether it is a directory.
fn find(fs: &FileSystem<FileSlice>, path: &str) -> io::Result<Option<bool>> {
    let (parent, name) = parent_and_name(path);
    let dir = if parent.is_empty() {
        fs.root_dir()
    } else {
        match fs.root_dir().open_dir(parent) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
    };
    Ok(lookup(&dir, name)?.map(|e| e.is_dir()))
}

impl EspFs for FatEsp {
    fn describe(&self) -> String {
        format!(
            "{} in {} at offset {}",
            self.label,
            self.image.display(),
            self.offset
        )
    }

    fn list_dir(&self, dir: &str) -> Result<Vec<DirEntry>, EspError> {
        let dir_path = self.path(dir)?;
        let fs = self.mount(false)?;
        let list = || -> io::Result<Vec<DirEntry>> {
            let root = fs.root_dir();
            let dir = if dir_path.is_empty() {
                root
            } else {
                root.open_dir(&dir_path)?
            };
            let mut entries = Vec::new();
            for entry in dir.iter() {
                let entry = entry?;
                let name = entry.file_name();
                if name != "." && name != ".." {
                    entries.push(DirEntry {
                        name,
                        is_dir: entry.is_dir(),
                    });
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(entries)
        };
        list().map_err(|e| self.io("list", dir, e))
    }

    fn read_file(&self, path: &str) -> Result<Vec<u8>, EspError> {
        let file_path = self.path(path)?;
        let fs = self.mount(false)?;
        let read = || -> io::Result<Vec<u8>> {
            let mut file = fs.root_dir().open_file(&file_path)?;
            let mut data = Vec::new();
            file.read_to_end(&mut data)?;
            Ok(data)
        };
        read().map_err(|e| self.io("read", path, e))
    }

    fn exists(&self, path: &str) -> Result<bool, EspError> {
        let file_path = self.path(path)?;
        if file_path.is_empty() {
            return Ok(true);
        }
        let fs = self.mount(false)?;
        Ok(find(&fs, &file_path)
            .map_err(|e| self.io("stat", path, e))?
            .is_some())
    }

    fn write_file_atomic(&mut self, path: &str, data: &[u8]) -> Result<(), EspError> {
        let file_path = self.path(path)?;
        let (parent, name) = parent_and_name(&file_path);
        if name.is_empty() {
            return Err(EspError::InvalidPath {
                path: path.to_string(),
                esp: self.describe(),
                reason: "not a file path",
            });
        }
        let temp = match parent {
            "" => temp_name(name),
            _ => format!("{parent}/{}", temp_name(name)),
        };
        let created = self.modify("write", path, |fs| {
            let created = create_dirs(fs, parent)?;
            let root = fs.root_dir();
            {
                let mut file = root.create_file(&temp)?;
                file.truncate()?;
                file.write_all(data)?;
                file.flush()?;
            }
            if find(fs, &file_path)?.is_some() {
                root.remove(&file_path)?;
            }
            root.rename(&temp, &root, &file_path)?;
            Ok(created)
        })?;
        if created.is_empty() {
            return Ok(());
        }
        let fixed = self.slice(true).and_then(|mut slice| {
            for dir in &created {
                fix_dot_entries(&mut slice, dir)?;
            }
            slice.into_inner().sync_all()
        });
        fixed.map_err(|e| self.io("repair the new directories of", path, e))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), EspError> {
        let (src, dst) = (self.path(from)?, self.path(to)?);
        let what = format!("{from} -> {to}");
        self.modify("rename", &what, |fs| {
            let root = fs.root_dir();
            if !src.eq_ignore_ascii_case(&dst) && find(fs, &dst)?.is_some() {
                root.remove(&dst)?;
            }
            root.rename(&src, &root, &dst)
        })
    }

    fn delete(&mut self, path: &str) -> Result<(), EspError> {
        let file_path = self.path(path)?;
        self.modify("delete", path, |fs| fs.root_dir().remove(&file_path))
    }
}
