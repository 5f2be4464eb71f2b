//! Encoding: canonical YAML, the redacted view for logs and audit, and the JSON view that
//! patches operate on.
//!
//! Canonical YAML: documents in [`Kind::ALL`] order, each starting with `apiVersion` and `kind`,
//! fields in schema order, maps sorted by key, empty lists and absent options left out, file
//! modes as octal strings. Decoding the canonical text gives back an equal [`Config`].
//!
//! Redaction replaces secrets with [`REDACTED`]: the API server key, the content of any file
//! that holds a PEM private key, registry passwords, and service environment values whose
//! name suggests a secret.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::schema::{API_VERSION, Config, Kind};

/// What secrets are replaced with in redacted output.
pub const REDACTED: &str = "***";
/// What a secret that differs from the baseline is replaced with in diffs.
pub const REDACTED_CHANGED: &str = "*** (changed)";

/// Why a config could not be encoded. Not expected with the types of this crate; kept as an
/// error rather than a panic because the encoders are fallible in their signatures.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The YAML encoder failed on a document.
    #[error("cannot encode the {kind} document as YAML: {source}")]
    Yaml {
        /// The document being encoded.
        kind: Kind,
        /// The encoder's error.
        source: yaml_serde::Error,
    },
    /// The JSON encoder failed on a document.
    #[error("cannot encode the {kind} document as JSON: {source}")]
    Json {
        /// The document being encoded.
        kind: Kind,
        /// The encoder's error.
        source: serde_json::Error,
    },
}

impl Config {
    /// The canonical multi-document YAML of this config (see the [module docs](crate::encode)).
    pub fn to_yaml(&self) -> Result<String, EncodeError> {
        let mut out = String::new();
        for (i, kind) in self.kinds().into_iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&self.document_yaml(kind)?);
        }
        Ok(out)
    }

    /// The canonical YAML with secrets replaced by [`REDACTED`]: safe for logs and audit.
    pub fn to_redacted_yaml(&self) -> Result<String, EncodeError> {
        self.redacted().to_yaml()
    }

    /// A copy of this config with secrets replaced by [`REDACTED`].
    pub fn redacted(&self) -> Config {
        self.redact(None)
    }

    /// Like [`Config::redacted`], but a secret that differs from the same secret in `baseline`
    /// (or is new) reads [`REDACTED_CHANGED`], so diffs show that it changed without showing it.
    pub fn redacted_against(&self, baseline: &Config) -> Config {
        self.redact(Some(baseline))
    }

    fn redact(&self, baseline: Option<&Config>) -> Config {
        let marker = |changed: bool| if changed { REDACTED_CHANGED } else { REDACTED }.to_owned();
        let mut out = self.clone();
        if let Some(key) = &mut out.machine.api.key {
            let changed = baseline.is_some_and(|b| b.machine.api.key.as_ref() != Some(&*key));
            *key = marker(changed).into();
        }
        for file in &mut out.machine.files {
            if holds_private_key(&file.content) {
                let changed = baseline.is_some_and(|b| {
                    !b.machine
                        .files
                        .iter()
                        .any(|f| f.path == file.path && f.content == file.content)
                });
                file.content = marker(changed);
            }
        }
        if let Some(services) = &mut out.services {
            for registry in &mut services.registries {
                if let Some(auth) = &mut registry.auth {
                    let changed = baseline.is_some_and(|b| {
                        b.services
                            .as_ref()
                            .and_then(|s| s.registries.iter().find(|r| r.host == registry.host))
                            .and_then(|r| r.auth.as_ref())
                            .map(|a| &a.password)
                            != Some(&auth.password)
                    });
                    auth.password = marker(changed).into();
                }
            }
            for service in &mut services.services {
                for (name, value) in &mut service.env {
                    if secret_env_name(name) {
                        let changed = baseline.is_some_and(|b| {
                            b.services
                                .as_ref()
                                .and_then(|s| s.services.iter().find(|s| s.name == service.name))
                                .and_then(|s| s.env.get(name))
                                != Some(&*value)
                        });
                        *value = marker(changed);
                    }
                }
            }
        }
        out
    }

    /// One document of this config as YAML, header first; empty if the document is absent.
    fn document_yaml(&self, kind: Kind) -> Result<String, EncodeError> {
        let yaml = |e| EncodeError::Yaml { kind, source: e };
        let body = match kind {
            Kind::MachineConfig => Some(yaml_serde::to_value(&self.machine)),
            Kind::NetworkConfig => self.network.as_ref().map(yaml_serde::to_value),
            Kind::UpdateConfig => self.update.as_ref().map(yaml_serde::to_value),
            Kind::ServiceConfig => self.services.as_ref().map(yaml_serde::to_value),
        };
        let Some(body) = body else {
            return Ok(String::new());
        };
        let mut document = yaml_serde::Mapping::new();
        document.insert("apiVersion".into(), API_VERSION.into());
        document.insert("kind".into(), kind.as_str().into());
        if let yaml_serde::Value::Mapping(fields) = body.map_err(yaml)? {
            document.extend(fields);
        }
        yaml_serde::to_string(&document).map_err(yaml)
    }

    /// The JSON view that patches operate on: an object with one member per document present,
    /// keyed by kind (`{"MachineConfig": {...}, "NetworkConfig": {...}}`), without the
    /// `apiVersion` and `kind` header fields.
    pub fn to_json(&self) -> Result<Value, EncodeError> {
        fn member<T: Serialize>(
            out: &mut Map<String, Value>,
            kind: Kind,
            body: Option<&T>,
        ) -> Result<(), EncodeError> {
            if let Some(body) = body {
                let value = serde_json::to_value(body)
                    .map_err(|source| EncodeError::Json { kind, source })?;
                out.insert(kind.as_str().to_owned(), value);
            }
            Ok(())
        }
        let mut out = Map::new();
        member(&mut out, Kind::MachineConfig, Some(&self.machine))?;
        member(&mut out, Kind::NetworkConfig, self.network.as_ref())?;
        member(&mut out, Kind::UpdateConfig, self.update.as_ref())?;
        member(&mut out, Kind::ServiceConfig, self.services.as_ref())?;
        Ok(Value::Object(out))
    }
}

/// Whether a file's content contains a PEM private key block.
fn holds_private_key(content: &str) -> bool {
    content.lines().any(|line| {
        let line = line.trim();
        line.starts_with("-----BEGIN ") && line.ends_with("PRIVATE KEY-----")
    })
}

/// Whether an environment variable name suggests that its value is a secret.
fn secret_env_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL"]
        .iter()
        .any(|word| upper.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{
        File, FileMode, MachineConfig, Registry, RegistryAuth, Secret, Service, ServiceConfig,
    };

    fn sample() -> Config {
        let mut machine = MachineConfig {
            hostname: "edge-1".into(),
            ..MachineConfig::default()
        };
        machine.api.key = Some(Secret::new(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ));
        machine.files.push(File {
            path: "/etc/ssl/private/app.key".into(),
            content: "-----BEGIN EC PRIVATE KEY-----\nBBBB\n-----END EC PRIVATE KEY-----\n".into(),
            mode: Some(FileMode(0o600)),
            ..File::default()
        });
        machine.files.push(File {
            path: "/etc/motd".into(),
            content: "hello\n".into(),
            ..File::default()
        });
        let mut service = Service {
            name: "app".into(),
            image: Some("registry.example.com/app:1".into()),
            ..Service::default()
        };
        service.env.insert("API_TOKEN".into(), "t0ps3cret".into());
        service.env.insert("LOG_LEVEL".into(), "debug".into());
        let registry = Registry {
            host: "registry.example.com".into(),
            ca: String::new(),
            auth: Some(RegistryAuth {
                username: "edge".into(),
                password: Secret::new("pu11-s3cret"),
            }),
        };
        Config {
            services: Some(ServiceConfig {
                registries: vec![registry],
                services: vec![service],
                ..ServiceConfig::default()
            }),
            ..Config::new(machine)
        }
    }

    #[test]
    fn canonical_yaml_starts_with_header_and_round_trips() {
        let config = sample();
        let yaml = config.to_yaml().expect("encodes");
        assert!(
            yaml.starts_with(
                "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("\n---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n"));
        let back = Config::from_yaml(&yaml).expect("decodes");
        assert_eq!(back, config);
        assert_eq!(back.to_yaml().expect("encodes"), yaml);
    }

    #[test]
    fn redaction_hides_secrets_only() {
        let yaml = sample().to_redacted_yaml().expect("encodes");
        assert!(!yaml.contains("AAAA") && !yaml.contains("BBBB"), "{yaml}");
        assert!(!yaml.contains("t0ps3cret"), "{yaml}");
        assert!(!yaml.contains("pu11-s3cret"), "{yaml}");
        assert!(
            yaml.contains("username: edge\n    password: '***'"),
            "{yaml}"
        );
        assert!(yaml.contains("key: '***'"), "{yaml}");
        assert!(yaml.contains("API_TOKEN: '***'"), "{yaml}");
        assert!(yaml.contains("LOG_LEVEL: debug"), "{yaml}");
        assert!(yaml.contains("content: |\n    hello\n"), "{yaml}");
    }

    #[test]
    fn redaction_against_baseline_marks_changes() {
        let old = sample();
        let mut new = sample();
        new.machine.api.key = Some(Secret::new("-----BEGIN PRIVATE KEY-----\nCCCC\n"));
        let redacted = new.redacted_against(&old);
        assert_eq!(
            redacted.machine.api.key.as_ref().map(Secret::expose),
            Some(REDACTED_CHANGED)
        );
        assert_eq!(redacted.machine.files[0].content, REDACTED);
        let services = redacted.services.expect("services");
        assert_eq!(services.services[0].env["API_TOKEN"], REDACTED);
        let password = |c: &Config| {
            c.services.as_ref().expect("services").registries[0]
                .auth
                .as_ref()
                .expect("auth")
                .password
                .expose()
                .to_string()
        };
        assert_eq!(password(&new.redacted_against(&old)), REDACTED);
        let mut rotated = sample();
        if let Some(auth) = &mut rotated.services.as_mut().expect("services").registries[0].auth {
            auth.password = Secret::new("n3w-s3cret");
        }
        assert_eq!(password(&rotated.redacted_against(&old)), REDACTED_CHANGED);
    }

    #[test]
    fn json_view_is_keyed_by_kind() {
        let view = sample().to_json().expect("encodes");
        assert_eq!(view["MachineConfig"]["hostname"], "edge-1");
        assert_eq!(view["MachineConfig"]["files"][0]["mode"], "0600");
        assert!(view.get("NetworkConfig").is_none());
        assert!(view["MachineConfig"].get("kind").is_none());
    }
}
