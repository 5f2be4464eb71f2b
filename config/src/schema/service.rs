//! The `ServiceConfig` document: the node's workloads, programs on the system image or OCI
//! container images run through containerd, and the registries images come from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::unique_map;

/// The `ServiceConfig` document.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Registries with a CA of their own (a site or lab registry) or credentials. Every
    /// registry is reached over HTTPS; one not listed is trusted through the node's default
    /// CA bundle and pulled from anonymously.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registries: Vec<Registry>,
    /// The services, by unique name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// When images no service uses are removed by themselves.
    #[serde(default, rename = "imageGC", skip_serializing_if = "Option::is_none")]
    pub image_gc: Option<ImageGc>,
}

/// The default of [`ImageGc::high_percent`].
pub const DEFAULT_IMAGE_GC_HIGH_PERCENT: u8 = 85;

/// Removal of unused images when the disk they live on (DATA) fills up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImageGc {
    /// When DATA is at least this full (percent of its blocks in use, 1 to 100), every
    /// image no configured service uses is removed. 100: only when DATA is full.
    pub high_percent: u8,
}

impl ServiceConfig {
    /// The fill level of DATA from which unused images are removed.
    pub fn image_gc_high_percent(&self) -> u8 {
        self.image_gc
            .as_ref()
            .map_or(DEFAULT_IMAGE_GC_HIGH_PERCENT, |g| g.high_percent)
    }
}

/// A registry whose TLS certificate is signed by a CA of its own, or that wants
/// credentials, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registry {
    /// The registry's host as image references name it: `host` or `host:port`
    /// (`docker.io` for Docker Hub).
    pub host: String,
    /// PEM CA certificate(s) that sign the registry's TLS certificate (empty: the node's
    /// default CA bundle).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
    /// Credentials for pulls from this registry, given to containerd only when the
    /// registry asks for them (HTTP Basic or a token service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryAuth>,
}

/// A user name and password (or access token) for a registry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RegistryAuth {
    /// The user name.
    pub username: String,
    /// The password or access token. Secret: redacted in logs, audit and diffs.
    pub password: super::Secret,
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
    /// Arguments passed to the program, or replacing the image's command (its entry point
    /// stays).
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
    /// The node is healthy only while this service runs: a trial boot (after an upgrade)
    /// is committed only once it runs, and falls back when it does not within the trial
    /// deadline. A container retrying its image pull does not hold the commit back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// Names of services that must be running before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Containers only: when the image is pulled.
    #[serde(default, skip_serializing_if = "PullPolicy::is_default")]
    pub pull_policy: PullPolicy,
    /// Containers only: the host's network (the default) or a network namespace of its own
    /// with only a loopback interface.
    #[serde(default, skip_serializing_if = "NetworkMode::is_default")]
    pub network: NetworkMode,
    /// Containers only: named volumes on the DATA partition, bind-mounted into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Containers only: host device nodes the container may use (`/dev/gpiochip0`,
    /// `/dev/i2c-1`, `/dev/video0`, `/dev/ttyUSB0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Containers only: mount the image's root file system read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// Containers only: memory limit, bytes or with a suffix (`64Mi`, `1Gi`, `500M`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Containers only: CPU limit in cores (`0.5`, `2`) or millicores (`500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// Containers only: Linux capabilities added to the small default set (`NET_ADMIN`,
    /// `SYS_TIME`; with or without the `CAP_` prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Containers only: every capability, every device, no masked paths. Only when asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
}

/// A named volume mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// The volume: a lowercase name (a directory of its own on DATA, kept across upgrades).
    pub name: String,
    /// Where it appears in the container (absolute path).
    pub mount_path: String,
    /// Mount it read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
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

/// When an image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PullPolicy {
    /// Only when the node does not have the image (the default).
    #[default]
    IfNotPresent,
    /// Before every start.
    Always,
}

impl PullPolicy {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A container's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NetworkMode {
    /// The host's network namespace (the default).
    #[default]
    Host,
    /// A network namespace of its own (loopback only).
    Isolated,
}

impl NetworkMode {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// The smallest memory limit accepted: runc and the container's first process need this
/// much to start at all.
pub const MIN_MEMORY_BYTES: u64 = 6 << 20;

/// Bytes of a memory quantity: a plain number of bytes, or a number with a binary (`Ki`,
/// `Mi`, `Gi`) or decimal (`K`, `M`, `G`) suffix.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let bad =
        || format!("`{s}` is not a memory size (bytes, or a number with Ki, Mi, Gi, K, M, G)");
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let factor: u64 = match &s[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(factor).ok_or_else(bad)
}

/// Millicores of a CPU quantity: cores (`2`, `0.5`) or millicores (`500m`).
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("`{s}` is not a CPU quantity (cores such as 0.5 or 2, or millicores such as 500m)")
    };
    let millis = if let Some(m) = s.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| bad())?
    } else {
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 3 || (whole.is_empty() && frac.is_empty()) {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_millis: u64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<3}").parse().map_err(|_| bad())?
        };
        whole
            .checked_mul(1000)
            .and_then(|w| w.checked_add(frac_millis))
            .ok_or_else(bad)?
    };
    if millis == 0 {
        return Err(format!("`{s}`: a CPU limit must be more than 0"));
    }
    Ok(millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_policy_is_camel_case() {
        let yaml = "services:\n  - name: web\n    image: nginx:1\n    restart: onFailure\n    dependsOn: [db]\n    pullPolicy: always\n    network: isolated\n";
        let config: ServiceConfig = yaml_serde::from_str(yaml).expect("decodes");
        assert_eq!(config.services[0].restart, RestartPolicy::OnFailure);
        assert_eq!(config.services[0].depends_on, ["db"]);
        assert_eq!(config.services[0].pull_policy, PullPolicy::Always);
        assert_eq!(config.services[0].network, NetworkMode::Isolated);
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_memory("64Mi"), Ok(64 << 20));
        assert_eq!(parse_memory("1G"), Ok(1_000_000_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(
            parse_memory("12XB")
                .unwrap_err()
                .contains("not a memory size")
        );
        assert!(parse_memory("Mi").is_err());
        assert_eq!(parse_cpu("500m"), Ok(500));
        assert_eq!(parse_cpu("1.5"), Ok(1500));
        assert_eq!(parse_cpu("2"), Ok(2000));
        assert_eq!(parse_cpu(".25"), Ok(250));
        assert!(parse_cpu("0").unwrap_err().contains("more than 0"));
        assert!(parse_cpu("0.0001").is_err());
        assert!(parse_cpu("a").is_err());
    }
}
