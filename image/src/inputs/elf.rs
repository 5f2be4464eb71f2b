//! The `.modinfo` section of a kernel module, read from its ELF file.
//!
//! Debian's kernel packages ship no `modules.dep` (depmod runs at install time), so the
//! module index is built from each module's own `.modinfo`: NUL-separated `key=value`
//! strings (`name`, `depends`, `softdep`, `alias`, `vermagic`, …) that modpost and
//! `MODULE_*()` macros put there. Only the section headers and that one section are read;
//! 32/64-bit and both byte orders are understood.
//!
//! [`machine`] reads the file header's `e_machine`: the CPU a binary or library is built for,
//! which the image composer checks against the board's architecture.

/// A malformed ELF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    /// Not an ELF file, or a header points outside the file.
    #[error("not a valid ELF file: {0}")]
    Malformed(&'static str),
    /// The file has no `.modinfo` section (not a kernel module).
    #[error("no .modinfo section (not a kernel module)")]
    NoModinfo,
}

struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N], ElfError> {
        let end = at
            .checked_add(N)
            .ok_or(ElfError::Malformed("offset overflow"))?;
        let slice = self
            .data
            .get(at..end)
            .ok_or(ElfError::Malformed("header beyond end of file"))?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u16(&self, at: usize) -> Result<u64, ElfError> {
        let b = self.bytes::<2>(at)?;
        Ok(u64::from(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        }))
    }

    fn u32(&self, at: usize) -> Result<u64, ElfError> {
        let b = self.bytes::<4>(at)?;
        Ok(u64::from(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }))
    }

    fn u64(&self, at: usize) -> Result<u64, ElfError> {
        let b = self.bytes::<8>(at)?;
        Ok(if self.big_endian {
            u64::from_be_bytes(b)
        } else {
            u64::from_le_bytes(b)
        })
    }
}

fn usize_of(v: u64) -> Result<usize, ElfError> {
    usize::try_from(v).map_err(|_| ElfError::Malformed("value too large"))
}

/// `e_machine` of 64-bit Arm.
pub const EM_AARCH64: u16 = 183;
/// `e_machine` of x86-64.
pub const EM_X86_64: u16 = 62;

/// The `e_machine` field of an ELF file (its first 20 bytes are enough), e.g. [`EM_AARCH64`].
pub fn machine(data: &[u8]) -> Result<u16, ElfError> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::Malformed("no ELF magic"));
    }
    let bytes = [data[0x12], data[0x13]];
    match data[5] {
        1 => Ok(u16::from_le_bytes(bytes)),
        2 => Ok(u16::from_be_bytes(bytes)),
        _ => Err(ElfError::Malformed("unknown ELF byte order")),
    }
}

/// Returns the raw bytes of the section called `wanted`.
pub fn section<'a>(data: &'a [u8], wanted: &str) -> Result<Option<&'a [u8]>, ElfError> {
    if data.len() < 0x34 || &data[..4] != b"\x7fELF" {
        return Err(ElfError::Malformed("no ELF magic"));
    }
    let is64 = match data[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("unknown ELF class")),
    };
    let r = Reader {
        data,
        big_endian: match data[5] {
            1 => false,
            2 => true,
            _ => return Err(ElfError::Malformed("unknown ELF byte order")),
        },
    };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (r.u64(0x28)?, r.u16(0x3a)?, r.u16(0x3c)?, r.u16(0x3e)?)
    } else {
        (r.u32(0x20)?, r.u16(0x2e)?, r.u16(0x30)?, r.u16(0x32)?)
    };
    let (shoff, shentsize) = (usize_of(shoff)?, usize_of(shentsize)?);
    let header = |i: u64| -> Result<(u64, u64, u64), ElfError> {
        let base = shoff
            .checked_add(usize_of(i)? * shentsize)
            .ok_or(ElfError::Malformed("section header offset overflow"))?;
        if is64 {
            Ok((r.u32(base)?, r.u64(base + 24)?, r.u64(base + 32)?))
        } else {
            Ok((r.u32(base)?, r.u32(base + 16)?, r.u32(base + 20)?))
        }
    };
    let slice = |off: u64, size: u64| -> Result<&'a [u8], ElfError> {
        let (off, size) = (usize_of(off)?, usize_of(size)?);
        data.get(off..off.saturating_add(size))
            .ok_or(ElfError::Malformed("section beyond end of file"))
    };
    if shstrndx >= shnum {
        return Err(ElfError::Malformed("bad section name table index"));
    }
    let (_, str_off, str_size) = header(shstrndx)?;
    let names = slice(str_off, str_size)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let name = names
            .get(usize_of(name_off)?..)
            .and_then(|n| n.split(|b| *b == 0).next())
            .unwrap_or_default();
        if name == wanted.as_bytes() {
            return Ok(Some(slice(off, size)?));
        }
    }
    Ok(None)
}

/// The `key=value` pairs of a module's `.modinfo`, in section order.
pub fn modinfo(data: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    let sec = section(data, ".modinfo")?.ok_or(ElfError::NoModinfo)?;
    Ok(sec
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let text = String::from_utf8_lossy(s);
            text.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 LE file with sections: null, .shstrtab, .modinfo.
    pub(crate) fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut data = vec![0u8; 64];
        data[..4].copy_from_slice(b"\x7fELF");
        data[4] = 2;
        data[5] = 1;
        let str_off = data.len();
        data.extend_from_slice(shstrtab);
        let mi_off = data.len();
        data.extend_from_slice(modinfo);
        while !data.len().is_multiple_of(8) {
            data.push(0);
        }
        let shoff = data.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = [0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            h[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            data.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, str_off, shstrtab.len());
        sh(11, mi_off, modinfo.len());
        data[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        data[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        data[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        data[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        data
    }

    #[test]
    fn reads_modinfo() {
        let m = fake_module(b"license=GPL\0depends=a,b\0\0name=x\0");
        let info = modinfo(&m).unwrap();
        assert_eq!(
            info,
            [
                ("license".into(), "GPL".into()),
                ("depends".into(), "a,b".into()),
                ("name".into(), "x".into())
            ]
        );
    }

    #[test]
    fn reads_the_machine() {
        let mut m = fake_module(b"name=x\0");
        m[0x12..0x14].copy_from_slice(&EM_AARCH64.to_le_bytes());
        assert_eq!(machine(&m), Ok(EM_AARCH64));
        m[5] = 2;
        m[0x12..0x14].copy_from_slice(&EM_X86_64.to_be_bytes());
        assert_eq!(machine(&m), Ok(EM_X86_64));
        assert!(machine(&m[..19]).is_err());
        assert!(machine(b"#!/bin/sh\nexit 0\n....").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            modinfo(b"hello").unwrap_err(),
            ElfError::Malformed("no ELF magic")
        );
        let mut m = fake_module(b"name=x\0");
        let n = m.len();
        m.truncate(n - 40);
        assert!(modinfo(&m).is_err());
    }
}
