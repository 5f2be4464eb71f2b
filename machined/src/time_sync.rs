//! Time synchronisation: an SNTP client (RFC 4330, NTPv4 packets) that asks the
//! configuration's `timeServers` in turn and steps the clock through [`HostActions`] when it
//! is off by more than [`STEP_THRESHOLD`].
//!
//! Edge boards often have no battery-backed clock and boot in 1970 or at the image's build
//! date; TLS certificate checks and update windows need the real time, so a step (not a
//! slow slew) is the right first correction, and later corrections are steps too. Each
//! poll sends one request, checks that the answer is a server reply (mode 4), carries the
//! origin timestamp we sent (a spoofed or stale reply is refused), comes from a
//! synchronised server (stratum 1–15, leap indicator not 3; stratum 0 is a kiss-o'-death)
//! and computes offset and round-trip delay from the four timestamps.
//!
//! The result is published as the resource `time/TimeStatus/status` and each step is a
//! Config event. In dev mode the step is only recorded by [`crate::host::DevHost`].
//!
//! Limits: no clock discipline (frequency correction) and no slewing — precision is about
//! the threshold, enough for certificates and schedules, not for measurement work; one
//! sample per poll (no filter over several servers); host names go through the system
//! resolver (IP addresses always work).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::host::HostActions;

/// Offsets smaller than this are left alone.
pub const STEP_THRESHOLD: Duration = Duration::from_millis(128);
/// How long one server may take to answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// The default time between polls once synchronised.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(256);
/// Seconds between the NTP era (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
/// The NTP port.
pub const NTP_PORT: u16 = 123;

/// A failed time query.
#[derive(Debug, thiserror::Error)]
pub enum TimeError {
    /// The reply is not a usable NTP server reply.
    #[error("time server {server}: {reason}")]
    BadReply {
        /// The server.
        server: String,
        /// What is wrong with the reply.
        reason: String,
    },
    /// The server could not be reached or resolved.
    #[error("time server {server}: {source}")]
    Io {
        /// The server.
        server: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("time server {0}: no answer within {QUERY_TIMEOUT:?}")]
    Timeout(String),
}

/// An NTP timestamp: seconds since 1900 in the high 32 bits, fraction in the low 32 bits.
pub fn to_ntp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Nanoseconds since the Unix epoch of an NTP timestamp (era 0, i.e. until 2036).
pub fn ntp_to_unix_nanos(ts: u64) -> i128 {
    let secs = i128::from(ts >> 32) - i128::from(NTP_UNIX_OFFSET);
    let frac = (i128::from(ts & 0xffff_ffff) * 1_000_000_000) >> 32;
    secs * 1_000_000_000 + frac
}

/// A client request (LI 0, version 4, mode 3) whose transmit timestamp is `t1`.
pub fn request(t1: u64) -> [u8; 48] {
    let mut packet = [0u8; 48];
    packet[0] = (4 << 3) | 3;
    packet[40..48].copy_from_slice(&t1.to_be_bytes());
    packet
}

/// What one reply says about the local clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// How far the local clock is behind the server (positive: local clock is slow), ns.
    pub offset_ns: i64,
    /// Round-trip delay, ns.
    pub delay_ns: i64,
    /// The server's stratum.
    pub stratum: u8,
}

/// Checks a reply to the request sent at `t1` and received at `t4` (NTP timestamps) and
/// computes the offset and delay: offset = ((T2 − T1) + (T3 − T4)) / 2,
/// delay = (T4 − T1) − (T3 − T2).
pub fn parse_reply(reply: &[u8], t1: u64, t4: u64) -> Result<Sample, String> {
    if reply.len() < 48 {
        return Err(format!(
            "reply of {} bytes, an NTP packet has 48",
            reply.len()
        ));
    }
    let leap = reply[0] >> 6;
    let mode = reply[0] & 7;
    let stratum = reply[1];
    let word = |at: usize| u64::from_be_bytes(reply[at..at + 8].try_into().unwrap_or([0; 8]));
    let (origin, receive, transmit) = (word(24), word(32), word(40));
    if mode != 4 {
        return Err(format!("mode {mode}, a server reply has mode 4"));
    }
    if stratum == 0 {
        let code = String::from_utf8_lossy(&reply[12..16]).into_owned();
        return Err(format!("kiss-o'-death {code:?}"));
    }
    if stratum > 15 || leap == 3 {
        return Err(format!(
            "server not synchronised (stratum {stratum}, leap {leap})"
        ));
    }
    if origin != t1 {
        return Err("origin timestamp is not our request's: stale or spoofed reply".into());
    }
    if transmit == 0 {
        return Err("transmit timestamp is zero".into());
    }
    let [t1, t2, t3, t4] = [t1, receive, transmit, t4].map(ntp_to_unix_nanos);
    let offset = ((t2 - t1) + (t3 - t4)) / 2;
    let delay = (t4 - t1) - (t3 - t2);
    Ok(Sample {
        offset_ns: i64::try_from(offset).map_err(|_| "offset out of range".to_string())?,
        delay_ns: i64::try_from(delay.max(0)).unwrap_or(i64::MAX),
        stratum,
    })
}

/// `host`, `host:port`, `IPv6` or `[IPv6]:port` with the NTP port as default.
pub fn server_address(server: &str) -> String {
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{server}]:{NTP_PORT}");
    }
    if server.starts_with('[') || server.contains(':') {
        return server.to_string();
    }
    format!("{server}:{NTP_PORT}")
}

/// Asks one server; `now` reads the local clock being checked.
pub async fn query(
    server: &str,
    now: &(dyn Fn() -> SystemTime + Sync),
) -> Result<Sample, TimeError> {
    let io = |source| TimeError::Io {
        server: server.to_string(),
        source,
    };
    let work = async {
        let addr: SocketAddr = tokio::net::lookup_host(server_address(server))
            .await
            .map_err(io)?
            .next()
            .ok_or_else(|| io(std::io::Error::other("no address")))?;
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(addr)
        } else {
            "[::]:0".parse().unwrap_or(addr)
        };
        let socket = tokio::net::UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(addr).await.map_err(io)?;
        let t1 = to_ntp(now());
        socket.send(&request(t1)).await.map_err(io)?;
        let mut buf = [0u8; 512];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            let t4 = to_ntp(now());
            match parse_reply(&buf[..n], t1, t4) {
                Ok(sample) => return Ok(sample),
                // A stray or late packet: keep waiting for ours until the timeout.
                Err(reason) if reason.starts_with("origin") => continue,
                Err(reason) => {
                    return Err(TimeError::BadReply {
                        server: server.to_string(),
                        reason,
                    });
                }
            }
        }
    };
    tokio::time::timeout(QUERY_TIMEOUT, work)
        .await
        .map_err(|_| TimeError::Timeout(server.to_string()))?
}

/// Polls the configured servers and keeps the clock right.
pub struct TimeSync {
    /// The host whose clock is stepped.
    pub host: Arc<dyn HostActions>,
    /// The applied configuration (servers are read from the latest at each poll).
    pub config: crate::config_watch::ConfigWatch,
    /// Where the status is published.
    pub resources: Arc<crate::resources::ResourceStore>,
    /// Where steps are reported.
    pub events: Arc<crate::events::EventBus>,
    /// The state dir (console log).
    pub state_dir: std::path::PathBuf,
    /// The time floor, raised to the clock after each successful sync.
    pub floor: Arc<crate::time_floor::TimeFloor>,
}

impl TimeSync {
    fn servers(&self) -> Vec<String> {
        self.config
            .peek()
            .map(|a| a.config.machine.time_servers.clone())
            .unwrap_or_default()
    }

    /// One poll: asks the servers in order until one answers; steps the clock when needed.
    /// Returns whether the clock is synchronised now.
    pub async fn poll(&self) -> bool {
        let servers = self.servers();
        let mut errors = Vec::new();
        for server in &servers {
            let host = self.host.clone();
            match query(server, &move || host.now()).await {
                Ok(sample) => {
                    let stepped =
                        sample.offset_ns.unsigned_abs() > STEP_THRESHOLD.as_nanos() as u64;
                    let mut step_error = None;
                    if stepped {
                        match self.host.step_clock(sample.offset_ns) {
                            Ok(()) => {
                                let message = format!(
                                    "clock stepped by {:.3} s (time server {server}, stratum {})",
                                    sample.offset_ns as f64 / 1e9,
                                    sample.stratum
                                );
                                crate::console(&self.state_dir, &message);
                                self.events.publish(
                                    crate::events::EventKind::Config,
                                    "time",
                                    message,
                                );
                            }
                            Err(e) => step_error = Some(e.to_string()),
                        }
                    }
                    // Only a clock that already agreed with the server becomes the floor: one
                    // reply that steps the clock far ahead does not move it at once.
                    if !stepped {
                        self.raise_floor();
                    }
                    self.publish(json!({
                        "synced": step_error.is_none(), "server": server,
                        "offsetMs": sample.offset_ns as f64 / 1e6,
                        "delayMs": sample.delay_ns as f64 / 1e6,
                        "stratum": sample.stratum, "stepped": stepped && step_error.is_none(),
                        "servers": servers, "error": step_error,
                        "lastSync": crate::timefmt::rfc3339(SystemTime::now()),
                    }));
                    return true;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        self.publish(json!({"synced": false, "servers": servers, "errors": errors}));
        false
    }

    /// The clock was just confirmed by a time server: it becomes the floor.
    fn raise_floor(&self) {
        let now = self
            .host
            .now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Err(e) = self.floor.raise(now) {
            crate::console(&self.state_dir, &format!("time floor not recorded: {e}"));
        }
    }

    fn publish(&self, spec: serde_json::Value) {
        let mut specs = std::collections::BTreeMap::new();
        specs.insert("status".to_string(), spec);
        self.resources
            .set_type("time", "TimeStatus", "TimeSync", specs);
    }

    /// Polls forever: every `interval` once synchronised, every 16 s (or `interval` if
    /// shorter) while no server answers.
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let retry = interval.min(Duration::from_secs(16));
        loop {
            let synced = self.poll().await;
            tokio::time::sleep(if synced { interval } else { retry }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(origin: u64, receive: u64, transmit: u64) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = (4 << 3) | 4;
        p[1] = 2;
        p[24..32].copy_from_slice(&origin.to_be_bytes());
        p[32..40].copy_from_slice(&receive.to_be_bytes());
        p[40..48].copy_from_slice(&transmit.to_be_bytes());
        p
    }

    fn at(unix_ms: u64) -> u64 {
        to_ntp(UNIX_EPOCH + Duration::from_millis(unix_ms))
    }

    #[test]
    fn timestamps_round_trip_and_use_the_1900_era() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 250_000_000);
        let ntp = to_ntp(t);
        assert_eq!(ntp >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(ntp & 0xffff_ffff, 1 << 30, "a quarter second");
        assert_eq!(ntp_to_unix_nanos(ntp), 1_700_000_000_250_000_000);
        let req = request(ntp);
        assert_eq!(req[0], 0x23, "LI 0, VN 4, mode 3");
        assert_eq!(&req[40..48], &ntp.to_be_bytes());
    }

    #[test]
    fn offset_and_delay_from_four_timestamps() {
        // Local clock 5 s behind; 40 ms each way; the server takes 2 ms.
        let (t1, t4) = (at(1_000_000), at(1_000_082));
        let r = reply(t1, at(1_005_040), at(1_005_042));
        let s = parse_reply(&r, t1, t4).unwrap();
        assert!((s.offset_ns - 5_000_000_000).abs() < 1_000, "{s:?}");
        assert!((s.delay_ns - 80_000_000).abs() < 1_000, "{s:?}");
        assert_eq!(s.stratum, 2);
    }

    #[test]
    fn bad_replies_are_refused_with_the_reason() {
        let t1 = at(1_000);
        let ok = reply(t1, at(1_001), at(1_001));
        let check = |p: &[u8]| parse_reply(p, t1, at(1_002)).unwrap_err();
        assert!(check(&ok[..40]).contains("40 bytes"));
        let mut p = ok;
        p[0] = (4 << 3) | 3;
        assert!(check(&p).contains("mode 3"));
        let mut p = ok;
        p[1] = 0;
        p[12..16].copy_from_slice(b"RATE");
        assert!(check(&p).contains("RATE"));
        let mut p = ok;
        p[0] |= 3 << 6;
        assert!(check(&p).contains("not synchronised"));
        assert!(check(&reply(t1 + 1, at(1_001), at(1_001))).contains("origin"));
    }

    #[test]
    fn server_addresses_get_the_ntp_port() {
        assert_eq!(server_address("10.0.0.1"), "10.0.0.1:123");
        assert_eq!(server_address("pool.example"), "pool.example:123");
        assert_eq!(server_address("127.0.0.1:1123"), "127.0.0.1:1123");
        assert_eq!(server_address("::1"), "[::1]:123");
        assert_eq!(server_address("[::1]:1123"), "[::1]:1123");
    }
}
