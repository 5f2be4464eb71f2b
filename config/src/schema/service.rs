//! The `ServiceConfig` document: workloads.
//!
//! Reserved: machined does not run workloads yet. The schema is fixed and validated now so that
//! configs written today keep decoding when it does; keep it minimal until then.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::unique_map;

/// The `ServiceConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// The services, by unique name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
}

/// One long-running workload: a container image or a program on the system image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Unique name: lowercase letters, digits and `-`, at most 63 characters.
    pub name: String,
    /// OCI image reference to run (`registry.example.com/app:1.2`). Exactly one of `image` and
    /// `command` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Absolute path of a program to run. Exactly one of `image` and `command` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Arguments passed to the program or image entry point.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables. Values of variables whose name suggests a secret (`*PASSWORD*`,
    /// `*TOKEN*`, `*SECRET*`, `*KEY*`, `*CREDENTIAL*`) are redacted in logs and diffs.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_map"
    )]
    pub env: BTreeMap<String, String>,
    /// When to restart the service after it exits.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Names of services that must be running before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// When a service is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RestartPolicy {
    /// Always restart, whatever the exit status (the default).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_is_camel_case() {
        let yaml = "services:\n  - name: web\n    image: nginx:1\n    restart: onFailure\n    dependsOn: [db]\n";
        let config: ServiceConfig = yaml_serde::from_str(yaml).expect("decodes");
        assert_eq!(config.services[0].restart, RestartPolicy::OnFailure);
        assert_eq!(config.services[0].depends_on, ["db"]);
    }
}
