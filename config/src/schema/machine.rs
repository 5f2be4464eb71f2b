//! The `MachineConfig` document: who the node is and how it is reached and set up.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Secret, unique_map};

/// Default API listen address: every IPv4 and IPv6 address.
pub const DEFAULT_LISTEN_ADDRESS: &str = "::";
/// Default API TCP port.
pub const DEFAULT_API_PORT: u16 = 50000;
/// Prefixes under which [`MachineConfig::files`] may write; the rest of the root filesystem is
/// the read-only system image.
pub const WRITABLE_FILE_PREFIXES: [&str; 2] = ["/etc/", "/var/"];
/// Prefixes inside [`WRITABLE_FILE_PREFIXES`] that belong to machined (its config and state)
/// and may not be written by [`MachineConfig::files`].
pub const RESERVED_FILE_PREFIXES: [&str; 2] = ["/etc/basalt/", "/var/lib/basalt/"];
/// Mode of a file written by the `files` section when `mode` is not given.
pub const DEFAULT_FILE_MODE: FileMode = FileMode(0o644);

/// The `MachineConfig` document (required, exactly one per config).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MachineConfig {
    /// Host name of the node: an RFC 1123 name, one label or a fully qualified name.
    pub hostname: String,
    /// What the node is for; `node` unless set.
    #[serde(default)]
    pub role: Role,
    /// Name of the board this config is written for (as in `boards/`, e.g. `rpi4`). When set,
    /// machined refuses the config on another board, and basalt-flash on another image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board: Option<String>,
    /// Identifier of the cluster or fleet the node belongs to, for grouping in fleet tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// The gRPC API: TLS material, listen address, trusted token keys.
    #[serde(default)]
    pub api: ApiConfig,
    /// Extra kernel command line arguments, one per item (applied on the next boot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_args: Vec<String>,
    /// Kernel parameters set through `/proc/sys`, by dotted name (`net.ipv4.ip_forward`).
    /// Values are strings; YAML numbers and booleans are read as their text.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_map"
    )]
    pub sysctls: BTreeMap<String, String>,
    /// Kernel modules to load at boot, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_modules: Vec<KernelModule>,
    /// Files to write. Only paths under `/etc/` and `/var/` may be written (the root filesystem
    /// is read-only), except `/var/lib/basalt/` and `/etc/basalt/` which belong to machined.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    /// NTP servers in order of preference: host names or IP addresses, each with an optional
    /// port (`host:port`, `[IPv6]:port`; default 123).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time_servers: Vec<String>,
}

/// What a node is for. Basalt nodes are standalone, API-managed machines; the enum leaves room
/// for future roles (a fleet controller, say) without a schema break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Role {
    /// A managed node running workloads: the only role today.
    #[default]
    Node,
}

/// The API server's settings.
///
/// With `ca`, `certificate` and `key` all absent the node stays in maintenance mode (self-signed
/// certificate, only read-only calls and ApplyConfiguration); with all three present it serves
/// mutual TLS. Giving only some of them is an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiConfig {
    /// IP address to listen on; `::` (the default) means every address.
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// TCP port to listen on (default 50000).
    #[serde(default = "default_api_port")]
    pub port: u16,
    /// PEM CA certificate(s) that client certificates must chain to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// PEM server certificate chain, leaf first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// PEM private key of the server certificate (PKCS#8, PKCS#1 or SEC1). Secret: redacted in
    /// logs and diffs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Secret>,
    /// Ed25519 public keys whose signed bearer tokens (JWT, EdDSA) the API accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_token_keys: Vec<TokenKey>,
    /// Limits on bearer tokens: their longest lifetime and the ids revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_policy: Option<TokenPolicy>,
}

/// The default of [`TokenPolicy::max_lifetime_seconds`]: one day.
pub const DEFAULT_TOKEN_MAX_LIFETIME_SECONDS: u64 = 86_400;
/// The largest [`TokenPolicy::max_lifetime_seconds`] accepted: one year.
pub const MAX_TOKEN_MAX_LIFETIME_SECONDS: u64 = 31_536_000;
/// The most ids [`TokenPolicy::revoked_ids`] may list.
pub const MAX_REVOKED_TOKEN_IDS: usize = 1000;

/// Limits on the bearer tokens the API accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenPolicy {
    /// The longest lifetime (`exp` minus `iat`, in seconds) a token may have; a token
    /// issued for longer is refused. Default [`DEFAULT_TOKEN_MAX_LIFETIME_SECONDS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    /// Token ids refused although validly signed: the `jti` claim, or for a token without
    /// one the `sha256:` id the audit log shows for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_ids: Vec<String>,
}

impl ApiConfig {
    /// The longest token lifetime accepted, in seconds.
    pub fn token_max_lifetime_seconds(&self) -> u64 {
        self.token_policy
            .as_ref()
            .and_then(|p| p.max_lifetime_seconds)
            .unwrap_or(DEFAULT_TOKEN_MAX_LIFETIME_SECONDS)
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen_address: default_listen_address(),
            port: DEFAULT_API_PORT,
            ca: None,
            certificate: None,
            key: None,
            trusted_token_keys: Vec::new(),
            token_policy: None,
        }
    }
}

fn default_listen_address() -> String {
    DEFAULT_LISTEN_ADDRESS.to_owned()
}

fn default_api_port() -> u16 {
    DEFAULT_API_PORT
}

/// A public key trusted to sign API bearer tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenKey {
    /// Key identifier, matched against the token's `kid` header; unique in the list.
    pub id: String,
    /// Ed25519 public key: 32 bytes in base64, or a PEM `PUBLIC KEY` block.
    pub public_key: String,
    /// Audience (`aud` claim) that tokens signed with this key must carry.
    pub audience: String,
}

/// A kernel module to load.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KernelModule {
    /// Module name as given to modprobe (`-` and `_` are equivalent there).
    pub name: String,
    /// Module parameters, each `name=value` or a bare `name` for a boolean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
}

/// A file to write at boot and on every config apply.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct File {
    /// Absolute, normalized path under `/etc/` or `/var/` (see [`MachineConfig::files`]).
    pub path: String,
    /// Text content of the file (UTF-8).
    #[serde(default)]
    pub content: String,
    /// Permission bits: an octal string (`"0644"`, `"0o644"`) or an integer (YAML `0o644`).
    /// Defaults to [`DEFAULT_FILE_MODE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<FileMode>,
    /// Whether to create (replace) the file or append to it.
    #[serde(default)]
    pub op: FileOp,
}

/// What to do with a [`File`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FileOp {
    /// Create the file, replacing any existing content.
    #[default]
    Create,
    /// Append the content to the file (created if missing). machined appends once per content
    /// change, not on every apply.
    Append,
}

/// Unix permission bits of a file.
///
/// Decodes from an integer (YAML `0o644` is the integer 420) or from an octal string (`"0644"`,
/// `"644"`, `"0o644"`); encodes as a four-digit octal string (`"0644"`) so the canonical YAML
/// cannot be misread. Note that YAML `0644` (leading zero, no `o`) is a string in YAML 1.2 and is
/// therefore read as octal too, while a bare `644` is the decimal integer 644 (= `0o1204`); the
/// validator warns about that case. Range (at most `0o7777`) is checked by the validator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileMode(pub u32);

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for FileMode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(FileModeVisitor)
    }
}

struct FileModeVisitor;

impl Visitor<'_> for FileModeVisitor {
    type Value = FileMode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a file mode: an octal string such as \"0644\" or an integer")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FileMode, E> {
        u32::try_from(v)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FileMode, E> {
        u32::try_from(v)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FileMode, E> {
        let digits = v.strip_prefix("0o").unwrap_or(v);
        if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(E::invalid_value(de::Unexpected::Str(v), &self));
        }
        u32::from_str_radix(digits, 8)
            .map(FileMode)
            .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(yaml: &str) -> Result<FileMode, yaml_serde::Error> {
        yaml_serde::from_str(yaml)
    }

    #[test]
    fn file_mode_accepts_octal_strings_and_integers() {
        assert_eq!(mode("\"0644\"").ok(), Some(FileMode(0o644)));
        assert_eq!(mode("0644").ok(), Some(FileMode(0o644)));
        assert_eq!(mode("\"0o755\"").ok(), Some(FileMode(0o755)));
        assert_eq!(mode("0o600").ok(), Some(FileMode(0o600)));
        assert_eq!(mode("420").ok(), Some(FileMode(0o644)));
        assert!(mode("\"rw-r--r--\"").is_err());
        assert!(mode("\"0689\"").is_err());
        assert!(mode("-1").is_err());
    }

    #[test]
    fn file_mode_encodes_as_octal_string() {
        assert_eq!(FileMode(0o644).to_string(), "0644");
        assert_eq!(FileMode(0o4755).to_string(), "4755");
        let yaml = yaml_serde::to_string(&FileMode(0o600)).ok();
        assert_eq!(yaml.as_deref(), Some("'0600'\n"));
    }

    #[test]
    fn defaults_fill_missing_fields() {
        let machine: MachineConfig = yaml_serde::from_str("hostname: edge-1\n").expect("decodes");
        assert_eq!(machine.hostname, "edge-1");
        assert_eq!(machine.role, Role::Node);
        assert_eq!(machine.api.port, DEFAULT_API_PORT);
        assert_eq!(machine.api.listen_address, DEFAULT_LISTEN_ADDRESS);
    }

    #[test]
    fn sysctl_values_accept_yaml_scalars_and_reject_duplicates() {
        let machine: Result<MachineConfig, _> =
            yaml_serde::from_str("hostname: a\nsysctls:\n  net.ipv4.ip_forward: 1\n  vm.x: true\n");
        let machine = machine.expect("decodes");
        assert_eq!(machine.sysctls["net.ipv4.ip_forward"], "1");
        assert_eq!(machine.sysctls["vm.x"], "true");
        let dup: Result<MachineConfig, _> =
            yaml_serde::from_str("hostname: a\nsysctls:\n  vm.x: 1\n  vm.x: 2\n");
        let message = dup.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("duplicate key `vm.x`"), "{message}");
    }
}
