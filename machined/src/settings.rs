//! The machine configuration as machined reads it: decoded strictly and validated by
//! `basalt-config` (the one schema shared with basaltctl and basalt-flash), then turned into
//! what the API needs ([`ApiSettings`]: identity, TLS material, trusted token keys).
//!
//! ```yaml
//! apiVersion: basalt.dev/v1alpha1
//! kind: MachineConfig
//! hostname: node-1          # the machine id: token audience, shown by Version
//! cluster: lab              # optional: also accepted as token audience
//! api:
//!   ca: |                   # PEM: the CA that signs client (and server) certificates
//!   certificate: |          # PEM: this node's server certificate (chain)
//!   key: |                  # PEM: its private key
//!   trustedTokenKeys:       # optional: Ed25519 keys trusted for bearer tokens
//!     - id: ci              # the JWT `kid`
//!       publicKey: 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=   # base64, raw 32 bytes
//!       audience: node-1    # the `aud` its tokens must carry
//! ```
//!
//! [`parse_config`] refuses a configuration with any decoding error (named with its line
//! and column) or validation error (all of them at once), so a malformed configuration never
//! reaches the store. A configuration without API certificates is refused too: applying it
//! would leave the node with no way to authenticate anyone.

use basalt_config::Config;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The configuration is not UTF-8.
    #[error("machine config is not UTF-8: {0}")]
    NotUtf8(std::str::Utf8Error),
    /// Strict decoding failed (unknown field, wrong type, bad YAML): line and column named.
    #[error("machine config: {0}")]
    Decode(#[from] basalt_config::DecodeError),
    /// Validation found errors; every one is listed.
    #[error("machine config has {} error(s):\n{}", .0.len(), .0.join("\n"))]
    Invalid(Vec<String>),
    /// A required field is missing or empty.
    #[error("machine config: {0} is required (the API needs a CA, a certificate and its key)")]
    Missing(&'static str),
    /// A PEM field does not hold what it should.
    #[error("machine config: {field}: {message}")]
    Pem {
        /// The field, e.g. `MachineConfig.api.certificate`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A trusted token key is not a usable Ed25519 public key.
    #[error("machine config: MachineConfig.api.trustedTokenKeys[{index}] (id {id:?}): {message}")]
    TokenKey {
        /// Position in the list.
        index: usize,
        /// The key id.
        id: String,
        /// What is wrong.
        message: String,
    },
}

/// Decodes and validates a configuration; returns it with its warnings
/// (`<path>: <message>`). Any error refuses the whole configuration.
pub fn parse_config(data: &[u8]) -> Result<(Config, Vec<String>), SettingsError> {
    let text = std::str::from_utf8(data).map_err(SettingsError::NotUtf8)?;
    let config = Config::from_yaml(text)?;
    let validation = config.validate();
    if !validation.is_ok() {
        return Err(SettingsError::Invalid(
            validation.errors.iter().map(|i| i.to_string()).collect(),
        ));
    }
    let warnings = validation.warnings.iter().map(|i| i.to_string()).collect();
    Ok((config, warnings))
}

/// The configured limits on tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenLimits {
    /// The longest lifetime (`exp - iat`) accepted, in seconds.
    pub max_lifetime_secs: u64,
    /// Token ids refused.
    pub revoked: std::collections::BTreeSet<String>,
}

impl Default for TokenLimits {
    fn default() -> Self {
        TokenLimits {
            max_lifetime_secs: basalt_config::schema::DEFAULT_TOKEN_MAX_LIFETIME_SECONDS,
            revoked: std::collections::BTreeSet::new(),
        }
    }
}

/// An Ed25519 key trusted to sign bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedTokenKey {
    /// Key id, matched against the token header's `kid`.
    pub id: String,
    /// The raw 32-byte public key.
    pub public_key: [u8; 32],
    /// The audience its tokens must carry; `None` accepts the machine's and cluster's ids.
    pub audience: Option<String>,
}

/// The API settings of a machine configuration.
pub struct ApiSettings {
    /// The machine id (the hostname; token audience).
    pub machine_id: String,
    /// The cluster id, also accepted as token audience.
    pub cluster_id: Option<String>,
    /// The hostname to set.
    pub hostname: Option<String>,
    /// CA certificates trusted for client certificates.
    pub ca: Vec<CertificateDer<'static>>,
    /// The server certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server private key.
    pub key: PrivateKeyDer<'static>,
    /// Keys trusted to sign bearer tokens.
    pub token_keys: Vec<TrustedTokenKey>,
    /// The limits on bearer tokens.
    pub token_limits: TokenLimits,
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
            .field("token_limits", &self.token_limits)
            .finish_non_exhaustive()
    }
}

fn required<'a>(value: Option<&'a str>, field: &'static str) -> Result<&'a str, SettingsError> {
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
    /// Reads, decodes and validates a configuration and takes its API settings; also
    /// returns the validation warnings.
    pub fn from_yaml(text: &str) -> Result<(Self, Vec<String>), SettingsError> {
        let (config, mut warnings) = parse_config(text.as_bytes())?;
        let settings = Self::from_config(&config, &mut warnings)?;
        Ok((settings, warnings))
    }

    /// The API settings of a decoded, validated configuration; warnings are appended to
    /// `warnings`.
    pub fn from_config(config: &Config, warnings: &mut Vec<String>) -> Result<Self, SettingsError> {
        let machine = &config.machine;
        let api = &machine.api;
        let ca = certs(
            required(api.ca.as_deref(), "MachineConfig.api.ca")?,
            "MachineConfig.api.ca",
        )?;
        let cert_chain = certs(
            required(api.certificate.as_deref(), "MachineConfig.api.certificate")?,
            "MachineConfig.api.certificate",
        )?;
        let key_pem = required(
            api.key.as_ref().map(|k| k.expose()),
            "MachineConfig.api.key",
        )?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| SettingsError::Pem {
                field: "MachineConfig.api.key",
                message: e.to_string(),
            })?;
        if let Some(days) = days_left(&cert_chain[0])
            && days < 30
        {
            warnings.push(format!(
                "MachineConfig.api.certificate: expires in {days} days: renew it before clients are locked out"
            ));
        }
        let mut token_keys = Vec::new();
        for (index, k) in api.trusted_token_keys.iter().enumerate() {
            let public_key =
                basalt_config::keys::parse_ed25519_public_key(&k.public_key).map_err(|e| {
                    SettingsError::TokenKey {
                        index,
                        id: k.id.clone(),
                        message: e.to_string(),
                    }
                })?;
            token_keys.push(TrustedTokenKey {
                id: k.id.clone(),
                public_key,
                audience: Some(k.audience.clone()).filter(|a| !a.is_empty()),
            });
        }
        Ok(ApiSettings {
            machine_id: machine.hostname.clone(),
            cluster_id: machine.cluster.clone().filter(|c| !c.is_empty()),
            hostname: Some(machine.hostname.clone()).filter(|h| !h.is_empty()),
            ca,
            cert_chain,
            key,
            token_keys,
            token_limits: TokenLimits {
                max_lifetime_secs: api.token_max_lifetime_seconds(),
                revoked: api
                    .token_policy
                    .iter()
                    .flat_map(|p| p.revoked_ids.iter().cloned())
                    .collect(),
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\n";

    #[test]
    fn missing_api_material_is_refused() {
        let err = ApiSettings::from_yaml(&format!("{HEAD}hostname: n1\n")).unwrap_err();
        assert!(
            err.to_string().contains("MachineConfig.api.ca is required"),
            "{err}"
        );
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = parse_config(format!("{HEAD}hostname: n1\nhostnme: typo\n").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hostnme"), "{err}");
        assert!(err.contains("line 4"), "{err}");
    }

    #[test]
    fn every_validation_error_is_listed() {
        let text =
            format!("{HEAD}hostname: -bad-\nsysctls:\n  swappiness: \"1\"\napi:\n  ca: nope\n");
        let err = parse_config(text.as_bytes()).unwrap_err().to_string();
        for needle in [
            "MachineConfig.hostname",
            "MachineConfig.sysctls",
            "MachineConfig.api",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn not_utf8_is_refused() {
        let err = parse_config(&[0xff, 0xfe]).unwrap_err();
        assert!(matches!(err, SettingsError::NotUtf8(_)), "{err}");
    }

    #[test]
    fn redacts_private_key_blocks() {
        let text = "a: 1\nkey: |\n  -----BEGIN PRIVATE KEY-----\n  abc\n  -----END PRIVATE KEY-----\nb: 2\n";
        let red = redact_private_keys(text);
        assert_eq!(red, "a: 1\nkey: |\n  <redacted private key>\nb: 2\n");
    }
}
