//! RFC 3339 timestamps for logs and the audit trail (UTC, millisecond precision).

use std::time::{SystemTime, UNIX_EPOCH};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time that could not be parsed as RFC 3339.
#[derive(Debug, thiserror::Error)]
#[error("invalid RFC 3339 time {text:?}: {source}")]
pub struct TimeParseError {
    /// The text given.
    pub text: String,
    /// Why it was refused.
    #[source]
    pub source: time::error::Parse,
}

/// Formats `t` as RFC 3339 in UTC with milliseconds, e.g. `2026-05-01T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    let dt = OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    dt.format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// Parses an RFC 3339 time into a [`SystemTime`].
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, TimeParseError> {
    let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|source| TimeParseError {
        text: text.to_string(),
        source,
    })?;
    let nanos = dt.unix_timestamp_nanos();
    Ok(if nanos >= 0 {
        UNIX_EPOCH + std::time::Duration::from_nanos(nanos as u64)
    } else {
        UNIX_EPOCH - std::time::Duration::from_nanos(nanos.unsigned_abs() as u64)
    })
}

/// Converts a [`SystemTime`] into a protobuf timestamp.
pub fn to_timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Converts a protobuf timestamp into a [`SystemTime`] (times before 1970 clamp to 1970).
pub fn from_timestamp(ts: &prost_types::Timestamp) -> SystemTime {
    if ts.seconds < 0 {
        return UNIX_EPOCH;
    }
    UNIX_EPOCH + std::time::Duration::new(ts.seconds as u64, ts.nanos.clamp(0, 999_999_999) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_milliseconds() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let s = rfc3339(t);
        assert_eq!(s, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339(&s).unwrap(), t);
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
