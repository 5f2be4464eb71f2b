//! The kernel command line: which slot booted and the dm-verity root hash to trust.
//!
//! The boot script passes `basalt.slot=A|B` and `basalt.roothash=<64 hex digits>` (see
//! `overlays/common/u-boot/boot.cmd`). The root hash on the command line is the trust
//! anchor of the root filesystem: it comes from the boot chain, not from the slot's own
//! files, so a modified slot cannot vouch for itself.
//!
//! Tokens are split like the kernel's `next_arg`: whitespace separates parameters, and
//! double quotes may group a value with spaces (`key="a b"` or `"key=a b"`). When a
//! parameter appears more than once the last one wins, as for the kernel's own parameters.

use basalt_bootloader::Slot;

/// The command-line parameter naming the booted slot.
pub const SLOT_PARAM: &str = "basalt.slot";
/// The command-line parameter carrying the dm-verity root hash.
pub const ROOT_HASH_PARAM: &str = "basalt.roothash";
/// Hex digits of a sha256 root hash.
pub const ROOT_HASH_HEX_LEN: usize = 64;

/// What the bootloader told machined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootParams {
    /// The slot the bootloader booted.
    pub slot: Slot,
    /// The dm-verity root hash of that slot's root filesystem, lower-case hex.
    pub root_hash: String,
}

/// A command line machined cannot boot from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// A required parameter is absent.
    #[error("the kernel command line has no {0}= (the boot script must pass it)")]
    Missing(&'static str),
    /// `basalt.slot` is neither A nor B.
    #[error("{SLOT_PARAM}={0:?} on the kernel command line is not A or B")]
    BadSlot(String),
    /// `basalt.roothash` is not 64 hex digits.
    #[error(
        "{ROOT_HASH_PARAM}={0:?} on the kernel command line is not {ROOT_HASH_HEX_LEN} hex digits"
    )]
    BadRootHash(String),
}

/// Splits a command line into `(name, value)` pairs; a bare flag has no value.
pub fn tokens(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut chars = cmdline.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return out;
        }
        let mut token = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if c == '"' {
                quoted = !quoted;
                chars.next();
                continue;
            }
            if c.is_whitespace() && !quoted {
                break;
            }
            token.push(c);
            chars.next();
        }
        match token.split_once('=') {
            Some((name, value)) => out.push((name.to_string(), Some(value.to_string()))),
            None => out.push((token, None)),
        }
    }
}

/// The last value of `name`, if any.
pub fn value<'a>(tokens: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    tokens
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref())
}

/// Parses the Basalt parameters out of `/proc/cmdline`.
pub fn parse(cmdline: &str) -> Result<BootParams, CmdlineError> {
    let tokens = tokens(cmdline);
    let slot = value(&tokens, SLOT_PARAM).ok_or(CmdlineError::Missing(SLOT_PARAM))?;
    let slot = match slot {
        "A" => Slot::A,
        "B" => Slot::B,
        other => return Err(CmdlineError::BadSlot(other.to_string())),
    };
    let hash = value(&tokens, ROOT_HASH_PARAM).ok_or(CmdlineError::Missing(ROOT_HASH_PARAM))?;
    if hash.len() != ROOT_HASH_HEX_LEN || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CmdlineError::BadRootHash(hash.to_string()));
    }
    Ok(BootParams {
        slot,
        root_hash: hash.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "6f1ed002ab5595859014ebf0951522d9a3c6f1ed002ab5595859014ebf095152";

    #[test]
    fn parses_the_boot_script_line() {
        let line = format!(
            "console=ttyAMA0,115200 basalt.slot=B basalt.roothash={} panic=10\n",
            HASH.to_uppercase()
        );
        let p = parse(&line).unwrap();
        assert_eq!(p.slot, Slot::B);
        assert_eq!(p.root_hash, HASH);
    }

    #[test]
    fn missing_and_bad_values() {
        assert_eq!(
            parse("console=ttyAMA0 panic=10"),
            Err(CmdlineError::Missing(SLOT_PARAM))
        );
        assert_eq!(
            parse("basalt.slot=A"),
            Err(CmdlineError::Missing(ROOT_HASH_PARAM))
        );
        assert_eq!(
            parse(&format!("basalt.slot=C basalt.roothash={HASH}")),
            Err(CmdlineError::BadSlot("C".into()))
        );
        // lower-case slot names are not what the boot script writes: refuse them
        assert!(matches!(
            parse(&format!("basalt.slot=a basalt.roothash={HASH}")),
            Err(CmdlineError::BadSlot(_))
        ));
        assert!(matches!(
            parse("basalt.slot=A basalt.roothash=abc"),
            Err(CmdlineError::BadRootHash(_))
        ));
        let not_hex = format!("{}zz", &HASH[..62]);
        assert!(matches!(
            parse(&format!("basalt.slot=A basalt.roothash={not_hex}")),
            Err(CmdlineError::BadRootHash(_))
        ));
        // a bare flag is not a value
        assert_eq!(
            parse(&format!("basalt.slot basalt.roothash={HASH}")),
            Err(CmdlineError::Missing(SLOT_PARAM))
        );
    }

    #[test]
    fn last_value_wins_and_quotes_group() {
        let line =
            format!("basalt.slot=A x=\"a b\" \"y=c d\" basalt.slot=B basalt.roothash={HASH}");
        let t = tokens(&line);
        assert_eq!(value(&t, "x"), Some("a b"));
        assert_eq!(value(&t, "y"), Some("c d"));
        assert_eq!(parse(&line).unwrap().slot, Slot::B);
        assert_eq!(tokens("  "), Vec::new());
        assert_eq!(tokens("ro"), vec![("ro".to_string(), None)]);
        assert_eq!(value(&tokens("k=v=w"), "k"), Some("v=w"));
    }
}
