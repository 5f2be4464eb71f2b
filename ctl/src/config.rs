//! The files `basaltctl gen config` writes: the machine configuration for a node, and the
//! client configuration `basaltctl.yaml`.
//!
//! The machine configuration is `basalt-config`'s schema (multi-document YAML with
//! `apiVersion`/`kind`): a `MachineConfig` with the node's hostname and API material, to
//! which `--config-patch` patches (strategic merge or RFC 6902) are applied before the result
//! is validated. `basaltctl.yaml` holds named contexts: endpoints, the CA, and a client
//! certificate and key (and optionally a bearer token).

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenKeyEntry {
    /// The key id (`kid`).
    pub id: String,
    /// The raw Ed25519 public key, base64.
    pub public_key: String,
    /// The audience its tokens must carry; `None` for the machine's hostname.
    pub audience: Option<String>,
}

impl std::str::FromStr for TokenKeyEntry {
    type Err = String;

    /// `ID=BASE64` or `ID=BASE64@AUDIENCE` (the `--token-key` argument).
    fn from_str(kv: &str) -> Result<Self, String> {
        let (id, key) = kv
            .split_once('=')
            .filter(|(id, key)| !id.is_empty() && !key.is_empty())
            .ok_or_else(|| format!("--token-key {kv:?}: expected ID=BASE64[@AUDIENCE]"))?;
        let (key, audience) = match key.split_once('@') {
            Some((key, aud)) => (key, Some(aud.to_string())),
            None => (key, None),
        };
        Ok(TokenKeyEntry {
            id: id.to_string(),
            public_key: key.to_string(),
            audience,
        })
    }
}

/// What goes into a machine configuration.
#[derive(Debug, Clone)]
pub struct MachineConfigInput {
    /// Hostname: the machine id (token audience, shown by Version).
    pub hostname: String,
    /// Cluster id (also a token audience for keys bound to it).
    pub cluster: Option<String>,
    /// CA certificate, PEM.
    pub ca_pem: String,
    /// Server certificate, PEM.
    pub cert_pem: String,
    /// Server key, PEM.
    pub key_pem: String,
    /// Trusted token keys.
    pub token_keys: Vec<TokenKeyEntry>,
}

/// Why a machine configuration could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum MachineConfigError {
    /// A patch does not parse or does not apply.
    #[error("config patch: {0}")]
    Patch(#[from] basalt_config::PatchError),
    /// The result is not valid (every problem listed).
    #[error("the generated configuration is invalid:\n{0}")]
    Invalid(basalt_config::Validation),
    /// The result could not be written as YAML.
    #[error("encoding the configuration: {0}")]
    Encode(#[from] basalt_config::EncodeError),
}

/// The machine configuration YAML: the generated `MachineConfig`, then `patches` in
/// order; the result must validate.
pub fn render_machine_config(
    input: &MachineConfigInput,
    patches: &[basalt_config::Patch],
) -> Result<String, MachineConfigError> {
    use basalt_config::schema::{ApiConfig, MachineConfig, Secret, TokenKey};
    let machine = MachineConfig {
        hostname: input.hostname.clone(),
        cluster: input.cluster.clone(),
        api: ApiConfig {
            ca: Some(input.ca_pem.clone()),
            certificate: Some(input.cert_pem.clone()),
            key: Some(Secret::new(input.key_pem.clone())),
            trusted_token_keys: input
                .token_keys
                .iter()
                .map(|k| TokenKey {
                    id: k.id.clone(),
                    public_key: k.public_key.clone(),
                    audience: k.audience.clone().unwrap_or_else(|| input.hostname.clone()),
                })
                .collect(),
            ..ApiConfig::default()
        },
        ..MachineConfig::default()
    };
    let config = basalt_config::Config::new(machine).apply_patches(patches)?;
    let validation = config.validate();
    if !validation.is_ok() {
        return Err(MachineConfigError::Invalid(validation));
    }
    Ok(config.to_yaml()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_key_arguments() {
        let k: TokenKeyEntry = "ci=QUJD@lab".parse().unwrap();
        assert_eq!((k.id.as_str(), k.public_key.as_str()), ("ci", "QUJD"));
        assert_eq!(k.audience.as_deref(), Some("lab"));
        assert_eq!("ci=QUJD".parse::<TokenKeyEntry>().unwrap().audience, None);
        for bad in ["ci", "=QUJD", "ci="] {
            assert!(
                bad.parse::<TokenKeyEntry>()
                    .unwrap_err()
                    .contains("ID=BASE64"),
                "{bad}"
            );
        }
    }

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

    fn input() -> MachineConfigInput {
        let s = crate::secrets::Secrets::generate(&["127.0.0.1".into()], 30).unwrap();
        MachineConfigInput {
            hostname: "node-1".into(),
            cluster: None,
            ca_pem: s.ca.cert_pem.clone(),
            cert_pem: s.server.cert_pem.clone(),
            key_pem: s.server.key_pem.clone(),
            token_keys: vec![],
        }
    }

    #[test]
    fn machine_config_is_valid_basalt_config() {
        let yaml = render_machine_config(&input(), &[]).unwrap();
        let config = basalt_config::Config::from_yaml(&yaml).unwrap();
        assert!(config.validate().is_ok(), "{}", config.validate());
        assert_eq!(config.machine.hostname, "node-1");
        assert!(yaml.contains("kind: MachineConfig"), "{yaml}");
        assert!(yaml.contains("-----BEGIN CERTIFICATE-----"), "{yaml}");
    }

    #[test]
    fn patches_apply_and_invalid_results_are_refused() {
        let merge = basalt_config::Patch::parse(
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nsysctls:\n  vm.swappiness: \"10\"\n",
        )
        .unwrap();
        let json = basalt_config::Patch::parse(
            "- {op: replace, path: /MachineConfig/hostname, value: edge-2}\n",
        )
        .unwrap();
        let yaml = render_machine_config(&input(), &[merge, json]).unwrap();
        let config = basalt_config::Config::from_yaml(&yaml).unwrap();
        assert_eq!(config.machine.hostname, "edge-2");
        assert_eq!(config.machine.sysctls["vm.swappiness"], "10");
        let bad = basalt_config::Patch::parse(
            "- {op: replace, path: /MachineConfig/hostname, value: -bad-}\n",
        )
        .unwrap();
        let err = render_machine_config(&input(), &[bad]).unwrap_err();
        assert!(err.to_string().contains("MachineConfig.hostname"), "{err}");
    }
}
