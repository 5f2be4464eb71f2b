//! Line diffs between two configs, for dry-run replies.
//!
//! The diff compares the canonical YAML of both configs (so formatting, comments and key order
//! in the original files never show up) with secrets redacted: a secret that changed reads
//! `*** (changed)` on the new side, so the diff can be logged and sent over the API.

use similar::TextDiff;

use crate::schema::Config;

/// Lines of context around each change.
const CONTEXT: usize = 3;

impl Config {
    /// A unified diff from `self` (labelled `current`) to `proposed`, of their redacted
    /// canonical YAML. Empty when the configs render the same.
    pub fn diff(&self, proposed: &Config) -> String {
        let old = render(&self.redacted());
        let new = render(&proposed.redacted_against(self));
        if old == new {
            return String::new();
        }
        TextDiff::from_lines(&old, &new)
            .unified_diff()
            .context_radius(CONTEXT)
            .header("current", "proposed")
            .to_string()
    }
}

/// Canonical YAML, or a comment saying why there is none (encoding cannot fail for this crate's
/// types; this keeps `diff` infallible without a panic path).
fn render(config: &Config) -> String {
    config
        .to_yaml()
        .unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
}

#[cfg(test)]
mod tests {
    use crate::schema::{Config, MachineConfig, Secret};

    fn config(hostname: &str, key: &str) -> Config {
        let mut machine = MachineConfig {
            hostname: hostname.into(),
            time_servers: vec!["pool.ntp.org".into()],
            ..MachineConfig::default()
        };
        machine.api.key = Some(Secret::new(key));
        Config::new(machine)
    }

    #[test]
    fn unified_diff_of_canonical_yaml() {
        let diff = config("edge-1", "k1").diff(&config("edge-2", "k1"));
        assert!(diff.starts_with("--- current\n+++ proposed\n@@"), "{diff}");
        assert!(
            diff.contains("\n-hostname: edge-1\n+hostname: edge-2\n"),
            "{diff}"
        );
        assert!(config("a", "k").diff(&config("a", "k")).is_empty());
    }

    #[test]
    fn secrets_never_appear_but_changes_do() {
        let diff = config("edge-1", "old-secret").diff(&config("edge-1", "new-secret"));
        assert!(!diff.contains("secret"), "{diff}");
        assert!(
            diff.contains("-  key: '***'\n+  key: '*** (changed)'\n"),
            "{diff}"
        );
    }
}
