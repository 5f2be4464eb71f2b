//! Syntax rules for single values, shared by the per-kind validators. Each returns `Err` with a
//! message fit to follow the field path (`"...: not an IP address"`).

use std::net::IpAddr;

/// An address with a prefix length (`192.0.2.1/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    /// The address part.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Whether bits beyond the prefix are set (fine for an interface address, wrong for a
    /// route destination).
    pub fn has_host_bits(&self) -> bool {
        self.network() != self.addr
    }

    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

pub(crate) fn ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .map_err(|_| format!("`{s}` is not an IP address"))
}

/// A unicast host address (not unspecified, not multicast).
pub(crate) fn host_ip(s: &str) -> Result<IpAddr, String> {
    let addr = ip(s)?;
    if addr.is_unspecified() || addr.is_multicast() {
        return Err(format!("`{s}` is not a unicast host address"));
    }
    Ok(addr)
}

pub(crate) fn cidr(s: &str) -> Result<Cidr, String> {
    let bad = || format!("`{s}` is not in CIDR notation (address/prefix, e.g. 192.168.1.10/24)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("`{s}`: prefix length {prefix} is more than {max}"));
    }
    Ok(Cidr { addr, prefix })
}

/// An RFC 1123 host name: dot-separated labels of 1 to 63 letters, digits and `-`, not starting
/// or ending with `-`; at most 253 characters.
pub(crate) fn hostname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 253 {
        return Err(format!("`{s}` is longer than 253 characters"));
    }
    for label in s.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "`{s}`: each dot-separated label must be 1 to 63 characters"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "`{s}` is not an RFC 1123 host name (letters, digits, `-` and dots only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("`{s}`: a label must not start or end with `-`"));
        }
    }
    Ok(())
}

/// A host name or an IP address (time servers).
pub(crate) fn host(s: &str) -> Result<(), String> {
    if ip(s).is_ok() {
        return Ok(());
    }
    hostname(s).map_err(|_| format!("`{s}` is neither a host name nor an IP address"))
}

/// A host name or IP address with an optional port: `host`, `host:port`, `IPv6` or
/// `[IPv6]:port`.
pub(crate) fn host_port(s: &str) -> Result<(), String> {
    if ip(s).is_ok() {
        return Ok(());
    }
    let (name, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (addr, port) = rest.split_once("]:").ok_or_else(|| {
                format!("`{s}`: write an IPv6 address with a port as [address]:port")
            })?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("`{addr}` is not an IPv6 address"))?;
            return port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(|_| ())
                .ok_or_else(|| format!("`{s}`: `{port}` is not a port (1-65535)"));
        }
        None => match s.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        },
    };
    if let Some(port) = port
        && port.parse::<u16>().ok().filter(|p| *p != 0).is_none()
    {
        return Err(format!("`{s}`: `{port}` is not a port (1-65535)"));
    }
    host(name)
}

/// A Linux interface name: 1 to 15 printable ASCII characters without `/`, `:` or spaces, and
/// not `.` or `..`.
pub(crate) fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("`{s}`: an interface name is 1 to 15 characters"));
    }
    if s == "."
        || s == ".."
        || !s
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return Err(format!("`{s}` is not a valid interface name"));
    }
    Ok(())
}

const SYSCTL_ROOTS: [&str; 10] = [
    "abi", "crypto", "debug", "dev", "fs", "kernel", "net", "sunrpc", "user", "vm",
];

/// A dotted sysctl name under a known `/proc/sys` root. `/` inside a segment stands for a dot
/// in an interface name, as with sysctl(8).
pub(crate) fn sysctl_name(s: &str) -> Result<(), String> {
    let segments: Vec<&str> = s.split('.').collect();
    let well_formed = segments.len() >= 2
        && segments.iter().all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/'))
        });
    if !well_formed {
        return Err(format!(
            "`{s}` is not a sysctl name (dotted, like net.ipv4.ip_forward)"
        ));
    }
    if !SYSCTL_ROOTS.contains(&segments[0]) {
        return Err(format!(
            "`{s}`: unknown sysctl root `{}` (expected one of {})",
            segments[0],
            SYSCTL_ROOTS.join(", ")
        ));
    }
    Ok(())
}

/// Text without control characters (newlines and tabs included), non-empty.
pub(crate) fn single_line(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains control characters"));
    }
    Ok(())
}

/// A single token: non-empty, no whitespace or control characters.
pub(crate) fn token(s: &str) -> Result<(), String> {
    single_line(s)?;
    if s.chars().any(char::is_whitespace) {
        return Err(format!("`{s}` contains whitespace"));
    }
    Ok(())
}

/// An absolute, normalized path: starts with `/`, no empty, `.` or `..` segments, no trailing
/// `/`, no control characters.
pub(crate) fn absolute_path(s: &str) -> Result<(), String> {
    let Some(rest) = s.strip_prefix('/') else {
        return Err(format!("`{s}` is not an absolute path"));
    };
    if s.chars().any(char::is_control) {
        return Err(format!("{s:?} contains control characters"));
    }
    if rest.is_empty()
        || rest
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "`{s}` is not a normalized path (no `//`, `.`, `..` or trailing `/`)"
        ));
    }
    Ok(())
}

/// Names made of `[A-Za-z0-9_-]`, 1 to `max` characters (kernel modules, key ids).
pub(crate) fn word(s: &str, max: usize, what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("`{s}`: a {what} is 1 to {max} characters"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(format!(
            "`{s}` is not a valid {what} (letters, digits, `_`, `-`, `.`)"
        ));
    }
    Ok(())
}

/// A lowercase DNS label (service names, board names): `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at
/// most 63 characters.
pub(crate) fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` must be 1 to 63 lowercase letters, digits and `-`, not starting or ending with `-`"
        ))
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn env_name(s: &str) -> Result<(), String> {
    let mut bytes = s.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not an environment variable name"))
    }
}

/// `HH:MM`, 24-hour; returns minutes since midnight.
pub(crate) fn time_of_day(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a time of day (HH:MM, 24-hour)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// A duration of hours and minutes (`2h`, `90m`, `1h30m`); returns minutes.
pub(crate) fn duration_minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("`{s}` is not a duration (hours and minutes, e.g. 2h, 90m, 1h30m)");
    let (hours, rest) = match s.split_once('h') {
        Some((h, rest)) => (Some(h), rest),
        None => (None, s),
    };
    let minutes = if rest.is_empty() {
        None
    } else {
        Some(rest.strip_suffix('m').ok_or_else(bad)?)
    };
    if hours.is_none() && minutes.is_none() {
        return Err(bad());
    }
    let number = |n: Option<&str>| -> Result<u32, String> {
        match n {
            None => Ok(0),
            Some(n) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                n.parse().map_err(|_| bad())
            }
            Some(_) => Err(bad()),
        }
    };
    let (hours, minutes) = (number(hours)?, number(minutes)?);
    hours
        .checked_mul(60)
        .and_then(|h| h.checked_add(minutes))
        .ok_or_else(bad)
}

/// An `http` or `https` URL with a host.
pub(crate) fn http_url(s: &str) -> Result<(), String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("`{s}`: scheme `{other}` is not http or https")),
        None => {
            return Err(format!(
                "`{s}` is not an absolute URL (http:// or https://)"
            ));
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{s}` has no host"));
    };
    if authority.host().is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("`{s}`: credentials in URLs are not allowed"));
    }
    if authority.port().is_some() && authority.port_u16().is_none_or(|p| p == 0) {
        return Err(format!("`{s}` has an invalid port"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c = cidr("192.168.1.10/24").expect("valid");
        assert!(c.has_host_bits());
        assert_eq!(c.network().to_string(), "192.168.1.0");
        assert!(!cidr("0.0.0.0/0").expect("valid").has_host_bits());
        assert!(!cidr("2001:db8::/32").expect("valid").has_host_bits());
        assert!(cidr("2001:db8::1/64").expect("valid").has_host_bits());
        assert!(cidr("10.0.0.1/33").is_err());
        assert!(cidr("10.0.0.1").is_err());
        assert!(cidr("10.0.0.1/+8").is_err());
        assert!(cidr("10.0.0.256/8").is_err());
    }

    #[test]
    fn hostnames() {
        assert!(hostname("edge-1").is_ok());
        assert!(hostname("edge-1.site.example.com").is_ok());
        assert!(hostname("").is_err());
        assert!(hostname("-edge").is_err());
        assert!(hostname("edge_1").is_err());
        assert!(hostname("a..b").is_err());
        assert!(hostname(&"a".repeat(64)).is_err());
        assert!(host("10.0.0.1").is_ok());
        assert!(host("pool.ntp.org").is_ok());
        assert!(host("not a host").is_err());
    }

    #[test]
    fn hosts_with_ports() {
        for ok in [
            "10.0.0.1",
            "::1",
            "ntp.example",
            "ntp.example:1123",
            "10.0.0.1:123",
            "[::1]:123",
        ] {
            assert!(host_port(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ntp.example:0",
            "ntp.example:x",
            "[::1]",
            "[x]:1",
            "a b:1",
            "10.0.0.1:99999",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sysctl_names() {
        assert!(sysctl_name("net.ipv4.ip_forward").is_ok());
        assert!(sysctl_name("net.ipv4.conf.eth0/10.rp_filter").is_ok());
        assert!(sysctl_name("vm.swappiness").is_ok());
        assert!(sysctl_name("swappiness").is_err());
        assert!(sysctl_name("net..ipv4").is_err());
        assert!(sysctl_name("foo.bar").is_err());
        assert!(sysctl_name("net.ipv4.ip forward").is_err());
    }

    #[test]
    fn paths_and_names() {
        assert!(absolute_path("/etc/hosts").is_ok());
        assert!(absolute_path("etc/hosts").is_err());
        assert!(absolute_path("/etc//hosts").is_err());
        assert!(absolute_path("/etc/../root").is_err());
        assert!(absolute_path("/etc/").is_err());
        assert!(absolute_path("/").is_err());
        assert!(interface_name("enp1s0").is_ok());
        assert!(interface_name("a-very-long-interface").is_err());
        assert!(interface_name("eth 0").is_err());
        assert!(env_name("LOG_LEVEL").is_ok());
        assert!(env_name("1X").is_err());
        assert!(dns_label("web-1").is_ok());
        assert!(dns_label("Web").is_err());
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time_of_day("02:30"), Ok(150));
        assert!(time_of_day("24:00").is_err());
        assert!(time_of_day("2:30").is_err());
        assert_eq!(duration_minutes("2h"), Ok(120));
        assert_eq!(duration_minutes("90m"), Ok(90));
        assert_eq!(duration_minutes("1h30m"), Ok(90));
        assert!(duration_minutes("").is_err());
        assert!(duration_minutes("h").is_err());
        assert!(duration_minutes("1d").is_err());
        assert!(duration_minutes("1h30").is_err());
        assert!(duration_minutes("-1h").is_err());
    }

    #[test]
    fn urls() {
        assert!(http_url("https://updates.example.com/basalt/stable").is_ok());
        assert!(http_url("http://10.0.0.5:8080/").is_ok());
        assert!(http_url("ftp://example.com/").is_err());
        assert!(http_url("updates.example.com").is_err());
        assert!(http_url("https://user:pw@example.com/").is_err());
        assert!(http_url("https://exa mple.com/").is_err());
    }
}
