//! fnmatch-style patterns, as module aliases use them (`pci:v00001AF4d*sv*`, `crc32c`).

/// fnmatch-style matching of module aliases: `*`, `?` and `[…]` classes (with ranges and
/// `!`/`^` negation).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, length of the class including ']')
        let mut i = 0;
        let negate = matches!(p.first(), Some(b'!' | b'^'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        while i < p.len() {
            if p[i] == b']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
                if p[i] <= c && c <= p[i + 2] {
                    matched = true;
                }
                i += 3;
            } else {
                if p[i] == c {
                    matched = true;
                }
                i += 1;
            }
        }
        None
    }
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') => (0..=t.len()).any(|i| go(&p[1..], &t[i..])),
            Some(b'?') => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(b'[') => match (t.first(), class(&p[1..], *t.first().unwrap_or(&0))) {
                (Some(_), Some((true, len))) => go(&p[1 + len..], &t[1..]),
                (Some(c), None) => *c == b'[' && go(&p[1..], &t[1..]),
                _ => false,
            },
            Some(c) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(
            "pci:v00001AF4d*sv*",
            "pci:v00001AF4d00001001sv1"
        ));
        assert!(glob_match("crypto-crc32c", "crypto-crc32c"));
        assert!(!glob_match("crypto-crc32c", "crypto-crc32"));
        assert!(glob_match(
            "of:N*T*Cbrcm,bcm2711-emmc2C*",
            "of:NmmcT(null)Cbrcm,bcm2711-emmc2C"
        ));
        assert!(glob_match("a[0-9]b", "a5b"));
        assert!(!glob_match("a[!0-9]b", "a5b"));
        assert!(glob_match("x?z", "xyz"));
    }
}
