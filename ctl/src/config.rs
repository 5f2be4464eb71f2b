//! The files `basaltctl gen config` writes: the machine configuration for a node, and the
//! client configuration `basaltctl.yaml`.
//!
//! The machine configuration is multi-document-ready YAML with `apiVersion`/`kind`; this
//! module writes only what the API needs (see machined's `settings` module for the fields
//! and `basalt-config` for the full schema to come). `basaltctl.yaml` holds named contexts:
//! endpoints, the CA, and a client certificate and key (and optionally a bearer token).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A failed configuration file operation.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The context asked for does not exist.
    #[error("{path}: no context {name:?} (have: {have})")]
    NoContext {
        /// The file.
        path: String,
        /// The context asked for.
        name: String,
        /// The contexts that exist.
        have: String,
    },
}

/// One connection context of `basaltctl.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Context {
    /// Node addresses (`host[:port]`) used when `-n` is not given.
    pub endpoints: Vec<String>,
    /// The machine CA certificate, PEM.
    pub ca: String,
    /// The client certificate, PEM.
    pub cert: String,
    /// The client private key, PEM.
    pub key: String,
    /// A bearer token sent with every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The client configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when `--context` is not given.
    pub context: String,
    /// Contexts by name.
    pub contexts: BTreeMap<String, Context>,
}

impl ClientConfig {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: p.clone(),
            source,
        })?;
        yaml_serde::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p,
            message: e.to_string(),
        })
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> String {
        yaml_serde::to_string(self).unwrap_or_default()
    }

    /// The context `name`, or the default one.
    pub fn context(&self, name: Option<&str>, path: &Path) -> Result<&Context, ConfigError> {
        let name = name.unwrap_or(&self.context);
        self.contexts
            .get(name)
            .ok_or_else(|| ConfigError::NoContext {
                path: path.display().to_string(),
                name: name.to_string(),
                have: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }
}

/// A trusted token key for the machine configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenKeyEntry {
    /// The key id (`kid`).
    pub id: String,
    /// The raw Ed25519 public key, base64.
    pub public_key: String,
}

/// What goes into a machine configuration.
#[derive(Debug, Clone)]
pub struct MachineConfigInput {
    /// Machine id (token audience).
    pub machine_id: String,
    /// Cluster id (also a token audience).
    pub cluster_id: Option<String>,
    /// Hostname to set.
    pub hostname: Option<String>,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Server certificate, PEM.
    pub cert_pem: String,
    /// Server key, PEM.
    pub key_pem: String,
    /// Trusted token keys.
    pub token_keys: Vec<TokenKeyEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineDoc<'a> {
    api_version: &'a str,
    kind: &'a str,
    machine: MachineSection<'a>,
    api: ApiSection<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MachineSection<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApiSection<'a> {
    ca: &'a str,
    cert: &'a str,
    key: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    token_keys: &'a [TokenKeyEntry],
}

/// The machine configuration YAML.
pub fn render_machine_config(input: &MachineConfigInput) -> String {
    let doc = MachineDoc {
        api_version: "basalt.dev/v1alpha1",
        kind: "MachineConfig",
        machine: MachineSection {
            id: &input.machine_id,
            cluster_id: input.cluster_id.as_deref(),
            hostname: input.hostname.as_deref(),
        },
        api: ApiSection {
            ca: &input.ca_pem,
            cert: &input.cert_pem,
            key: &input.key_pem,
            token_keys: &input.token_keys,
        },
    };
    yaml_serde::to_string(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_round_trips_and_names_missing_contexts() {
        let mut contexts = BTreeMap::new();
        contexts.insert(
            "lab".to_string(),
            Context {
                endpoints: vec!["10.0.0.5".into()],
                ca: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n".into(),
                cert: "c".into(),
                key: "k".into(),
                token: None,
            },
        );
        let cfg = ClientConfig {
            context: "lab".into(),
            contexts,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("basaltctl.yaml");
        std::fs::write(&path, cfg.to_yaml()).unwrap();
        let back = ClientConfig::load(&path).unwrap();
        assert_eq!(back, cfg);
        let err = back.context(Some("prod"), &path).unwrap_err();
        assert!(
            err.to_string().contains("no context \"prod\" (have: lab)"),
            "{err}"
        );
    }

    #[test]
    fn machine_config_has_kind_and_pem_blocks() {
        let yaml = render_machine_config(&MachineConfigInput {
            machine_id: "node-1".into(),
            cluster_id: None,
            hostname: Some("node-1".into()),
            ca_pem: "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n".into(),
            cert_pem: "c".into(),
            key_pem: "k".into(),
            token_keys: vec![],
        });
        assert!(yaml.contains("kind: MachineConfig"), "{yaml}");
        assert!(yaml.contains("-----BEGIN CERTIFICATE-----"), "{yaml}");
    }
}
