//! Syntax of the values in board files: names, consoles, package paths, addresses.

/// Whether `name` is a valid board name.
pub fn is_board_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Whether `console` looks like a kernel `console=` value for a serial or virtual terminal.
pub fn is_console(console: &str) -> bool {
    let (dev, opts) = match console.split_once(',') {
        Some((d, o)) => (d, Some(o)),
        None => (console, None),
    };
    let Some(name) = dev.strip_prefix("tty") else {
        return false;
    };
    let digits = name.trim_start_matches(|ch: char| ch.is_ascii_alphabetic());
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    match opts {
        None => true,
        Some(o) => {
            let baud_len = o.bytes().take_while(u8::is_ascii_digit).count();
            let rest = &o[baud_len..];
            baud_len > 0
                && (rest.is_empty()
                    || (rest.len() <= 3
                        && matches!(rest.as_bytes()[0], b'n' | b'o' | b'e')
                        && rest[1..].bytes().all(|b| b.is_ascii_digit() || b == b'r')))
        }
    }
}

/// Whether `v` is a U-Boot load address: `0x…` hex or a `${variable}`.
pub fn is_address(v: &str) -> bool {
    if let Some(hex) = v.strip_prefix("0x") {
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    v.strip_prefix("${")
        .and_then(|r| r.strip_suffix('}'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Whether `name` is a Debian package name (`[a-z0-9][a-z0-9+.-]+`).
pub fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
}

/// Whether `path` is a clean relative path: no leading `/`, no empty, `.` or `..` parts,
/// no whitespace or backslashes.
pub fn is_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(|ch: char| ch.is_whitespace() || ch == '\\')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles() {
        for ok in [
            "ttyS0",
            "ttyS1,115200",
            "ttyAMA0,115200n8",
            "tty0",
            "ttyS0,9600e7",
        ] {
            assert!(is_console(ok), "{ok}");
        }
        for bad in [
            "",
            "S0",
            "ttyS",
            "ttyS0,",
            "ttyS0,fast",
            "ttyS0 ,115200",
            "ttyS0,115200x8",
        ] {
            assert!(!is_console(bad), "{bad}");
        }
    }

    #[test]
    fn paths_and_names() {
        assert!(is_relative_path("broadcom/bcm2711-rpi-4-b.dtb"));
        for bad in ["", "/abs", "a//b", "a/../b", "./a", "a b", "a/"] {
            assert!(!is_relative_path(bad), "{bad}");
        }
        assert!(is_package_name("linux-image-6.1.0-56-arm64"));
        assert!(is_package_name("u-boot-rpi"));
        assert!(!is_package_name("Linux"));
        assert!(!is_package_name("-x"));
        assert!(is_board_name("qemu-arm64"));
        assert!(!is_board_name("../x"));
        assert!(is_address("0x00200000"));
        assert!(is_address("${kernel_addr_r}"));
        assert!(!is_address("200000"));
    }
}
