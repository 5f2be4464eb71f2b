//! A reply of a remote operation, shown as text or JSON, and the small formatters the
//! commands share (a status as an error, a timestamp, a slot).

use anyhow::anyhow;
use basalt_proto::machine::v1 as pb;
use serde_json::Value;

/// A reply shown as text or JSON.
#[derive(Debug)]
pub struct Rendered {
    /// Human-readable form (one line, or a block).
    pub text: String,
    /// Machine-readable form.
    pub json: Value,
}

pub(crate) fn status_err(rpc: &str, s: tonic::Status) -> anyhow::Error {
    anyhow!("{rpc}: {:?}: {}", s.code(), s.message())
}

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| {
            time::OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                .map(|d| d + time::Duration::nanoseconds(i64::from(t.nanos)))
        })
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

pub(crate) fn slot(s: i32) -> &'static str {
    match pb::Slot::try_from(s) {
        Ok(pb::Slot::A) => "A",
        Ok(pb::Slot::B) => "B",
        _ => "-",
    }
}
