//! The supervisor: one task per service runs its lifecycle; requests (start, stop, restart,
//! shutdown) change what the task wants and wait for it to get there.
//!
//! Lifecycle of a service task, driven by its [`Want`] (run or stop, with a generation that
//! a restart bumps):
//!
//! 1. wanted stopped: state Stopped (or Failed after giving up), wait for a change;
//! 2. wanted running: Waiting until every dependency is healthy, then Starting → Running
//!    (healthy after [`Tuning::healthy_after`]);
//! 3. on exit: restart per policy after an exponential backoff (state Backoff), or Failed
//!    once more than [`Tuning::restart_limit`] consecutive runs failed; a run of
//!    [`Tuning::reset_after`] resets the count. A policy that does not restart leaves the
//!    service Stopped (code 0) or Failed.
//! 4. on a stop or restart request: SIGTERM to the process group, SIGKILL after
//!    [`Tuning::stop_timeout`], then Stopped (and for a restart, start again).
//!
//! Every state change is published on the [`EventBus`] and logged in the service's ring.

use super::logring::LogRing;
use super::spec::{ServiceSpec, Tuning, start_order};
use super::task::Task;
use super::{ServiceError, Spawner};
use crate::events::EventBus;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Lines kept per service.
pub const LOG_LINES: usize = 2000;
/// Bytes of text kept per service.
pub const LOG_BYTES: usize = 512 * 1024;

/// Where a service is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Waiting for its dependencies.
    Waiting,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Exited; restarting after a delay.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Stopped on request, or exited with code 0 and not restarted.
    Stopped,
    /// Exited with an error and not restarted (policy, or too many restarts).
    Failed,
}

impl ServiceState {
    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Backoff => "backoff",
            ServiceState::Stopping => "stopping",
            ServiceState::Stopped => "stopped",
            ServiceState::Failed => "failed",
        }
    }
}

/// The observable status of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStatus {
    /// Service id.
    pub name: String,
    /// Lifecycle state.
    pub state: ServiceState,
    /// Running for at least [`Tuning::healthy_after`].
    pub healthy: bool,
    /// Main process id, 0 when not running.
    pub pid: u32,
    /// Restarts since machined started (automatic and requested).
    pub restarts: u32,
    /// When it entered its state.
    pub since: SystemTime,
    /// Detail, e.g. the last exit status.
    pub message: String,
    /// Its last start could not happen for a reason that may go away (its image could not
    /// be pulled, the container runtime is not up): it is retrying, not crashing.
    pub waiting_for_runtime: bool,
    /// The generation of the last run request the task acted on.
    pub(super) generation: u64,
}

/// What a service task should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Want {
    pub(super) run: bool,
    pub(super) generation: u64,
    /// The service was removed from the configuration: the task ends once stopped.
    pub(super) retired: bool,
}

pub(super) struct Entry {
    pub(super) spec: ServiceSpec,
    pub(super) logs: Arc<LogRing>,
    pub(super) want: watch::Sender<Want>,
    pub(super) status: watch::Sender<ServiceStatus>,
}

/// The service supervisor.
pub struct Supervisor {
    spawner: Arc<dyn Spawner>,
    events: Arc<EventBus>,
    tuning: Mutex<Tuning>,
    services: Mutex<BTreeMap<String, Arc<Entry>>>,
    order: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field(
                "order",
                &self.order.lock().map(|o| o.clone()).unwrap_or_default(),
            )
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Supervisor {
    /// A supervisor without services.
    pub fn new(spawner: Arc<dyn Spawner>, events: Arc<EventBus>, tuning: Tuning) -> Self {
        Self {
            spawner,
            events,
            tuning: Mutex::new(tuning),
            services: Mutex::new(BTreeMap::new()),
            order: Mutex::new(Vec::new()),
        }
    }

    /// Changes the timing used by services started from now on.
    pub fn set_tuning(&self, tuning: Tuning) {
        *lock(&self.tuning) = tuning;
    }

    /// Supervises `specs` (which must be new: services already defined are kept as they
    /// are) and starts them, each after its dependencies. Must be called within a tokio
    /// runtime.
    pub fn load(self: &Arc<Self>, specs: Vec<ServiceSpec>) -> Result<(), ServiceError> {
        let mut all: Vec<ServiceSpec> = lock(&self.services)
            .values()
            .map(|e| e.spec.clone())
            .collect();
        all.extend(specs.iter().cloned());
        let order = start_order(&all)?;
        let tuning = *lock(&self.tuning);
        let mut services = lock(&self.services);
        let mut new = Vec::new();
        for spec in specs {
            let status = ServiceStatus {
                name: spec.name.clone(),
                state: ServiceState::Stopped,
                healthy: false,
                pid: 0,
                restarts: 0,
                since: SystemTime::now(),
                message: "not started".into(),
                waiting_for_runtime: false,
                generation: 0,
            };
            let entry = Arc::new(Entry {
                logs: Arc::new(LogRing::new(LOG_LINES, LOG_BYTES)),
                want: watch::Sender::new(Want {
                    run: true,
                    generation: 1,
                    retired: false,
                }),
                status: watch::Sender::new(status),
                spec,
            });
            services.insert(entry.spec.name.clone(), entry.clone());
            new.push(entry);
        }
        // Every entry exists before any task starts: a dependency listed later is found.
        for entry in new {
            let deps: Vec<watch::Receiver<ServiceStatus>> = entry
                .spec
                .depends_on
                .iter()
                .filter_map(|d| services.get(d).map(|e| e.status.subscribe()))
                .collect();
            let task = Task {
                entry,
                deps,
                spawner: self.spawner.clone(),
                events: self.events.clone(),
                tuning,
            };
            tokio::spawn(task.run());
        }
        *lock(&self.order) = order;
        Ok(())
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, ServiceError> {
        lock(&self.services)
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// Every service's status, sorted by id.
    pub fn list(&self) -> Vec<ServiceStatus> {
        lock(&self.services)
            .values()
            .map(|e| e.status.borrow().clone())
            .collect()
    }

    /// One service's status.
    pub fn status(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        Ok(self.entry(name)?.status.borrow().clone())
    }

    /// The log ring of a service.
    pub fn logs(&self, name: &str) -> Result<Arc<LogRing>, ServiceError> {
        Ok(self.entry(name)?.logs.clone())
    }

    /// The services in start order.
    pub fn start_order(&self) -> Vec<String> {
        lock(&self.order).clone()
    }

    fn wait_timeout(&self) -> Duration {
        lock(&self.tuning).stop_timeout + Duration::from_secs(5)
    }

    /// Starts a stopped or failed service (its dependencies are awaited as at boot); waits
    /// until it was started (or failed to start).
    pub async fn start(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        let e = self.entry(name)?;
        let mut generation = 0;
        e.want.send_modify(|w| {
            if !w.run {
                w.run = true;
                w.generation += 1;
            }
            generation = w.generation;
        });
        self.await_started(&e, generation).await
    }

    /// Stops a service (SIGTERM, then SIGKILL after the stop timeout) and waits until it
    /// is stopped.
    pub async fn stop(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        let e = self.entry(name)?;
        e.want.send_modify(|w| w.run = false);
        let mut rx = e.status.subscribe();
        let waited = tokio::time::timeout(
            self.wait_timeout(),
            rx.wait_for(|s| matches!(s.state, ServiceState::Stopped | ServiceState::Failed)),
        )
        .await;
        match waited {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(ServiceError::Timeout {
                name: name.to_string(),
                message: "did not stop in time".into(),
            }),
        }
    }

    /// Stops then starts a service; waits until it was started again.
    pub async fn restart(&self, name: &str) -> Result<ServiceStatus, ServiceError> {
        let e = self.entry(name)?;
        let mut generation = 0;
        e.want.send_modify(|w| {
            w.run = true;
            w.generation += 1;
            generation = w.generation;
        });
        self.await_started(&e, generation).await
    }

    async fn await_started(
        &self,
        e: &Entry,
        generation: u64,
    ) -> Result<ServiceStatus, ServiceError> {
        let mut rx = e.status.subscribe();
        let waited = tokio::time::timeout(
            self.wait_timeout(),
            rx.wait_for(|s| {
                s.generation >= generation
                    && !matches!(
                        s.state,
                        ServiceState::Stopping | ServiceState::Stopped | ServiceState::Starting
                    )
            }),
        )
        .await;
        match waited {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(ServiceError::Timeout {
                name: e.spec.name.clone(),
                message: "was not started in time".into(),
            }),
        }
    }

    /// Makes the supervised services match `specs`: services that are gone or changed (or
    /// depend, directly or not, on one that changed) are stopped in reverse dependency
    /// order and removed, then the new and changed ones are loaded and started. Returns
    /// the names stopped and the names started.
    pub async fn reconcile(
        self: &Arc<Self>,
        specs: Vec<ServiceSpec>,
    ) -> Result<(Vec<String>, Vec<String>), ServiceError> {
        start_order(&specs)?;
        let desired: BTreeMap<String, ServiceSpec> =
            specs.into_iter().map(|s| (s.name.clone(), s)).collect();
        let current: BTreeMap<String, ServiceSpec> = lock(&self.services)
            .iter()
            .map(|(n, e)| (n.clone(), e.spec.clone()))
            .collect();
        let mut replaced: std::collections::BTreeSet<String> = current
            .iter()
            .filter(|(n, spec)| desired.get(*n) != Some(*spec))
            .map(|(n, _)| n.clone())
            .collect();
        // A dependent keeps watching the status of the entry it was started with: replace
        // it too when something it depends on is replaced.
        loop {
            let more: Vec<String> = current
                .iter()
                .filter(|(n, s)| {
                    !replaced.contains(*n) && s.depends_on.iter().any(|d| replaced.contains(d))
                })
                .map(|(n, _)| n.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            replaced.extend(more);
        }
        let mut order = self.start_order();
        order.reverse();
        let mut stopped = Vec::new();
        for name in order.into_iter().filter(|n| replaced.contains(n)) {
            let e = self.entry(&name)?;
            e.want.send_modify(|w| {
                w.run = false;
                w.retired = true;
            });
            let _ = self.stop(&name).await;
            lock(&self.services).remove(&name);
            stopped.push(name);
        }
        let new: Vec<ServiceSpec> = desired
            .into_values()
            .filter(|s| !current.contains_key(&s.name) || replaced.contains(&s.name))
            .collect();
        let started = new.iter().map(|s| s.name.clone()).collect();
        self.load(new)?;
        Ok((stopped, started))
    }

    /// Stops every service in reverse dependency order (dependents before what they depend
    /// on), each with its stop timeout. Returns the services that did not stop.
    pub async fn shutdown(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let mut order = self.start_order();
        order.reverse();
        for name in order {
            let running = self
                .status(&name)
                .map(|s| !matches!(s.state, ServiceState::Stopped | ServiceState::Failed))
                .unwrap_or(false);
            if running && self.stop(&name).await.is_err() {
                failed.push(name);
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::Restart;
    use crate::services::process::{Exit, Spawned, StopSignal};
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::{mpsc, oneshot};

    /// Processes that exit at once with a fixed code; counts spawns.
    #[derive(Debug, Default)]
    struct ExitAtOnce {
        spawned: AtomicU32,
    }

    impl Spawner for ExitAtOnce {
        fn spawn<'a>(
            &'a self,
            _spec: &'a ServiceSpec,
        ) -> crate::services::process::BoxFuture<'a, Result<Spawned, ServiceError>> {
            Box::pin(std::future::ready(self.spawn_now()))
        }
        fn signal<'a>(
            &'a self,
            _: &'a ServiceSpec,
            _: u32,
            _: StopSignal,
        ) -> crate::services::process::BoxFuture<'a, Result<(), ServiceError>> {
            Box::pin(std::future::ready(Ok(())))
        }
    }

    impl ExitAtOnce {
        fn spawn_now(&self) -> Result<Spawned, ServiceError> {
            let n = self.spawned.fetch_add(1, Ordering::SeqCst) + 1;
            let (_out_tx, output) = mpsc::channel(1);
            let (exit_tx, exit) = oneshot::channel();
            let _ = exit_tx.send(Exit::Code(1));
            Ok(Spawned {
                pid: 1000 + n,
                output,
                exit,
            })
        }
    }

    fn spec(name: &str, restart: Restart) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            run: crate::services::spec::Runnable::Program("/bin/fake".into()),
            args: vec![],
            env: BTreeMap::new(),
            depends_on: vec![],
            restart,
        }
    }

    #[tokio::test]
    async fn restarts_with_backoff_then_fails_and_start_tries_again() {
        let spawner = Arc::new(ExitAtOnce::default());
        let events = Arc::new(EventBus::default());
        let tuning = Tuning {
            backoff_base: Duration::from_millis(10),
            restart_limit: 3,
            ..Tuning::default()
        };
        let sup = Arc::new(Supervisor::new(spawner.clone(), events.clone(), tuning));
        sup.load(vec![
            spec("flaky", Restart::Always),
            spec("once", Restart::Never),
        ])
        .unwrap();
        let mut rx = sup.entry("flaky").unwrap().status.subscribe();
        let failed = tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.state == ServiceState::Failed),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert_eq!(failed.restarts, 3);
        assert!(
            failed.message.contains("gave up after 3 restarts"),
            "{failed:?}"
        );
        let delays: Vec<String> = events
            .history()
            .iter()
            .filter(|e| e.subject == "flaky" && e.message.starts_with("backoff"))
            .map(|e| e.message.rsplit(" in ").next().unwrap().to_string())
            .collect();
        assert_eq!(delays, ["10 ms", "20 ms", "40 ms"]);
        // A service that is never restarted fails after one run.
        let once = sup.status("once").unwrap();
        assert_eq!(once.state, ServiceState::Failed, "{once:?}");
        assert_eq!(once.message, "exited with code 1");
        // Start gives it a fresh series of tries.
        let before = spawner.spawned.load(Ordering::SeqCst);
        sup.start("flaky").await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            rx.wait_for(|s| s.state == ServiceState::Failed && s.restarts == 6),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(spawner.spawned.load(Ordering::SeqCst) >= before + 4);
        assert!(matches!(
            sup.stop("nope").await,
            Err(ServiceError::NotFound(_))
        ));
    }
}
