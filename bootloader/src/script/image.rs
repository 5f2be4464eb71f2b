//! The U-Boot legacy image (`uImage`) container for boot scripts: `boot.scr`.
//!
//! Layout written by `mkimage -A arm64 -O linux -T script -C none -a 0 -e 0 -n NAME -d boot.cmd`
//! (u-boot-tools 2023.01, checked byte for byte in `tests/script_mkimage.rs`):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x27051956` |
//! | 4 | 4 | header CRC32, computed over the 64 header bytes with this field zeroed |
//! | 8 | 4 | timestamp (seconds; mkimage takes `SOURCE_DATE_EPOCH` when set) |
//! | 12 | 4 | data size: everything after the header |
//! | 16 | 4 | load address (0) |
//! | 20 | 4 | entry point (0) |
//! | 24 | 4 | data CRC32 over everything after the header |
//! | 28 | 1 | OS (`5` = Linux) |
//! | 29 | 1 | architecture (`22` = arm64) |
//! | 30 | 1 | image type (`6` = script) |
//! | 31 | 1 | compression (`0` = none) |
//! | 32 | 32 | name, NUL-padded, not necessarily NUL-terminated |
//!
//! All integers are big-endian. A script image is a *multi-file* image: the data starts
//! with a table of big-endian `u32` file lengths terminated by a `0`, then the files. For
//! one script that is `[len(script), 0]` followed by the script bytes. mkimage pads files
//! to 4 bytes only *between* files, never after the last one, so a single script is not
//! padded at all.

use super::ScriptError;

/// The legacy image magic number.
pub const IMAGE_MAGIC: u32 = 0x2705_1956;
/// Length of the legacy image header.
pub const HEADER_LEN: usize = 64;
/// Length of the name field in the header.
pub const NAME_LEN: usize = 32;
/// `IH_OS_LINUX`.
const OS_LINUX: u8 = 5;
/// `IH_TYPE_SCRIPT`.
const TYPE_SCRIPT: u8 = 6;
/// `IH_COMP_NONE`.
const COMP_NONE: u8 = 0;

/// The CPU architecture recorded in the image header (`mkimage -A`).
///
/// U-Boot's `source` command does not check it; it is recorded for tools such as
/// `mkimage -l`. Only the architectures Basalt boards use are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 32-bit ARM (`-A arm`, code 2).
    Arm,
    /// 64-bit ARM (`-A arm64`, code 22).
    Arm64,
    /// x86_64 (`-A x86_64`, code 24).
    X86_64,
    /// RISC-V (`-A riscv`, code 26).
    Riscv,
}

impl Arch {
    /// The `IH_ARCH_*` code stored in the header.
    pub fn code(self) -> u8 {
        match self {
            Arch::Arm => 2,
            Arch::Arm64 => 22,
            Arch::X86_64 => 24,
            Arch::Riscv => 26,
        }
    }

    /// The architecture with header code `code`, if it is one of the listed ones.
    pub fn from_code(code: u8) -> Option<Arch> {
        [Arch::Arm, Arch::Arm64, Arch::X86_64, Arch::Riscv]
            .into_iter()
            .find(|arch| arch.code() == code)
    }

    /// The name `mkimage -A` takes.
    pub fn mkimage_name(self) -> &'static str {
        match self {
            Arch::Arm => "arm",
            Arch::Arm64 => "arm64",
            Arch::X86_64 => "x86_64",
            Arch::Riscv => "riscv",
        }
    }
}

/// A parsed `boot.scr`: the header fields that vary and the script text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptImage {
    /// Image name from the header (trailing NULs removed).
    pub name: String,
    /// Architecture from the header.
    pub arch: Arch,
    /// Creation time from the header, seconds since the Unix epoch.
    pub timestamp: u32,
    /// The script (the first and only file of the multi-file payload).
    pub script: Vec<u8>,
}

/// Packs `script` into a legacy script image, byte-identical to
/// `SOURCE_DATE_EPOCH=timestamp mkimage -A <arch> -O linux -T script -C none -a 0 -e 0 -n <name> -d <file>`.
///
/// `name` may have at most 32 bytes (mkimage would silently cut it; this refuses), and the
/// script must not be empty (mkimage refuses that too).
pub fn pack_script(
    script: &[u8],
    name: &str,
    arch: Arch,
    timestamp: u32,
) -> Result<Vec<u8>, ScriptError> {
    if name.len() > NAME_LEN {
        return Err(ScriptError::NameTooLong {
            name: name.to_string(),
        });
    }
    if script.is_empty() {
        // mkimage bails out on an empty input file, too.
        return Err(ScriptError::EmptyScript);
    }
    let script_len = u32::try_from(script.len())
        .ok()
        .filter(|len| len.checked_add(8).is_some())
        .ok_or(ScriptError::ScriptTooLarge { len: script.len() })?;

    let mut data = Vec::with_capacity(8 + script.len());
    data.extend_from_slice(&script_len.to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(script);
    let data_len = script_len + 8;

    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&IMAGE_MAGIC.to_be_bytes());
    // header[4..8]: header CRC, filled in below.
    header[8..12].copy_from_slice(&timestamp.to_be_bytes());
    header[12..16].copy_from_slice(&data_len.to_be_bytes());
    // header[16..24]: load address and entry point, both 0.
    header[24..28].copy_from_slice(&crc32fast::hash(&data).to_be_bytes());
    header[28] = OS_LINUX;
    header[29] = arch.code();
    header[30] = TYPE_SCRIPT;
    header[31] = COMP_NONE;
    header[32..32 + name.len()].copy_from_slice(name.as_bytes());
    let header_crc = crc32fast::hash(&header);
    header[4..8].copy_from_slice(&header_crc.to_be_bytes());

    let mut image = Vec::with_capacity(HEADER_LEN + data.len());
    image.extend_from_slice(&header);
    image.extend_from_slice(&data);
    Ok(image)
}

fn be32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_be_bytes(word)
}

/// Parses and validates a legacy script image: magic, header CRC, data size, data CRC,
/// image type (script), compression (none) and the single-file size table.
pub fn parse_script_image(image: &[u8]) -> Result<ScriptImage, ScriptError> {
    if image.len() < HEADER_LEN {
        return Err(ScriptError::Truncated {
            what: "header",
            need: HEADER_LEN,
            have: image.len(),
        });
    }
    let magic = be32(image, 0);
    if magic != IMAGE_MAGIC {
        return Err(ScriptError::BadMagic { found: magic });
    }
    let mut header = [0u8; HEADER_LEN];
    header.copy_from_slice(&image[..HEADER_LEN]);
    let stored_hcrc = be32(&header, 4);
    header[4..8].fill(0);
    let computed_hcrc = crc32fast::hash(&header);
    if stored_hcrc != computed_hcrc {
        return Err(ScriptError::HeaderCrc {
            stored: stored_hcrc,
            computed: computed_hcrc,
        });
    }
    let data_len = be32(&header, 12) as usize;
    let data = &image[HEADER_LEN..];
    if data.len() < data_len {
        return Err(ScriptError::Truncated {
            what: "data",
            need: data_len,
            have: data.len(),
        });
    }
    if data.len() > data_len {
        return Err(ScriptError::TrailingBytes {
            extra: data.len() - data_len,
        });
    }
    let stored_dcrc = be32(&header, 24);
    let computed_dcrc = crc32fast::hash(data);
    if stored_dcrc != computed_dcrc {
        return Err(ScriptError::DataCrc {
            stored: stored_dcrc,
            computed: computed_dcrc,
        });
    }
    if header[30] != TYPE_SCRIPT {
        return Err(ScriptError::NotAScript {
            image_type: header[30],
        });
    }
    if header[31] != COMP_NONE {
        return Err(ScriptError::Compressed {
            compression: header[31],
        });
    }
    let arch = Arch::from_code(header[29]).ok_or(ScriptError::UnknownArch { code: header[29] })?;
    if data.len() < 8 {
        return Err(ScriptError::SizeTable(format!(
            "data has {} bytes, a single-file size table needs 8",
            data.len()
        )));
    }
    let script_len = be32(data, 0) as usize;
    let terminator = be32(data, 4);
    if terminator != 0 {
        return Err(ScriptError::SizeTable(format!(
            "second entry is {terminator}, expected the 0 terminator of a single-file script"
        )));
    }
    if script_len != data.len() - 8 {
        return Err(ScriptError::SizeTable(format!(
            "script length {script_len} does not match the {} bytes after the table",
            data.len() - 8
        )));
    }
    let name_field = &header[32..32 + NAME_LEN];
    let name_end = name_field.iter().position(|b| *b == 0).unwrap_or(NAME_LEN);
    Ok(ScriptImage {
        name: String::from_utf8_lossy(&name_field[..name_end]).into_owned(),
        arch,
        timestamp: be32(&header, 8),
        script: data[8..].to_vec(),
    })
}

/// The timestamp to put in an image: `SOURCE_DATE_EPOCH` when set (as mkimage does),
/// otherwise the current time.
pub fn image_timestamp() -> Result<u32, ScriptError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<u32>()
            .map_err(|_| ScriptError::SourceDateEpoch { value }),
        Err(_) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            Ok(u32::try_from(now).unwrap_or(u32::MAX))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_parse_round_trip() {
        let script = b"echo hello\nbooti ${kernel_addr_r}\n";
        let image = pack_script(script, "Basalt", Arch::Arm64, 1_700_000_000).unwrap();
        assert_eq!(image.len(), HEADER_LEN + 8 + script.len());
        let parsed = parse_script_image(&image).unwrap();
        assert_eq!(parsed.name, "Basalt");
        assert_eq!(parsed.arch, Arch::Arm64);
        assert_eq!(parsed.timestamp, 1_700_000_000);
        assert_eq!(parsed.script, script);
    }

    #[test]
    fn known_bytes_match_mkimage() {
        // `printf 'echo hi\n' > a.cmd; SOURCE_DATE_EPOCH=1700000000 mkimage -A arm64 -O linux
        //  -T script -C none -a 0 -e 0 -n "Basalt boot" -d a.cmd a.scr` (u-boot-tools 2023.01)
        let image = pack_script(b"echo hi\n", "Basalt boot", Arch::Arm64, 1_700_000_000).unwrap();
        assert_eq!(
            &image[..8],
            &[0x27, 0x05, 0x19, 0x56, 0x4d, 0xb2, 0x05, 0xf3]
        );
        assert_eq!(
            &image[24..32],
            &[0xd9, 0x34, 0x01, 0x62, 0x05, 0x16, 0x06, 0x00]
        );
        assert_eq!(&image[64..72], &[0, 0, 0, 8, 0, 0, 0, 0]);
    }

    #[test]
    fn name_of_32_bytes_fits_33_does_not() {
        let name = "n".repeat(32);
        let image = pack_script(b"x", &name, Arch::Arm64, 0).unwrap();
        assert_eq!(parse_script_image(&image).unwrap().name, name);
        let err = pack_script(b"x", &"n".repeat(33), Arch::Arm64, 0).unwrap_err();
        assert!(matches!(err, ScriptError::NameTooLong { .. }), "{err}");
    }

    #[test]
    fn corruption_is_detected() {
        let image = pack_script(b"echo hi\n", "x", Arch::Arm64, 5).unwrap();

        let mut bad = image.clone();
        bad[0] = 0;
        assert!(matches!(
            parse_script_image(&bad),
            Err(ScriptError::BadMagic { .. })
        ));

        let mut bad = image.clone();
        bad[40] ^= 1; // name byte: header CRC
        assert!(matches!(
            parse_script_image(&bad),
            Err(ScriptError::HeaderCrc { .. })
        ));

        let mut bad = image.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1; // script byte: data CRC
        assert!(matches!(
            parse_script_image(&bad),
            Err(ScriptError::DataCrc { .. })
        ));

        assert!(matches!(
            parse_script_image(&image[..image.len() - 1]),
            Err(ScriptError::Truncated { what: "data", .. })
        ));
        assert!(matches!(
            parse_script_image(&image[..10]),
            Err(ScriptError::Truncated { what: "header", .. })
        ));
        let mut long = image.clone();
        long.push(0);
        assert!(matches!(
            parse_script_image(&long),
            Err(ScriptError::TrailingBytes { extra: 1 })
        ));
    }

    #[test]
    fn non_script_images_are_refused() {
        let mut image = pack_script(b"echo hi\n", "x", Arch::Arm64, 5).unwrap();
        image[30] = 2; // IH_TYPE_KERNEL
        image[4..8].fill(0);
        let crc = crc32fast::hash(&image[..HEADER_LEN]);
        image[4..8].copy_from_slice(&crc.to_be_bytes());
        let err = parse_script_image(&image).unwrap_err();
        assert!(
            matches!(err, ScriptError::NotAScript { image_type: 2 }),
            "{err}"
        );
    }

    #[test]
    fn arch_codes_round_trip() {
        for arch in [Arch::Arm, Arch::Arm64, Arch::X86_64, Arch::Riscv] {
            assert_eq!(Arch::from_code(arch.code()), Some(arch));
        }
        assert_eq!(Arch::from_code(0), None);
    }
}
