//! The parts of the machine configuration the API needs: machine identity, TLS material
//! and trusted token keys.
//!
//! The full configuration schema (strict decoding, validation) belongs to `basalt-config`,
//! which does not expose these settings yet; until it does, machined reads only what it
//! needs, leniently (unknown fields are left to the config crate), from the first YAML
//! document of kind `MachineConfig` (or the only document):
//!
//! ```yaml
//! apiVersion: basalt.dev/v1alpha1
//! kind: MachineConfig
//! machine:
//!   id: node-1            # required: token audience, shown by Version
//!   clusterId: lab        # optional: also accepted as token audience
//!   hostname: node-1      # optional: set through HostActions
//! api:
//!   ca: |                 # PEM: the CA that signs client (and server) certificates
//!   cert: |               # PEM: this node's server certificate (chain)
//!   key: |                # PEM: its private key
//!   tokenKeys:            # optional: Ed25519 keys trusted for bearer tokens
//!     - id: ci            # the JWT `kid`
//!       publicKey: 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=   # base64, raw 32 bytes
//! ```
//!
//! A configuration without the `api` section is refused: applying it would leave the node
//! with no way to authenticate anyone.

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

/// Why a configuration's API settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration is not UTF-8 YAML.
    #[error("machine config: {0}")]
    Yaml(String),
    /// No document of kind `MachineConfig`.
    #[error("machine config: no document of kind MachineConfig")]
    NoMachineConfig,
    /// A required field is missing or empty.
    #[error("machine config: {0} is required")]
    Missing(&'static str),
    /// A PEM field does not hold what it should.
    #[error("machine config: {field}: {message}")]
    Pem {
        /// The field, e.g. `api.cert`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A trusted token key is not a base64 raw Ed25519 public key.
    #[error("machine config: api.tokenKeys[{index}] (id {id:?}): {message}")]
    TokenKey {
        /// Position in the list.
        index: usize,
        /// The key id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
struct Document {
    kind: Option<String>,
    machine: Option<MachineSection>,
    api: Option<ApiSection>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MachineSection {
    id: Option<String>,
    cluster_id: Option<String>,
    hostname: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiSection {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    #[serde(default)]
    token_keys: Vec<TokenKeySection>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TokenKeySection {
    id: String,
    public_key: String,
}

/// An Ed25519 key trusted to sign bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedTokenKey {
    /// Key id, matched against the token header's `kid`.
    pub id: String,
    /// The raw 32-byte public key.
    pub public_key: [u8; 32],
}

/// The API settings of a machine configuration.
pub struct ApiSettings {
    /// The machine id (token audience).
    pub machine_id: String,
    /// The cluster id, also accepted as token audience.
    pub cluster_id: Option<String>,
    /// The hostname to set, if any.
    pub hostname: Option<String>,
    /// CA certificates trusted for client certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// The server certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server private key.
    pub key: PrivateKeyDer<'static>,
    /// Keys trusted to sign bearer tokens.
    pub token_keys: Vec<TrustedTokenKey>,
}

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ApiSettings")
            .field("machine_id", &self.machine_id)
            .field("cluster_id", &self.cluster_id)
            .field("hostname", &self.hostname)
            .field("ca", &self.ca.len())
            .field("cert_chain", &self.cert_chain.len())
            .field("token_keys", &self.token_keys)
            .finish_non_exhaustive()
    }
}

fn required(value: Option<String>, field: &'static str) -> Result<String, SettingsError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or(SettingsError::Missing(field))
}

fn certs(pem: &str, field: &'static str) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SettingsError::Pem {
            field,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(SettingsError::Pem {
            field,
            message: "no CERTIFICATE block".into(),
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|e| SettingsError::Pem {
            field,
            message: format!("not an X.509 certificate: {e}"),
        })?;
    }
    Ok(certs)
}

impl ApiSettings {
    /// Reads the API settings from a machine configuration; also returns warnings.
    pub fn from_yaml(text: &str) -> Result<(Self, Vec<String>), SettingsError> {
        let mut docs = Vec::new();
        for de in yaml_serde::Deserializer::from_str(text) {
            let doc = Document::deserialize(de).map_err(|e| SettingsError::Yaml(e.to_string()))?;
            docs.push(doc);
        }
        let single = docs.len() == 1;
        let doc = docs
            .into_iter()
            .find(|d| single || d.kind.as_deref() == Some("MachineConfig"))
            .ok_or(SettingsError::NoMachineConfig)?;
        let machine = doc.machine.ok_or(SettingsError::Missing("machine"))?;
        let api = doc.api.ok_or(SettingsError::Missing("api"))?;
        let mut warnings = Vec::new();
        let ca = certs(&required(api.ca, "api.ca")?, "api.ca")?;
        let cert_chain = certs(&required(api.cert, "api.cert")?, "api.cert")?;
        let key = PrivateKeyDer::from_pem_slice(required(api.key, "api.key")?.as_bytes()).map_err(
            |e| SettingsError::Pem {
                field: "api.key",
                message: e.to_string(),
            },
        )?;
        if let Some(days) = days_left(&cert_chain[0])
            && days < 30
        {
            warnings.push(format!(
                "api.cert expires in {days} days: renew it before clients are locked out"
            ));
        }
        let mut token_keys = Vec::new();
        for (index, k) in api.token_keys.into_iter().enumerate() {
            let err = |message: String| SettingsError::TokenKey {
                index,
                id: k.id.clone(),
                message,
            };
            if k.id.is_empty() {
                return Err(err("id is empty".into()));
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(k.public_key.trim())
                .map_err(|e| err(format!("publicKey is not base64: {e}")))?;
            let public_key: [u8; 32] = raw
                .try_into()
                .map_err(|v: Vec<u8>| err(format!("publicKey has {} bytes, want 32", v.len())))?;
            if token_keys.iter().any(|t: &TrustedTokenKey| t.id == k.id) {
                return Err(err("duplicate id".into()));
            }
            token_keys.push(TrustedTokenKey {
                id: k.id,
                public_key,
            });
        }
        let settings = ApiSettings {
            machine_id: required(machine.id, "machine.id")?,
            cluster_id: machine.cluster_id.filter(|c| !c.is_empty()),
            hostname: machine.hostname.filter(|h| !h.is_empty()),
            ca,
            cert_chain,
            key,
            token_keys,
        };
        Ok((settings, warnings))
    }
}

fn days_left(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let not_after = parsed.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some((not_after - now) / 86_400)
}

/// Replaces every PEM private key block in `text` by a placeholder, for diffs and logs.
pub fn redact_private_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_key = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if !in_key && trimmed.starts_with("-----BEGIN") && trimmed.contains("PRIVATE KEY") {
            in_key = true;
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(indent);
            out.push_str("<redacted private key>\n");
            continue;
        }
        if in_key {
            if trimmed.starts_with("-----END") {
                in_key = false;
            }
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The `NetworkConfig` document of a configuration, if it has one, decoded strictly with
/// `basalt-config`'s schema (`apiVersion` and `kind` aside).
pub fn network_config(
    text: &str,
) -> Result<Option<basalt_config::schema::NetworkConfig>, SettingsError> {
    for de in yaml_serde::Deserializer::from_str(text) {
        let mut value =
            yaml_serde::Value::deserialize(de).map_err(|e| SettingsError::Yaml(e.to_string()))?;
        let Some(map) = value.as_mapping_mut() else {
            continue;
        };
        if map.get("kind").and_then(|k| k.as_str()) != Some("NetworkConfig") {
            continue;
        }
        map.remove("kind");
        map.remove("apiVersion");
        return yaml_serde::from_value(value)
            .map(Some)
            .map_err(|e| SettingsError::Yaml(format!("NetworkConfig: {e}")));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_api_section_is_refused() {
        let err = ApiSettings::from_yaml("kind: MachineConfig\nmachine:\n  id: n1\n").unwrap_err();
        assert!(err.to_string().contains("api is required"), "{err}");
    }

    #[test]
    fn bad_pem_names_the_field() {
        let yaml = "machine: {id: n1}\napi: {ca: nope, cert: nope, key: nope}\n";
        let err = ApiSettings::from_yaml(yaml).unwrap_err();
        assert!(err.to_string().contains("api.ca"), "{err}");
    }

    #[test]
    fn redacts_private_key_blocks() {
        let text = "a: 1\nkey: |\n  -----BEGIN PRIVATE KEY-----\n  abc\n  -----END PRIVATE KEY-----\nb: 2\n";
        let red = redact_private_keys(text);
        assert_eq!(red, "a: 1\nkey: |\n  <redacted private key>\nb: 2\n");
    }

    #[test]
    fn network_document() {
        let text = "kind: MachineConfig\nmachine: {id: n}\n---\napiVersion: basalt.dev/v1alpha1\nkind: NetworkConfig\ninterfaces:\n  - name: eth0\n    dhcp: true\nnameservers: [9.9.9.9]\n";
        let net = network_config(text).unwrap().unwrap();
        assert_eq!(net.interfaces[0].name, "eth0");
        assert_eq!(net.nameservers, ["9.9.9.9"]);
        assert!(network_config("kind: MachineConfig\n").unwrap().is_none());
        let e = network_config("kind: NetworkConfig\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }
}
