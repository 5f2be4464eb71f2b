//! The config schema: one Rust type per document kind, and [`Config`], the set of documents.
//!
//! Every type here is a plain serde type with `deny_unknown_fields` and camelCase keys. Values
//! that need checking beyond their YAML type (host names, CIDRs, URLs, PEM blocks, keys) are
//! kept as strings so that a config with several mistakes still decodes and
//! [`Config::validate`](crate::Config::validate) can report all of them at once; decoding only
//! rejects what cannot be represented (unknown fields, wrong YAML types, unknown enum values).
//!
//! A document on disk is a mapping with `apiVersion: basalt.dev/v1alpha1`, `kind: <Kind>` and
//! then the fields of that kind at the top level (no `spec:` wrapper). The header fields are
//! handled by [`crate::decode`] and [`crate::encode`], not by these types.

mod machine;
mod network;
mod service;
mod update;

pub use machine::{
    ApiConfig, DEFAULT_API_PORT, DEFAULT_FILE_MODE, DEFAULT_LISTEN_ADDRESS,
    DEFAULT_TOKEN_MAX_LIFETIME_SECONDS, File, FileMode, FileOp, KernelModule,
    MAX_REVOKED_TOKEN_IDS, MAX_TOKEN_MAX_LIFETIME_SECONDS, MachineConfig, RESERVED_FILE_PREFIXES,
    Role, TokenKey, TokenPolicy, WRITABLE_FILE_PREFIXES,
};
pub use network::{Interface, NetworkConfig, Route, Vlan};
pub use service::{
    DEFAULT_IMAGE_GC_HIGH_PERCENT, ImageGc, MIN_MEMORY_BYTES, NetworkMode, PullPolicy, Registry,
    RegistryAuth, RestartPolicy, Service, ServiceConfig, VolumeMount, parse_cpu, parse_memory,
};
pub use update::{DEFAULT_TRIES, MaintenanceWindow, UpdateConfig, UpdatePolicy, Weekday};

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The only `apiVersion` this crate reads and writes.
pub const API_VERSION: &str = "basalt.dev/v1alpha1";

/// The kinds of config document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// [`MachineConfig`]: identity, API credentials, kernel, files, time. Required.
    MachineConfig,
    /// [`NetworkConfig`]: interfaces, addresses, routes, DNS.
    NetworkConfig,
    /// [`UpdateConfig`]: update channel, policy, window and signing keys.
    UpdateConfig,
    /// [`ServiceConfig`]: workloads (programs and containers) and registries.
    ServiceConfig,
}

impl Kind {
    /// Every kind, in the order documents are written by [`Config::to_yaml`](crate::Config::to_yaml).
    pub const ALL: [Kind; 4] = [
        Kind::MachineConfig,
        Kind::NetworkConfig,
        Kind::UpdateConfig,
        Kind::ServiceConfig,
    ];

    /// The `kind:` value of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::MachineConfig => "MachineConfig",
            Kind::NetworkConfig => "NetworkConfig",
            Kind::UpdateConfig => "UpdateConfig",
            Kind::ServiceConfig => "ServiceConfig",
        }
    }

    /// The kind whose `kind:` value is `name` (case-sensitive).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A whole machine configuration: at most one document of each kind, `MachineConfig` required.
///
/// Decode with [`Config::from_yaml`](crate::Config::from_yaml), check with
/// [`Config::validate`](crate::Config::validate), write with
/// [`Config::to_yaml`](crate::Config::to_yaml).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    /// The `MachineConfig` document.
    pub machine: MachineConfig,
    /// The `NetworkConfig` document; absent means DHCP on every wired interface.
    pub network: Option<NetworkConfig>,
    /// The `UpdateConfig` document; absent means updates only by explicit API upload.
    pub update: Option<UpdateConfig>,
    /// The `ServiceConfig` document (reserved for workloads).
    pub services: Option<ServiceConfig>,
}

impl Config {
    /// A config made of just this `MachineConfig`.
    pub fn new(machine: MachineConfig) -> Self {
        Config {
            machine,
            ..Config::default()
        }
    }

    /// The kinds of the documents present, in canonical order.
    pub fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::MachineConfig];
        if self.network.is_some() {
            kinds.push(Kind::NetworkConfig);
        }
        if self.update.is_some() {
            kinds.push(Kind::UpdateConfig);
        }
        if self.services.is_some() {
            kinds.push(Kind::ServiceConfig);
        }
        kinds
    }
}

/// A secret string (for example a private key PEM).
///
/// It serializes as the plain string, so [`Config::to_yaml`](crate::Config::to_yaml) keeps it,
/// but its `Debug` output is `Secret(***)` so that logging a config by accident does not leak
/// it; use [`Config::to_redacted_yaml`](crate::Config::to_redacted_yaml) for logs and audit.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

/// `deserialize_with` for string maps: like `BTreeMap`'s own impl, but a key given twice is
/// an error instead of the last value silently winning.
pub(crate) fn unique_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    struct UniqueMap;
    impl<'de> Visitor<'de> for UniqueMap {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a mapping of names to string values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(UniqueMap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_name("machineconfig"), None);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let secret = Secret::new("-----BEGIN PRIVATE KEY-----");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "-----BEGIN PRIVATE KEY-----");
    }

    #[test]
    fn kinds_lists_present_documents() {
        let mut config = Config::default();
        assert_eq!(config.kinds(), vec![Kind::MachineConfig]);
        config.update = Some(UpdateConfig::default());
        assert_eq!(
            config.kinds(),
            vec![Kind::MachineConfig, Kind::UpdateConfig]
        );
    }
}
