//! Which stored configuration machined starts with. Maintenance mode (anyone on the network
//! may configure the node) is for a node that was never configured, and for nothing else: a
//! stored configuration that cannot be used never reopens it.
//!
//! 1. Nothing stored: [`StartConfig::Unconfigured`], maintenance mode.
//! 2. The current configuration decodes, validates and yields API settings: it is used.
//! 3. Otherwise the newest version in the history that does is used; each version passed
//!    over is named with its problem ([`StartConfig::Usable`]'s `skipped`).
//! 4. None does: [`StartConfig::Locked`]. The API serves mutual TLS with the identity and
//!    API section of the newest version that still has them (its CA, certificate and key,
//!    decoded alone by [`Config::identity_from_yaml`]), so an administrator can apply a
//!    good configuration; nothing else of it is applied. When not even that decodes, the
//!    API is not served at all (a flash with `basalt-flash --config` recovers the node).
//!
//! A start in state 3 or 4 has not applied its current configuration: a trial slot is then
//! not committed (the health check says so) and falls back.

use crate::settings::{ApiSettings, SettingsError, parse_config};
use crate::state::{ConfigStore, StateError};
use basalt_config::Config;

/// What a start has to work with.
pub enum StartConfig {
    /// No configuration was ever stored.
    Unconfigured,
    /// A usable configuration.
    Usable {
        /// Its version.
        version: u64,
        /// The decoded configuration.
        config: Box<Config>,
        /// Its API settings.
        settings: ApiSettings,
        /// Newer versions passed over, each with its problem (`version N: problem`).
        skipped: Vec<String>,
    },
    /// Configurations are stored, none is usable.
    Locked {
        /// The API settings of the newest version whose identity and API section decode.
        settings: Option<ApiSettings>,
        /// Each version's problem (`version N: problem`).
        problems: Vec<String>,
    },
}

/// The resource kind (namespace `config`) that says a stored configuration was passed over
/// or that the node is locked; absent when the current configuration is in force.
pub const CONFIG_LOCK_KIND: &str = "ConfigLock";

impl StartConfig {
    /// What the `ConfigLock` resource says of this start: `None` when the current
    /// configuration (or none) is in force.
    pub fn lock_status(&self) -> Option<serde_json::Value> {
        match self {
            StartConfig::Unconfigured => None,
            StartConfig::Usable { skipped, .. } if skipped.is_empty() => None,
            StartConfig::Usable {
                version, skipped, ..
            } => Some(serde_json::json!({
                "locked": false, "version": version, "passedOver": skipped,
            })),
            StartConfig::Locked { problems, settings } => Some(serde_json::json!({
                "locked": true, "apiServed": settings.is_some(), "problems": problems,
            })),
        }
    }

    /// Whether the current stored configuration is the one in force (true when none is
    /// stored): what the health-checked commit of a trial slot asks.
    pub fn current_applied(&self) -> bool {
        match self {
            StartConfig::Unconfigured => true,
            StartConfig::Usable { skipped, .. } => skipped.is_empty(),
            StartConfig::Locked { .. } => false,
        }
    }
}

fn usable(data: &[u8]) -> Result<(Config, ApiSettings), SettingsError> {
    let (config, mut warnings) = parse_config(data)?;
    let settings = ApiSettings::from_config(&config, &mut warnings)?;
    Ok((config, settings))
}

fn identity(data: &[u8]) -> Option<ApiSettings> {
    let text = std::str::from_utf8(data).ok()?;
    let config = Config::identity_from_yaml(text).ok()?;
    ApiSettings::from_config(&config, &mut Vec::new()).ok()
}

/// Chooses the configuration to start with from `store` (see the module docs).
pub fn choose(store: &ConfigStore) -> Result<StartConfig, StateError> {
    let versions = store.versions_newest_first()?;
    if versions.is_empty() {
        return Ok(StartConfig::Unconfigured);
    }
    let mut problems = Vec::new();
    for (version, data) in &versions {
        match usable(data) {
            Ok((config, settings)) => {
                return Ok(StartConfig::Usable {
                    version: *version,
                    config: Box::new(config),
                    settings,
                    skipped: problems,
                });
            }
            Err(e) => problems.push(format!("version {version}: {e}")),
        }
    }
    let settings = versions.iter().find_map(|(_, data)| identity(data));
    Ok(StartConfig::Locked { settings, problems })
}
