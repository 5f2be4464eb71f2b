//! The `UpdateConfig` document: where updates come from, when they may be installed and which
//! keys sign them.

use serde::{Deserialize, Serialize};

/// Default number of boot attempts of a freshly written slot before it is rolled back.
pub const DEFAULT_TRIES: u32 = 3;

/// The `UpdateConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpdateConfig {
    /// URL (`http` or `https`) of the update channel: a static repository of signed bundles.
    /// Plain `http` is allowed: bundles are verified against `trustedSigningKeys`.
    pub channel: String,
    /// Whether updates are installed by an operator (`manual`, the default) or automatically.
    #[serde(default)]
    pub policy: UpdatePolicy,
    /// When automatic updates may be installed and rebooted into; any time when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// Ed25519 public keys (32 bytes in base64, or PEM `PUBLIC KEY`) that sign update bundles;
    /// a bundle must verify against one of them. At least one is required.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_signing_keys: Vec<String>,
    /// Boot attempts of a new slot before falling back to the old one, 1 to 9 (default 3).
    #[serde(default = "default_tries")]
    pub tries: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            channel: String::new(),
            policy: UpdatePolicy::default(),
            window: None,
            trusted_signing_keys: Vec::new(),
            tries: DEFAULT_TRIES,
        }
    }
}

fn default_tries() -> u32 {
    DEFAULT_TRIES
}

/// Who starts an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UpdatePolicy {
    /// Updates are downloaded and installed only when an operator asks.
    #[default]
    Manual,
    /// The node polls the channel and installs new releases inside the window.
    Auto,
}

/// A weekly maintenance window, in UTC (nodes have no time zone setting).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Days of the week on which the window opens (at least one).
    pub days: Vec<Weekday>,
    /// Opening time, `HH:MM` in 24-hour UTC.
    pub start: String,
    /// Length of the window: hours and/or minutes such as `2h`, `90m`, `1h30m` (at most
    /// `168h`).
    pub duration: String,
}

/// A day of the week.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    /// Monday.
    Mon,
    /// Tuesday.
    Tue,
    /// Wednesday.
    Wed,
    /// Thursday.
    Thu,
    /// Friday.
    Fri,
    /// Saturday.
    Sat,
    /// Sunday.
    Sun,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_enums() {
        let yaml = "channel: https://updates.example.com/stable\nwindow:\n  days: [sat, sun]\n  start: \"02:00\"\n  duration: 3h\n";
        let update: UpdateConfig = yaml_serde::from_str(yaml).expect("decodes");
        assert_eq!(update.tries, DEFAULT_TRIES);
        assert_eq!(update.policy, UpdatePolicy::Manual);
        let window = update.window.expect("window");
        assert_eq!(window.days, [Weekday::Sat, Weekday::Sun]);
        let bad = yaml_serde::from_str::<UpdateConfig>("channel: x\npolicy: sometimes\n");
        let message = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("unknown variant `sometimes`"), "{message}");
    }
}
