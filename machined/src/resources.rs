//! The resource store behind `basalt.resource.v1.ResourceService`: typed, versioned
//! resources (namespace, type, id → JSON spec) that controllers publish and the API reads,
//! lists and watches.
//!
//! [`ResourceStore::set_type`] replaces every resource of one type at once: resources whose
//! spec did not change keep their version (no event), changed ones get version + 1 and an
//! `Updated` change, new ones `Created`, missing ones `Destroyed`. Watchers receive the
//! changes through a bounded broadcast channel; one that lags is told to watch again.
//!
//! [`StatusController`] is the controller that publishes what machined observes, once a
//! second: `services/ServiceStatus/<name>` from the supervisor, `machine/Hostname/hostname`,
//! `machine/Sysctl/<key>` and `machine/KernelModule/<name>` for what the running
//! configuration sets (the host's values read through [`HostActions::read`], with the
//! wanted value next to them), and `config/MachineConfig/current` (version, hostname).
//!
//! Limits: network links, addresses and routes are not published yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::host::{HostActions, HostValue};

/// Capacity of the change channel (per watcher backlog).
const CHANGES: usize = 1024;

/// A resource's key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// Namespace, e.g. `services`.
    pub namespace: String,
    /// Type, e.g. `ServiceStatus`.
    pub kind: String,
    /// Id within namespace and type.
    pub id: String,
}

/// One stored resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its key.
    pub key: ResourceKey,
    /// Increases by one on every change.
    pub version: u64,
    /// The controller that writes it.
    pub owner: String,
    /// When it was created.
    pub created: SystemTime,
    /// When it last changed.
    pub updated: SystemTime,
    /// Its content.
    pub spec: Value,
}

/// What happened to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// It appeared.
    Created,
    /// Its spec changed.
    Updated,
    /// It disappeared (the resource is its last state).
    Destroyed,
}

/// One change, as watchers receive it.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// The resource after the change (before it, for `Destroyed`).
    pub resource: Resource,
}

/// The store.
#[derive(Debug)]
pub struct ResourceStore {
    resources: Mutex<BTreeMap<ResourceKey, Resource>>,
    changes: broadcast::Sender<Change>,
}

impl Default for ResourceStore {
    fn default() -> Self {
        Self {
            resources: Mutex::new(BTreeMap::new()),
            changes: broadcast::channel(CHANGES).0,
        }
    }
}

impl ResourceStore {
    /// One resource.
    pub fn get(&self, namespace: &str, kind: &str, id: &str) -> Option<Resource> {
        let key = ResourceKey {
            namespace: namespace.into(),
            kind: kind.into(),
            id: id.into(),
        };
        self.lock().get(&key).cloned()
    }

    /// Every resource of one type, by id.
    pub fn list(&self, namespace: &str, kind: &str) -> Vec<Resource> {
        self.lock()
            .values()
            .filter(|r| r.key.namespace == namespace && r.key.kind == kind)
            .cloned()
            .collect()
    }

    /// The current resources of one type and a receiver of every later change, taken
    /// atomically (no change is missed or seen twice).
    pub fn watch(
        &self,
        namespace: &str,
        kind: &str,
    ) -> (Vec<Resource>, broadcast::Receiver<Change>) {
        let resources = self.lock();
        let rx = self.changes.subscribe();
        let now = resources
            .values()
            .filter(|r| r.key.namespace == namespace && r.key.kind == kind)
            .cloned()
            .collect();
        (now, rx)
    }

    /// Makes the resources of one type exactly `specs` (id → spec), owned by `owner`.
    pub fn set_type(
        &self,
        namespace: &str,
        kind: &str,
        owner: &str,
        specs: BTreeMap<String, Value>,
    ) {
        let mut resources = self.lock();
        let now = SystemTime::now();
        let stale: Vec<ResourceKey> = resources
            .keys()
            .filter(|k| k.namespace == namespace && k.kind == kind && !specs.contains_key(&k.id))
            .cloned()
            .collect();
        for key in stale {
            if let Some(resource) = resources.remove(&key) {
                let _ = self.changes.send(Change {
                    kind: ChangeKind::Destroyed,
                    resource,
                });
            }
        }
        for (id, spec) in specs {
            let key = ResourceKey {
                namespace: namespace.into(),
                kind: kind.into(),
                id,
            };
            let change = match resources.get_mut(&key) {
                Some(existing) if existing.spec == spec => continue,
                Some(existing) => {
                    existing.spec = spec;
                    existing.version += 1;
                    existing.updated = now;
                    Change {
                        kind: ChangeKind::Updated,
                        resource: existing.clone(),
                    }
                }
                None => {
                    let resource = Resource {
                        key: key.clone(),
                        version: 1,
                        owner: owner.into(),
                        created: now,
                        updated: now,
                        spec,
                    };
                    resources.insert(key, resource.clone());
                    Change {
                        kind: ChangeKind::Created,
                        resource,
                    }
                }
            };
            let _ = self.changes.send(change);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<ResourceKey, Resource>> {
        self.resources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Publishes machined's observations as resources.
pub struct StatusController {
    /// The store written.
    pub store: Arc<ResourceStore>,
    /// The host read.
    pub host: Arc<dyn HostActions>,
    /// The supervisor listed.
    pub services: Arc<crate::services::Supervisor>,
    /// The applied configuration.
    pub config: crate::config_watch::ConfigWatch,
}

impl StatusController {
    /// One pass: every published type replaced with what is observed now.
    pub fn publish(&self) {
        const OWNER: &str = "StatusController";
        let services = self
            .services
            .list()
            .into_iter()
            .map(|s| {
                let since = crate::timefmt::rfc3339(s.since);
                (
                    s.name.clone(),
                    json!({"state": s.state.name(), "healthy": s.healthy, "pid": s.pid,
                        "restarts": s.restarts, "since": since, "message": s.message}),
                )
            })
            .collect();
        self.store
            .set_type("services", "ServiceStatus", OWNER, services);

        let applied = self.config.peek();
        let read = |v: HostValue| self.host.read(&v).ok().flatten();
        let mut hostname = BTreeMap::new();
        hostname.insert(
            "hostname".to_string(),
            json!({"hostname": read(HostValue::Hostname).unwrap_or_default(),
                "want": applied.as_ref().map(|a| a.config.machine.hostname.clone())}),
        );
        self.store.set_type("machine", "Hostname", OWNER, hostname);
        let (mut sysctls, mut modules, mut files, mut current) = (
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        if let Some(applied) = &applied {
            let config = &applied.config;
            for (key, want) in &config.machine.sysctls {
                let value = read(HostValue::Sysctl(key.clone()));
                sysctls.insert(key.clone(), json!({"value": value, "want": want}));
            }
            for m in &config.machine.kernel_modules {
                let loaded = read(HostValue::Module(m.name.clone())).is_some();
                modules.insert(
                    m.name.clone(),
                    json!({"loaded": loaded, "parameters": m.parameters}),
                );
            }
            for f in &config.machine.files {
                let content = read(HostValue::File(f.path.clone()));
                let mode = read(HostValue::FileMode(f.path.clone()));
                let append = f.op == basalt_config::schema::FileOp::Append;
                let in_sync = content.as_deref().is_some_and(|c| {
                    if append {
                        c.contains(&f.content)
                    } else {
                        c == f.content
                    }
                });
                files.insert(
                    f.path.clone(),
                    json!({"present": content.is_some(), "mode": mode,
                        "op": if append { "append" } else { "create" },
                        "bytes": content.as_ref().map(String::len), "inSync": in_sync}),
                );
            }
            current.insert(
                "current".to_string(),
                json!({"version": applied.version, "hostname": config.machine.hostname,
                    "cluster": config.machine.cluster}),
            );
        }
        self.store.set_type("machine", "Sysctl", OWNER, sysctls);
        self.store
            .set_type("machine", "KernelModule", OWNER, modules);
        self.store.set_type("machine", "File", OWNER, files);
        self.store
            .set_type("config", "MachineConfig", OWNER, current);
    }

    /// Publishes every `interval`, forever (spawn it).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || me.publish()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(pairs: &[(&str, i64)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect()
    }

    #[test]
    fn set_type_versions_and_reports_changes() {
        let store = ResourceStore::default();
        let (now, mut rx) = store.watch("ns", "T");
        assert!(now.is_empty());
        store.set_type("ns", "T", "test", specs(&[("a", 1), ("b", 2)]));
        store.set_type("ns", "T", "test", specs(&[("a", 1), ("b", 3)]));
        store.set_type("ns", "T", "test", specs(&[("b", 3)]));
        let seen: Vec<(ChangeKind, String, u64)> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|c| (c.kind, c.resource.key.id, c.resource.version))
            .collect();
        assert_eq!(
            seen,
            [
                (ChangeKind::Created, "a".to_string(), 1),
                (ChangeKind::Created, "b".to_string(), 1),
                (ChangeKind::Updated, "b".to_string(), 2),
                (ChangeKind::Destroyed, "a".to_string(), 1),
            ]
        );
        assert_eq!(store.get("ns", "T", "b").unwrap().spec, json!(3));
        assert!(store.get("ns", "T", "a").is_none());
        assert_eq!(store.list("ns", "T").len(), 1);
        assert!(store.list("ns", "U").is_empty());
    }
}
