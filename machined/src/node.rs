//! The node: machined's shared state and the operations the API handlers call.
//!
//! Handlers convert protobuf to and from these calls and nothing else; everything a call
//! does to the machine (store a configuration, switch the API to mutual TLS, reboot through
//! [`HostActions`], read the boot state) happens here.
//!
//! Applying a configuration (minimal until `basalt-config` and the controllers land): the
//! API settings are read and checked ([`ApiSettings`], a TLS server configuration is built
//! from them), a diff against the current configuration is computed with private keys
//! redacted, and then, unless it is a dry run, the configuration is stored atomically with
//! history ([`ConfigStore`]) and applied: hostname through [`HostActions`], API switched to
//! (or refreshed in) mutual TLS. Everything that can be applied today is applied live, so
//! AUTO resolves to NO_REBOOT. TRY (auto-revert) is not implemented yet and says so.

use crate::api::ApiControl;
use crate::audit::AuditLog;
use crate::host::HostActions;
use crate::settings::{ApiSettings, SettingsError, redact_private_keys};
use crate::state::{ConfigStore, StateError, StoredConfig};
use basalt_bootloader::{BootStatus, Bootloader, BootloaderError, Slot};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How a configuration takes effect (mirrors `basalt.machine.v1.ApplyMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Live when possible, else with a reboot.
    Auto,
    /// Live only.
    NoReboot,
    /// Store and reboot.
    Reboot,
    /// Store for the next boot.
    Staged,
    /// Live on trial with auto-revert.
    Try,
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration was refused.
    #[error("configuration refused: {0}")]
    InvalidConfig(String),
    /// The request asks for something not implemented yet.
    #[error("{0} not implemented yet")]
    Unimplemented(String),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The bootloader refused or failed.
    #[error("bootloader: {0}")]
    Bootloader(#[from] BootloaderError),
    /// A host action failed.
    #[error(transparent)]
    Host(#[from] crate::host::HostError),
    /// Nothing to return.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    InvalidRequest(String),
}

impl From<SettingsError> for NodeError {
    fn from(e: SettingsError) -> Self {
        NodeError::InvalidConfig(e.to_string())
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// The mode used (AUTO resolved).
    pub mode: ApplyMode,
    /// Validation warnings.
    pub warnings: Vec<String>,
    /// Unified diff from the current configuration, private keys redacted.
    pub diff: String,
    /// Human-readable summary.
    pub message: String,
    /// Stored version, 0 for a dry run or a staged configuration.
    pub version: u64,
    /// Whether a reboot was started.
    pub reboot: bool,
}

/// machined's shared state.
pub struct Node {
    /// Whether machined runs in dev mode (unprivileged, host actions recorded).
    pub dev: bool,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The configuration store.
    pub config: ConfigStore,
    /// What machined does to the host.
    pub host: Arc<dyn HostActions>,
    /// The boot slot backend.
    pub boot: Mutex<Box<dyn Bootloader + Send>>,
    /// A name for the boot backend, e.g. "memory (dev mode)".
    pub boot_backend: String,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// The API mode switch.
    pub api: Arc<ApiControl>,
    /// System statistics.
    pub observer: crate::observe::Observer,
    /// The upgrade engine, set by `main.rs` when the node's slot devices are known.
    pub upgrade: std::sync::OnceLock<Arc<crate::upgrade::UpgradeEngine>>,
    /// The machine event bus (Events RPC).
    pub events: Arc<crate::events::EventBus>,
    /// The service supervisor.
    pub services: Arc<crate::services::Supervisor>,
    /// Serialises applies, so two concurrent ones cannot interleave store and switch.
    apply_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("dev", &self.dev)
            .field("state_dir", &self.state_dir)
            .field("api", &self.api)
            .finish_non_exhaustive()
    }
}

/// Everything a [`Node`] is made of.
pub struct NodeParts {
    /// Dev mode.
    pub dev: bool,
    /// State directory.
    pub state_dir: PathBuf,
    /// Configuration store.
    pub config: ConfigStore,
    /// Host actions.
    pub host: Arc<dyn HostActions>,
    /// Boot backend and its name.
    pub boot: (Box<dyn Bootloader + Send>, String),
    /// Audit log.
    pub audit: Arc<AuditLog>,
    /// API mode switch.
    pub api: Arc<ApiControl>,
}

impl Node {
    /// Assembles a node.
    pub fn new(parts: NodeParts) -> Self {
        let events = Arc::new(crate::events::EventBus::default());
        let services = Arc::new(crate::services::Supervisor::new(
            Arc::new(crate::services::OsSpawner),
            events.clone(),
            crate::services::Tuning::default(),
        ));
        Self {
            dev: parts.dev,
            state_dir: parts.state_dir,
            config: parts.config,
            host: parts.host,
            boot: Mutex::new(parts.boot.0),
            boot_backend: parts.boot.1,
            audit: parts.audit,
            api: parts.api,
            observer: crate::observe::Observer::new(),
            upgrade: std::sync::OnceLock::new(),
            events,
            services,
            apply_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Validates, diffs, stores and applies a configuration.
    pub async fn apply_config(
        &self,
        data: &[u8],
        mode: ApplyMode,
        dry_run: bool,
    ) -> Result<ApplyOutcome, NodeError> {
        let text = std::str::from_utf8(data)
            .map_err(|e| NodeError::InvalidConfig(format!("not UTF-8: {e}")))?;
        let (settings, warnings) = ApiSettings::from_yaml(text)?;
        // Building the TLS configuration checks that the key matches the certificate.
        crate::api::tls::mtls_server_config(&settings)
            .map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        let _guard = self.apply_lock.lock().await;
        let current = self.config.current()?;
        let old = current
            .as_ref()
            .map(|c| String::from_utf8_lossy(&c.data).into_owned())
            .unwrap_or_default();
        let diff =
            similar::TextDiff::from_lines(redact_private_keys(&old), redact_private_keys(text))
                .unified_diff()
                .header("current", "new")
                .to_string();
        let resolved = match mode {
            ApplyMode::Auto => ApplyMode::NoReboot,
            ApplyMode::Try => {
                return Err(NodeError::Unimplemented(
                    "APPLY_MODE_TRY (trial with auto-revert)".into(),
                ));
            }
            m => m,
        };
        let mut outcome = ApplyOutcome {
            mode: resolved,
            warnings,
            diff,
            message: String::new(),
            version: 0,
            reboot: false,
        };
        if dry_run {
            outcome.message = "dry run: nothing stored or changed".into();
            return Ok(outcome);
        }
        if resolved == ApplyMode::Staged {
            self.config.stage(data)?;
            outcome.message = "staged: takes effect at the next boot".into();
            return Ok(outcome);
        }
        outcome.version = self.config.store(data)?;
        if let Some(hostname) = &settings.hostname {
            self.host.set_hostname(hostname)?;
        }
        let was_maintenance = self.api.is_maintenance();
        let restarted = self
            .api
            .switch_to_secure(&settings)
            .map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        outcome.message = format!("stored as version {}", outcome.version);
        if was_maintenance {
            outcome
                .message
                .push_str("; maintenance mode ended, the API now requires mutual TLS");
            crate::console(
                &self.state_dir,
                "configuration applied: maintenance mode ended, API switched to mutual TLS",
            );
        } else if restarted {
            outcome
                .message
                .push_str("; API TLS settings changed, listener restarted");
        }
        if resolved == ApplyMode::Reboot {
            self.host.reboot()?;
            outcome.reboot = true;
            outcome.message.push_str("; rebooting");
        }
        Ok(outcome)
    }

    /// The current configuration and the staged one.
    pub fn get_config(&self) -> Result<(StoredConfig, Option<Vec<u8>>), NodeError> {
        let current = self
            .config
            .current()?
            .ok_or_else(|| NodeError::NotFound("no configuration applied yet".into()))?;
        Ok((current, self.config.staged()?))
    }

    /// The A/B boot state.
    pub fn boot_status(&self) -> Result<BootStatus, NodeError> {
        Ok(self
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .status()?)
    }

    /// Switches the next boot to the other slot; reboots when asked.
    pub fn rollback(&self, reboot: bool) -> Result<Slot, NodeError> {
        let slot = self
            .boot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .rollback()?;
        self.events.publish(
            crate::events::EventKind::Boot,
            &format!("slot {slot}"),
            format!("rollback: slot {slot} boots next"),
        );
        if reboot {
            self.host.reboot()?;
        }
        Ok(slot)
    }
}
