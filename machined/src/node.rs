//! The node: machined's shared state and the operations the API handlers call.
//!
//! Handlers convert protobuf to and from these calls and nothing else; everything a call
//! does to the machine (store a configuration, switch the API to mutual TLS, reboot through
//! [`HostActions`], read the boot state) happens here.
//!
//! Applying a configuration: it is decoded strictly and validated by `basalt-config`
//! ([`parse_config`]; any error refuses it, nothing is stored), its API settings are checked
//! by building the TLS server configuration, a diff against the current configuration is
//! computed with private keys redacted, and then, unless it is a dry run, the configuration
//! is stored atomically with history ([`ConfigStore`]) and applied live
//! ([`crate::config_apply`]): hostname, sysctls and kernel modules through [`HostActions`],
//! the API switched to (or refreshed in) mutual TLS. Everything in a configuration is applied
//! live or at the next boot (kernel arguments), so AUTO resolves to NO_REBOOT.
//!
//! TRY applies like NO_REBOOT but on trial: the configuration from before is kept, and
//! unless another apply (any mode but TRY and STAGED, typically the same file again)
//! confirms the trial within its timeout, the previous configuration is stored again as a
//! new version and applied. A reboot before the confirmation ends the trial too: machined
//! reverts at its next start. This is the safe way to change network or API settings on a
//! remote node: a mistake that cuts the operator off undoes itself.

use crate::api::ApiControl;
use crate::audit::AuditLog;
use crate::host::HostActions;
use crate::settings::{ApiSettings, SettingsError, parse_config, redact_private_keys};
use crate::state::{ConfigStore, StateError, StoredConfig};
use basalt_bootloader::{BootStatus, Bootloader, BootloaderError, Slot};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Live on trial: reverted after `timeout` unless confirmed.
    Try {
        /// How long the trial lasts.
        timeout: Duration,
    },
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
    /// The call was authorized by an API listener that has been replaced since (the switch
    /// out of maintenance mode, or new TLS material).
    #[error(
        "the API listener changed while this call was in flight (authorized in generation \
         {accepted_in}, now {now}): reconnect with the node's current credentials"
    )]
    Superseded {
        /// The generation the call was authorized in.
        accepted_in: u64,
        /// The generation now.
        now: u64,
    },
    /// A rollback to a slot that was never written (a fresh disk holds only slot A; its
    /// bootloader may still list B by default).
    #[error("cannot roll back to slot {slot}: {device} holds no system image (never written)")]
    BlankSlot {
        /// The slot.
        slot: Slot,
        /// Its device.
        device: String,
    },
}

impl From<SettingsError> for NodeError {
    fn from(e: SettingsError) -> Self {
        NodeError::InvalidConfig(e.to_string())
    }
}

/// The shortest TRY trial accepted.
pub const MIN_TRY_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest TRY trial accepted.
pub const MAX_TRY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The TRY trial when the request names none.
pub const DEFAULT_TRY_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// The resources controllers publish (ResourceService).
    pub resources: Arc<crate::resources::ResourceStore>,
    /// The service supervisor.
    pub services: Arc<crate::services::Supervisor>,
    /// The container runtime, when the node has one.
    pub containers: Option<Arc<crate::containers::ContainerRuntime>>,
    /// The applied configuration, decoded once, for the controllers to watch.
    pub applied: crate::config_watch::ConfigPublisher,
    /// Serialises applies, so two concurrent ones cannot interleave store and switch.
    pub(crate) apply_lock: tokio::sync::Mutex<()>,
    /// The time the clock cannot be before (bearer tokens are refused while it is).
    pub time_floor: Arc<crate::time_floor::TimeFloor>,
    /// Held by the one image import that may run at a time.
    pub(crate) image_import: crate::node_image_import::ImportSlot,
    /// Bumped by every apply that starts or ends a trial: a trial's revert timer acts only
    /// if the generation is still the one it was started with.
    trial_generation: AtomicU64,
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
    /// Where containerd lives, when the node runs containers.
    pub containers: Option<crate::containers::RuntimePaths>,
}

impl Node {
    /// Assembles a node.
    pub fn new(parts: NodeParts) -> Self {
        let events = Arc::new(crate::events::EventBus::default());
        let containers = parts
            .containers
            .map(|paths| Arc::new(crate::containers::ContainerRuntime::new(paths)));
        let spawner = crate::services::process::ByKind {
            containers: containers
                .clone()
                .map(|c| c as Arc<dyn crate::services::Spawner>),
        };
        let services = Arc::new(crate::services::Supervisor::new(
            Arc::new(spawner),
            events.clone(),
            crate::services::Tuning::default(),
        ));
        let (time_floor, problem) = crate::time_floor::TimeFloor::open(&parts.state_dir);
        if let Some(problem) = problem {
            crate::console(&parts.state_dir, &format!("time floor: {problem}"));
        }
        Self {
            time_floor: Arc::new(time_floor),
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
            resources: Arc::default(),
            services,
            containers,
            applied: crate::config_watch::ConfigPublisher::default(),
            apply_lock: tokio::sync::Mutex::new(()),
            image_import: Arc::default(),
            trial_generation: AtomicU64::new(0),
        }
    }

    /// Validates, diffs, stores and applies a configuration. `accepted_in` is the API
    /// listener generation the call was authorized in (`None` for callers that are not API
    /// calls): a call authorized before the listener switched (the first apply in
    /// maintenance mode ends it, new TLS material restarts it) is refused once the switch
    /// has happened, so that a second unauthenticated apply racing the first one cannot
    /// replace its configuration.
    pub async fn apply_config(
        self: &Arc<Self>,
        data: &[u8],
        mode: ApplyMode,
        dry_run: bool,
        accepted_in: Option<u64>,
    ) -> Result<ApplyOutcome, NodeError> {
        let (config, mut warnings) = parse_config(data)?;
        let settings = ApiSettings::from_config(&config, &mut warnings)?;
        // Building the TLS configuration checks that the key matches the certificate.
        crate::api::tls::mtls_server_config(&settings)
            .map_err(|e| NodeError::InvalidConfig(e.to_string()))?;
        let _guard = self.apply_lock.lock().await;
        if let Some(generation) = accepted_in {
            let now = self.api.current().generation;
            if now != generation {
                return Err(NodeError::Superseded {
                    accepted_in: generation,
                    now,
                });
            }
        }
        let current = self.config.current()?;
        // In maintenance mode the caller is not authenticated: the diff is against nothing,
        // so that a stored configuration (one that could not be used) is never shown.
        let old = match &current {
            Some(c) if !self.api.is_maintenance() => String::from_utf8_lossy(&c.data).into_owned(),
            _ => String::new(),
        };
        let text = String::from_utf8_lossy(data);
        let diff =
            similar::TextDiff::from_lines(redact_private_keys(&old), redact_private_keys(&text))
                .unified_diff()
                .header("current", "new")
                .to_string();
        let resolved = match mode {
            ApplyMode::Auto => ApplyMode::NoReboot,
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
        if let ApplyMode::Try { timeout } = resolved
            && !(MIN_TRY_TIMEOUT..=MAX_TRY_TIMEOUT).contains(&timeout)
        {
            return Err(NodeError::InvalidConfig(format!(
                "try timeout {timeout:?} is out of range ({MIN_TRY_TIMEOUT:?} to {MAX_TRY_TIMEOUT:?})"
            )));
        }
        if matches!(resolved, ApplyMode::Try { .. }) && current.is_none() {
            return Err(NodeError::InvalidConfig(
                "APPLY_MODE_TRY needs a configuration to go back to; apply the first one with AUTO"
                    .into(),
            ));
        }
        if dry_run {
            outcome.message = "dry run: nothing stored or changed".into();
            return Ok(outcome);
        }
        if resolved == ApplyMode::Staged {
            self.config.stage(data)?;
            outcome.message = "staged: takes effect at the next boot".into();
            return Ok(outcome);
        }
        let mut notes = Vec::new();
        if let ApplyMode::Try { timeout } = resolved {
            let previous = current.map(|c| c.data).unwrap_or_default();
            outcome.version = self.config.store_trial(data, &previous)?;
            let generation = self.trial_generation.fetch_add(1, Ordering::SeqCst) + 1;
            let node = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                node.revert_trial(generation, timeout).await;
            });
            notes.push(format!(
                "on trial for {}s: reverted unless confirmed by applying it again",
                timeout.as_secs()
            ));
        } else {
            outcome.version = self.config.store(data)?;
            if self.config.trial()?.is_some() {
                self.config.end_trial()?;
                self.trial_generation.fetch_add(1, Ordering::SeqCst);
                notes.push("configuration trial confirmed".into());
            }
        }
        let was_maintenance = self.api.is_maintenance();
        let live =
            crate::config_apply::apply_live(self.host.as_ref(), &self.api, &config, &settings);
        outcome.warnings.extend(live.warnings);
        if live.api_error.is_none() {
            self.reconcile_services(&config).await;
        }
        self.applied.publish(outcome.version, config);
        // The configuration in force is the one just applied: no longer locked or passed
        // over.
        self.resources.set_type(
            "config",
            crate::start_config::CONFIG_LOCK_KIND,
            "machined",
            Default::default(),
        );
        outcome.message = format!("stored as version {}", outcome.version);
        if was_maintenance {
            notes.push("maintenance mode ended, the API now requires mutual TLS".into());
            crate::console(
                &self.state_dir,
                "configuration applied: maintenance mode ended, API switched to mutual TLS",
            );
        } else if live.api_restarted {
            notes.push("API TLS settings changed, listener restarted".into());
        }
        if resolved == ApplyMode::Reboot {
            self.host.reboot()?;
            outcome.reboot = true;
            notes.push("rebooting".into());
        }
        for note in notes {
            outcome.message.push_str("; ");
            outcome.message.push_str(&note);
        }
        live.api_error.map_or(Ok(outcome), Err)
    }

    /// Ends the trial started as `generation` by restoring the previous configuration, if
    /// no apply confirmed or replaced it meanwhile.
    async fn revert_trial(&self, generation: u64, timeout: Duration) {
        let _guard = self.apply_lock.lock().await;
        if self.trial_generation.load(Ordering::SeqCst) != generation {
            return;
        }
        let message = match self.config.revert_trial() {
            Ok(Some((version, data))) => {
                let applied =
                    crate::config_apply::apply_stored(self.host.as_ref(), &self.api, &data);
                if let Ok(config) = &applied {
                    self.reconcile_services(config).await;
                    self.applied.publish(version, config.clone());
                }
                match applied.map(|_| ()) {
                    Ok(()) => format!(
                        "configuration trial not confirmed within {}s: previous configuration restored as version {version}",
                        timeout.as_secs()
                    ),
                    Err(e) => format!(
                        "configuration trial not confirmed: previous configuration stored as version {version} but not applied: {e}"
                    ),
                }
            }
            Ok(None) => return,
            Err(e) => format!("configuration trial could not be reverted: {e}"),
        };
        crate::console(&self.state_dir, &message);
        self.events
            .publish(crate::events::EventKind::Config, "config", message);
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
    /// Refused when the other slot is blank (checked when the slot devices are known).
    pub fn rollback(&self, reboot: bool) -> Result<Slot, NodeError> {
        let mut boot = self.boot.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(engine), Some(booted)) = (self.upgrade.get(), boot.status()?.booted) {
            let other = booted.other();
            // An unreadable slot is left to the bootloader's own checks.
            if let Ok(Some(device)) = engine.blank_slot(other) {
                return Err(NodeError::BlankSlot {
                    slot: other,
                    device,
                });
            }
        }
        let slot = boot.rollback()?;
        drop(boot);
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
