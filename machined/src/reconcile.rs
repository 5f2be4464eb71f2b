//! Drift correction: the machine settings of the running configuration (hostname, sysctls,
//! kernel modules, files) are compared with the host at a fixed interval, and every difference is
//! corrected through [`HostActions`] and reported.
//!
//! A round is two steps, like the rest of machined: [`plan`] reads the host and returns the
//! corrections without changing anything (pure with respect to the host), then [`correct`]
//! performs them. [`Reconciler`] runs rounds in the background against the applied
//! configuration it watches (so a TRY trial or its revert is picked up by the next round) and
//! reports each correction as a console line and to a caller-supplied sink (the event bus).
//! A failure that repeats (a module that cannot be loaded) is reported once, not every
//! round.
//!
//! Network links, addresses and routes have their own controller on a node
//! ([`crate::network::controller`]); the clock has [`crate::time_sync`]. Limits: a module
//! loaded with other parameters than the configuration's is not reloaded (unloading a
//! module in use is not safe).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use basalt_config::Config;

use crate::config_watch::ConfigWatch;
use crate::host::{HostActions, HostError, HostValue};

/// The default time between two rounds on a node.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// One difference between the configuration and the host, and how it is corrected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Correction {
    /// The hostname differs.
    Hostname {
        /// What the host has.
        found: String,
        /// What the configuration says.
        want: String,
    },
    /// A sysctl differs (or cannot be read: `found` is `None`).
    Sysctl {
        /// Dotted name.
        key: String,
        /// What the host has.
        found: Option<String>,
        /// What the configuration says.
        want: String,
    },
    /// A module the configuration lists is not loaded.
    Module {
        /// Module name.
        name: String,
        /// Its parameters.
        parameters: Vec<String>,
    },
    /// A file of the configuration is missing, has other content or another mode.
    File {
        /// Its path.
        path: String,
        /// What is wrong, e.g. "missing".
        problem: &'static str,
        /// The content to write.
        content: String,
        /// The mode to set.
        mode: u32,
        /// Append instead of replace.
        append: bool,
    },
}

impl std::fmt::Display for Correction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Correction::Hostname { found, want } => {
                write!(f, "hostname was {found:?}, set to {want:?}")
            }
            Correction::Sysctl { key, found, want } => match found {
                Some(found) => write!(f, "sysctl {key} was {found:?}, set to {want:?}"),
                None => write!(f, "sysctl {key} was unreadable, set to {want:?}"),
            },
            Correction::Module { name, .. } => {
                write!(f, "module {name} was not loaded, loaded it")
            }
            Correction::File { path, problem, .. } => {
                write!(f, "file {path} {problem}, wrote it")
            }
        }
    }
}

impl Correction {
    /// What the correction is about, e.g. `sysctl/vm.swappiness`: an event's subject.
    pub fn subject(&self) -> String {
        match self {
            Correction::Hostname { .. } => "hostname".into(),
            Correction::Sysctl { key, .. } => format!("sysctl/{key}"),
            Correction::Module { name, .. } => format!("module/{name}"),
            Correction::File { path, .. } => format!("file{path}"),
        }
    }
}

/// Each correction is a Config event on the machine's event bus.
impl DriftSink for crate::events::EventBus {
    fn drift(&self, correction: &Correction, result: Result<(), String>) {
        let message = match result {
            Ok(()) => format!("drift corrected: {correction}"),
            Err(e) => format!("drift not corrected: {correction}: {e}"),
        };
        self.publish(
            crate::events::EventKind::Config,
            &correction.subject(),
            message,
        );
    }
}

/// Sysctl values compare by their whitespace-separated fields: the kernel prints
/// multi-value sysctls with tabs (`4096\t87380\t6291456`), configurations with spaces.
fn same_value(found: &str, want: &str) -> bool {
    found.split_whitespace().eq(want.split_whitespace())
}

/// Reads the host and returns what differs from `config`; changes nothing.
pub fn plan(config: &Config, host: &dyn HostActions) -> Result<Vec<Correction>, HostError> {
    let machine = &config.machine;
    let mut out = Vec::new();
    if !machine.hostname.is_empty() {
        let found = host.read(&HostValue::Hostname)?.unwrap_or_default();
        if found != machine.hostname {
            out.push(Correction::Hostname {
                found,
                want: machine.hostname.clone(),
            });
        }
    }
    for (key, want) in &machine.sysctls {
        let found = host.read(&HostValue::Sysctl(key.clone()))?;
        if !found.as_deref().is_some_and(|f| same_value(f, want)) {
            out.push(Correction::Sysctl {
                key: key.clone(),
                found,
                want: want.clone(),
            });
        }
    }
    for module in &machine.kernel_modules {
        if host
            .read(&HostValue::Module(module.name.clone()))?
            .is_none()
        {
            out.push(Correction::Module {
                name: module.name.clone(),
                parameters: module.parameters.clone(),
            });
        }
    }
    for file in &machine.files {
        let append = file.op == basalt_config::schema::FileOp::Append;
        let mode = crate::config_apply::file_mode(file);
        let content = host.read(&HostValue::File(file.path.clone()))?;
        let problem = match content {
            None => Some("was missing"),
            Some(c) if append && !c.contains(&file.content) => Some("lost its appended content"),
            Some(c) if !append && c != file.content => Some("had other content"),
            Some(_) => {
                let found = host.read(&HostValue::FileMode(file.path.clone()))?;
                (!append && found.as_deref() != Some(format!("{mode:04o}").as_str()))
                    .then_some("had another mode")
            }
        };
        if let Some(problem) = problem {
            out.push(Correction::File {
                path: file.path.clone(),
                problem,
                content: file.content.clone(),
                mode,
                append,
            });
        }
    }
    Ok(out)
}

/// Performs `corrections`; returns each with its result.
pub fn correct(
    corrections: Vec<Correction>,
    host: &dyn HostActions,
) -> Vec<(Correction, Result<(), HostError>)> {
    corrections
        .into_iter()
        .map(|c| {
            let result = match &c {
                Correction::Hostname { want, .. } => host.set_hostname(want),
                Correction::Sysctl { key, want, .. } => host.set_sysctl(key, want),
                Correction::Module { name, parameters } => host.load_module(name, parameters),
                Correction::File {
                    path,
                    content,
                    mode,
                    append,
                    ..
                } => host.write_file(path, content, *mode, *append),
            };
            (c, result)
        })
        .collect()
}

/// Where a round's findings go besides the console.
pub trait DriftSink: Send + Sync {
    /// A difference was found and corrected (`Ok`) or could not be (`Err`, message).
    fn drift(&self, correction: &Correction, result: Result<(), String>);
}

/// Runs reconciliation rounds against the applied configuration.
pub struct Reconciler {
    host: Arc<dyn HostActions>,
    config: ConfigWatch,
    state_dir: std::path::PathBuf,
    sink: Option<Arc<dyn DriftSink>>,
    /// Failures already reported, so a persistent one is not repeated every round.
    reported: std::sync::Mutex<BTreeSet<String>>,
}

impl Reconciler {
    /// A reconciler of the applied configuration (`config`) against `host`; console lines
    /// go to `state_dir`'s log.
    pub fn new(
        host: Arc<dyn HostActions>,
        config: ConfigWatch,
        state_dir: &std::path::Path,
        sink: Option<Arc<dyn DriftSink>>,
    ) -> Self {
        Self {
            host,
            config,
            state_dir: state_dir.to_path_buf(),
            sink,
            reported: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// One round: returns the corrections made (failed ones included).
    pub fn round(&self) -> Vec<(Correction, Result<(), HostError>)> {
        let Some(applied) = self.config.peek() else {
            return Vec::new();
        };
        let corrections = match plan(&applied.config, self.host.as_ref()) {
            Ok(c) => c,
            Err(e) => {
                self.report_once(format!("reconcile: reading the host: {e}"));
                return Vec::new();
            }
        };
        let results = correct(corrections, self.host.as_ref());
        for (correction, result) in &results {
            match result {
                Ok(()) => {
                    crate::console(&self.state_dir, &format!("drift corrected: {correction}"));
                    if let Some(sink) = &self.sink {
                        sink.drift(correction, Ok(()));
                    }
                }
                Err(e) => {
                    let message = format!("drift not corrected: {correction}: {e}");
                    if self.report_once(message)
                        && let Some(sink) = &self.sink
                    {
                        sink.drift(correction, Err(e.to_string()));
                    }
                }
            }
        }
        results
    }

    /// Prints `message` unless it was printed before; returns whether it was printed.
    fn report_once(&self, message: String) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        if reported.contains(&message) {
            return false;
        }
        crate::console(&self.state_dir, &message);
        reported.insert(message);
        true
    }

    /// Runs a round every `interval`, forever (spawn it).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate: the start applied everything
        loop {
            ticker.tick().await;
            let me = self.clone();
            // Host reads and writes are blocking file and syscall work.
            let _ = tokio::task::spawn_blocking(move || me.round()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{DEV_STATE_FILE, DevHost, DevHostState};

    const CONFIG: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n\
        sysctls:\n  vm.swappiness: \"10\"\n  net.ipv4.tcp_rmem: \"4096 87380 6291456\"\n\
        kernelModules:\n  - name: dummy\n\
        files:\n  - path: /etc/app.conf\n    content: \"a=1\\n\"\n";

    fn config() -> Config {
        Config::from_yaml(CONFIG).unwrap()
    }

    #[test]
    fn plan_reads_only_and_finds_every_difference() {
        let dir = tempfile::tempdir().unwrap();
        let host = DevHost::new(dir.path());
        let found = plan(&config(), &host).unwrap();
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(host.recorded().is_empty(), "plan must not act");
        let results = correct(found, &host);
        assert!(results.iter().all(|(_, r)| r.is_ok()));
        assert_eq!(plan(&config(), &host).unwrap(), vec![]);
    }

    #[test]
    fn multi_value_sysctls_compare_by_fields() {
        assert!(same_value("4096\t87380\t6291456", "4096 87380 6291456"));
        assert!(!same_value("4096\t87380", "4096 87380 6291456"));
    }

    #[test]
    fn a_round_corrects_drift_from_outside() {
        let dir = tempfile::tempdir().unwrap();
        let host: Arc<DevHost> = Arc::new(DevHost::new(dir.path()));
        let watch = ConfigWatch::fixed(1, config());
        let r = Reconciler::new(host.clone(), watch, dir.path(), None);
        assert_eq!(r.round().len(), 5);
        assert!(r.round().is_empty());
        // Somebody changes the hostname and a sysctl behind machined's back.
        let mut state: DevHostState = host.state().unwrap();
        state.hostname = "intruder".into();
        state.sysctls.insert("vm.swappiness".into(), "60".into());
        std::fs::write(
            dir.path().join(DEV_STATE_FILE),
            serde_json::to_vec(&state).unwrap(),
        )
        .unwrap();
        // ... and edits a configured file.
        let app = host.dev_root().join("etc/app.conf");
        std::fs::write(&app, "a=2\n").unwrap();
        let fixed: Vec<String> = r.round().iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(
            fixed,
            [
                "hostname was \"intruder\", set to \"edge-1\"",
                "sysctl vm.swappiness was \"60\", set to \"10\"",
                "file /etc/app.conf had other content, wrote it",
            ]
        );
        assert_eq!(std::fs::read_to_string(&app).unwrap(), "a=1\n");
        std::fs::set_permissions(&app, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let fixed: Vec<String> = r.round().iter().map(|(c, _)| c.to_string()).collect();
        assert_eq!(fixed, ["file /etc/app.conf had another mode, wrote it"]);
        assert_eq!(host.state().unwrap().hostname, "edge-1");
    }
}
