//! What machined does to the host: the [`HostActions`] trait and its dev implementation.
//!
//! Every change machined makes to the machine it runs on (hostname, sysctls, kernel
//! modules, reboot, power-off) goes through [`HostActions`], so the API, the config logic
//! and their tests run unprivileged on a developer's machine with [`DevHost`], which only
//! records what it was asked to do: in memory and as JSON lines in
//! `<state>/host-actions.jsonl`. The implementation that really acts on a node comes with
//! the early-boot work; until then machined refuses to start without `--dev`.

use serde::{Deserialize, Serialize};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// File name of the dev-mode action record inside the state dir.
pub const DEV_ACTIONS_FILE: &str = "host-actions.jsonl";
/// File name of the dev-mode simulated host state (hostname, sysctls, loaded modules)
/// inside the state dir; tests edit it to simulate drift.
pub const DEV_STATE_FILE: &str = "dev-host.json";
/// Directory inside the state dir that stands in for `/` when dev mode writes the
/// configuration's `files`.
pub const DEV_ROOT_DIR: &str = "dev-root";

/// A value of the host that machined reconciles with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostValue {
    /// The kernel hostname.
    Hostname,
    /// A sysctl by dotted name.
    Sysctl(String),
    /// Whether a kernel module is loaded (read as `Some("loaded")`).
    Module(String),
    /// The content of a file of the configuration's `files` (lossy UTF-8).
    File(String),
    /// The permission bits of such a file, four octal digits (`0644`).
    FileMode(String),
}

/// A failed host action.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The action was refused or failed.
    #[error("host action {action}: {message}")]
    Failed {
        /// The action, e.g. "reboot".
        action: String,
        /// Why it failed.
        message: String,
    },
    /// The dev-mode record could not be written.
    #[error("host action record {path}: {source}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// One thing machined asked the host to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HostAction {
    /// Set the kernel hostname.
    SetHostname {
        /// The new hostname.
        hostname: String,
    },
    /// Write a sysctl.
    SetSysctl {
        /// Key, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
    /// Load a kernel module.
    LoadModule {
        /// Module name.
        name: String,
        /// Module parameters (`name=value`), passed to the module itself, not to the
        /// modules it depends on.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        parameters: Vec<String>,
    },
    /// Write a file of the configuration's `files` (see [`crate::host_files`]).
    WriteFile {
        /// Absolute path on the machine.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Append the content (once) instead of replacing the file.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        append: bool,
        /// The content.
        content: String,
    },
    /// Step the real-time clock by an offset (time sync).
    StepClock {
        /// Nanoseconds to add to the clock (negative: back).
        offset_ns: i64,
    },
    /// Reboot.
    Reboot,
    /// Power off.
    Shutdown,
    /// Remove everything on a partition (Reset).
    Wipe {
        /// The partition label: "STATE" or "DATA".
        partition: String,
    },
}

impl HostAction {
    /// The action's name, e.g. `reboot`.
    pub fn name(&self) -> &'static str {
        match self {
            HostAction::SetHostname { .. } => "set_hostname",
            HostAction::SetSysctl { .. } => "set_sysctl",
            HostAction::LoadModule { .. } => "load_module",
            HostAction::WriteFile { .. } => "write_file",
            HostAction::StepClock { .. } => "step_clock",
            HostAction::Reboot => "reboot",
            HostAction::Shutdown => "shutdown",
            HostAction::Wipe { .. } => "wipe",
        }
    }
}

/// Everything machined does to the host. Implementations must be cheap to call from an
/// async context (the dev one writes one short line; the real one hands long work such as a
/// reboot to a background task).
pub trait HostActions: Send + Sync + std::fmt::Debug {
    /// Performs one action.
    fn perform(&self, action: HostAction) -> Result<(), HostError>;

    /// Whether actions are only recorded (dev mode), not performed.
    fn is_simulated(&self) -> bool;

    /// Reads a value machined reconciles; `None` when it does not exist (no such sysctl,
    /// module not loaded).
    fn read(&self, value: &HostValue) -> Result<Option<String>, HostError>;

    /// Sets the kernel hostname.
    fn set_hostname(&self, hostname: &str) -> Result<(), HostError> {
        self.perform(HostAction::SetHostname {
            hostname: hostname.to_string(),
        })
    }
    /// Writes a sysctl.
    fn set_sysctl(&self, key: &str, value: &str) -> Result<(), HostError> {
        self.perform(HostAction::SetSysctl {
            key: key.to_string(),
            value: value.to_string(),
        })
    }
    /// Loads a kernel module with its parameters.
    fn load_module(&self, name: &str, parameters: &[String]) -> Result<(), HostError> {
        self.perform(HostAction::LoadModule {
            name: name.to_string(),
            parameters: parameters.to_vec(),
        })
    }
    /// Writes (or appends to) a file of the configuration's `files`.
    fn write_file(
        &self,
        path: &str,
        content: &str,
        mode: u32,
        append: bool,
    ) -> Result<(), HostError> {
        self.perform(HostAction::WriteFile {
            path: path.to_string(),
            mode,
            append,
            content: content.to_string(),
        })
    }
    /// The host's real-time clock (dev mode: the simulated clock).
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    /// Steps the real-time clock by `offset_ns`.
    fn step_clock(&self, offset_ns: i64) -> Result<(), HostError> {
        self.perform(HostAction::StepClock { offset_ns })
    }
    /// Starts a reboot.
    fn reboot(&self) -> Result<(), HostError> {
        self.perform(HostAction::Reboot)
    }
    /// Starts a power-off.
    fn shutdown(&self) -> Result<(), HostError> {
        self.perform(HostAction::Shutdown)
    }
    /// Removes everything on partition `STATE` or `DATA`.
    fn wipe(&self, partition: &str) -> Result<(), HostError> {
        self.perform(HostAction::Wipe {
            partition: partition.to_string(),
        })
    }
}

/// One recorded action with its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedAction {
    /// When it was asked for, RFC 3339.
    pub time: String,
    /// What was asked.
    #[serde(flatten)]
    pub action: HostAction,
}

/// The dev-mode host: records actions instead of performing them, and keeps the values
/// they would have set in a small simulated state ([`DEV_STATE_FILE`]) that
/// [`HostActions::read`] answers from.
#[derive(Debug)]
pub struct DevHost {
    path: PathBuf,
    state_path: PathBuf,
    actions: Mutex<Vec<RecordedAction>>,
}

/// The simulated host state of [`DevHost`].
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevHostState {
    /// The hostname last set.
    #[serde(default)]
    pub hostname: String,
    /// Sysctl values by dotted name.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Loaded modules.
    #[serde(default)]
    pub modules: std::collections::BTreeSet<String>,
    /// The simulated clock's offset from the workstation's clock, ns (tests set it to
    /// simulate a node that booted with a wrong clock; a clock step changes it).
    #[serde(default)]
    pub clock_offset_ns: i64,
}

impl DevHost {
    /// A recorder appending to `<state_dir>/host-actions.jsonl`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join(DEV_ACTIONS_FILE),
            state_path: state_dir.join(DEV_STATE_FILE),
            actions: Mutex::new(Vec::new()),
        }
    }

    /// The simulated host state (empty when nothing was set yet).
    pub fn state(&self) -> Result<DevHostState, HostError> {
        match std::fs::read(&self.state_path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| HostError::Failed {
                action: "read".into(),
                message: format!("{}: {e}", self.state_path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DevHostState::default()),
            Err(source) => Err(HostError::Record {
                path: self.state_path.clone(),
                source,
            }),
        }
    }

    fn update_state(&self, action: &HostAction) -> Result<(), HostError> {
        let mut state = self.state()?;
        match action {
            HostAction::SetHostname { hostname } => state.hostname = hostname.clone(),
            HostAction::SetSysctl { key, value } => {
                state.sysctls.insert(key.clone(), value.clone());
            }
            HostAction::LoadModule { name, .. } => {
                state.modules.insert(name.clone());
            }
            HostAction::StepClock { offset_ns } => {
                state.clock_offset_ns = state.clock_offset_ns.saturating_add(*offset_ns);
            }
            _ => return Ok(()),
        }
        let data = serde_json::to_vec_pretty(&state).map_err(|e| HostError::Failed {
            action: action.name().to_string(),
            message: e.to_string(),
        })?;
        crate::state::write_atomic(&self.state_path, &data).map_err(|e| HostError::Failed {
            action: action.name().to_string(),
            message: e.to_string(),
        })
    }

    /// The directory standing in for `/` for the configuration's `files`.
    pub fn dev_root(&self) -> PathBuf {
        self.state_path.with_file_name(DEV_ROOT_DIR)
    }

    /// The actions recorded by this process, oldest first.
    pub fn recorded(&self) -> Vec<RecordedAction> {
        self.actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl HostActions for DevHost {
    fn perform(&self, action: HostAction) -> Result<(), HostError> {
        // Dev mode stands the state directory in for STATE (emptied, then the wipe is
        // recorded in it); it has no DATA: that wipe is only recorded.
        if let HostAction::Wipe { partition } = &action
            && partition == "STATE"
            && let Some(dir) = self.path.parent()
        {
            crate::wipe::empty_dir(dir).map_err(|e| HostError::Failed {
                action: "wipe".into(),
                message: e.to_string(),
            })?;
        }
        if let HostAction::WriteFile {
            path,
            mode,
            append,
            content,
        } = &action
        {
            crate::host_files::write(&self.dev_root(), path, content, *mode, *append).map_err(
                |e| HostError::Failed {
                    action: "write_file".into(),
                    message: e.to_string(),
                },
            )?;
        }
        let record = RecordedAction {
            time: crate::timefmt::rfc3339(SystemTime::now()),
            action,
        };
        let mut line = serde_json::to_vec(&record).map_err(|e| HostError::Failed {
            action: record.action.name().to_string(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let mut actions = self.actions.lock().unwrap_or_else(|e| e.into_inner());
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()))
            .map_err(|source| HostError::Record {
                path: self.path.clone(),
                source,
            })?;
        self.update_state(&record.action)?;
        actions.push(record);
        Ok(())
    }

    fn is_simulated(&self) -> bool {
        true
    }

    fn now(&self) -> SystemTime {
        let offset = self.state().map(|s| s.clock_offset_ns).unwrap_or(0);
        let delta = std::time::Duration::from_nanos(offset.unsigned_abs());
        if offset >= 0 {
            SystemTime::now() + delta
        } else {
            SystemTime::now() - delta
        }
    }

    fn read(&self, value: &HostValue) -> Result<Option<String>, HostError> {
        let state = self.state()?;
        Ok(match value {
            HostValue::Hostname => Some(state.hostname),
            HostValue::Sysctl(key) => state.sysctls.get(key).cloned(),
            HostValue::Module(name) => state.modules.contains(name).then(|| "loaded".into()),
            HostValue::File(path) | HostValue::FileMode(path) => {
                read_file_value(&self.dev_root(), value, path)?
            }
        })
    }
}

/// Reads [`HostValue::File`] or [`HostValue::FileMode`] of `path` under `root`.
pub fn read_file_value(
    root: &Path,
    value: &HostValue,
    path: &str,
) -> Result<Option<String>, HostError> {
    let found = crate::host_files::read(root, path).map_err(|e| HostError::Failed {
        action: "read".into(),
        message: e.to_string(),
    })?;
    Ok(found.map(|(content, mode)| match value {
        HostValue::FileMode(_) => format!("{mode:04o}"),
        _ => content,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let host = DevHost::new(dir.path());
        host.set_hostname("node-1").unwrap();
        host.reboot().unwrap();
        let kinds: Vec<_> = host.recorded().iter().map(|r| r.action.name()).collect();
        assert_eq!(kinds, ["set_hostname", "reboot"]);
        let text = std::fs::read_to_string(dir.path().join(DEV_ACTIONS_FILE)).unwrap();
        let lines: Vec<RecordedAction> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, host.recorded());
        assert!(text.contains(r#""action":"reboot""#), "{text}");
        assert_eq!(
            host.read(&HostValue::Hostname).unwrap().as_deref(),
            Some("node-1")
        );
        host.set_sysctl("vm.swappiness", "10").unwrap();
        assert_eq!(
            host.read(&HostValue::Sysctl("vm.swappiness".into()))
                .unwrap()
                .as_deref(),
            Some("10")
        );
        assert_eq!(host.read(&HostValue::Module("dummy".into())).unwrap(), None);
    }
}
