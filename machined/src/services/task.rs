//! The task that runs one service's lifecycle for the [`Supervisor`](super::Supervisor):
//! wait for the dependencies, start, watch the run, restart after a backoff or give up, and
//! stop on request (SIGTERM, then SIGKILL after the stop timeout). Every state change goes
//! to the service's status, its log ring and the event bus.

use super::logring::OutputStream;
use super::process::{Exit, StopSignal};
use super::spec::Tuning;
use super::supervisor::{Entry, ServiceState, ServiceStatus, Want};
use super::{Restart, ServiceError, Spawner};
use crate::events::{EventBus, EventKind};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// The task running one service.
pub(super) struct Task {
    pub(super) entry: Arc<Entry>,
    pub(super) deps: Vec<watch::Receiver<ServiceStatus>>,
    pub(super) spawner: Arc<dyn Spawner>,
    pub(super) events: Arc<EventBus>,
    pub(super) tuning: Tuning,
}

/// Why a run ended.
enum RunEnd {
    /// It exited (or could not start: then the reason says why) after running this long.
    Exited(Exit, Duration, Option<String>),
    Stopped,
    /// It could not start for a reason that may go away (an image pull failed).
    NotYet(String),
}

impl Task {
    fn set(&self, state: ServiceState, pid: u32, message: String, generation: Option<u64>) {
        let name = &self.entry.spec.name;
        self.entry.status.send_modify(|s| {
            s.state = state;
            s.pid = pid;
            s.healthy = false;
            s.since = SystemTime::now();
            s.message = message.clone();
            // A retry after a pull that failed is still waiting for the runtime until it
            // runs (or exits).
            s.waiting_for_runtime = s.waiting_for_runtime && state == ServiceState::Starting;
            if let Some(g) = generation {
                s.generation = g;
            }
        });
        let text = if message.is_empty() {
            state.name().to_string()
        } else {
            format!("{}: {message}", state.name())
        };
        self.entry.logs.push(OutputStream::System, &text);
        self.events.publish(EventKind::Service, name, text);
    }

    fn want(&self) -> Want {
        *self.entry.want.borrow()
    }

    pub(super) async fn run(self) {
        let mut want_rx = self.entry.want.subscribe();
        let mut failures: u32 = 0;
        let mut retries: u32 = 0;
        loop {
            let want = *want_rx.borrow_and_update();
            if !want.run {
                let state = self.entry.status.borrow().state;
                if !matches!(state, ServiceState::Stopped | ServiceState::Failed) {
                    self.set(ServiceState::Stopped, 0, "stopped on request".into(), None);
                }
                if want.retired {
                    return;
                }
                if want_rx.changed().await.is_err() {
                    return;
                }
                failures = 0;
                continue;
            }
            if !self.wait_for_deps(&mut want_rx, want).await {
                continue;
            }
            match self.run_once(&mut want_rx, want).await {
                RunEnd::NotYet(message) => {
                    retries = retries.saturating_add(1);
                    let delay = self.tuning.backoff(retries);
                    self.set(
                        ServiceState::Backoff,
                        0,
                        format!("{message}; retrying in {} s", delay.as_secs_f64().ceil()),
                        None,
                    );
                    self.entry
                        .status
                        .send_modify(|s| s.waiting_for_runtime = true);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        changed = want_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            retries = 0;
                        }
                    }
                }
                RunEnd::Stopped => {
                    retries = 0;
                    failures = 0;
                    let w = self.want();
                    if w.run {
                        self.entry.status.send_modify(|s| s.restarts += 1);
                    }
                }
                RunEnd::Exited(exit, ran, reason) => {
                    let success = exit.success();
                    let exit = reason.unwrap_or_else(|| exit.to_string());
                    retries = 0;
                    if ran >= self.tuning.reset_after {
                        failures = 0;
                    }
                    let restart = match self.entry.spec.restart {
                        Restart::Always => true,
                        Restart::OnFailure => !success,
                        Restart::Never => false,
                    };
                    if !restart {
                        let state = if success {
                            ServiceState::Stopped
                        } else {
                            ServiceState::Failed
                        };
                        self.set(state, 0, exit, None);
                        self.entry.want.send_modify(|w| w.run = false);
                        let _ = want_rx.borrow_and_update();
                        if want_rx.changed().await.is_err() {
                            return;
                        }
                        continue;
                    }
                    failures += 1;
                    if failures > self.tuning.restart_limit {
                        self.set(
                            ServiceState::Failed,
                            0,
                            format!(
                                "{exit}; gave up after {} restarts in a row",
                                self.tuning.restart_limit
                            ),
                            None,
                        );
                        self.entry.want.send_modify(|w| w.run = false);
                        let _ = want_rx.borrow_and_update();
                        if want_rx.changed().await.is_err() {
                            return;
                        }
                        failures = 0;
                        continue;
                    }
                    let delay = self.tuning.backoff(failures);
                    self.set(
                        ServiceState::Backoff,
                        0,
                        format!(
                            "{exit}; restart {failures}/{} in {} ms",
                            self.tuning.restart_limit,
                            delay.as_millis()
                        ),
                        None,
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {
                            self.entry.status.send_modify(|s| s.restarts += 1);
                        }
                        changed = want_rx.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            failures = 0;
                        }
                    }
                }
            }
        }
    }

    /// Waits until every dependency is healthy; false when the wish changed meanwhile.
    async fn wait_for_deps(&self, want_rx: &mut watch::Receiver<Want>, want: Want) -> bool {
        let mut deps = self.deps.clone();
        for dep in &mut deps {
            if dep.borrow().healthy {
                continue;
            }
            let name = dep.borrow().name.clone();
            self.set(
                ServiceState::Waiting,
                0,
                format!("waiting for {name}"),
                Some(want.generation),
            );
            tokio::select! {
                r = dep.wait_for(|s| s.healthy) => {
                    if r.is_err() {
                        return false;
                    }
                }
                _ = want_rx.changed() => return false,
            }
        }
        true
    }

    /// Starts the program and watches it until it exits or is stopped.
    async fn run_once(&self, want_rx: &mut watch::Receiver<Want>, want: Want) -> RunEnd {
        let name = self.entry.spec.name.clone();
        self.set(
            ServiceState::Starting,
            0,
            self.entry
                .spec
                .container()
                .map(|c| format!("preparing {}", c.image))
                .unwrap_or_default(),
            Some(want.generation),
        );
        let started = Instant::now();
        let spawned = tokio::select! {
            spawned = self.spawner.spawn(&self.entry.spec) => spawned,
            // A start that waits (an image pull) gives way to a stop or a new configuration.
            changed = want_rx.changed() => {
                let now = *want_rx.borrow_and_update();
                if changed.is_err() || !now.run || now.generation != want.generation {
                    self.set(ServiceState::Stopped, 0, "stopped on request".into(), None);
                    return RunEnd::Stopped;
                }
                self.spawner.spawn(&self.entry.spec).await
            }
        };
        let spawned = match spawned {
            Ok(s) => s,
            Err(e) if e.is_retryable() => {
                self.entry.logs.push(OutputStream::System, &e.to_string());
                return RunEnd::NotYet(e.to_string());
            }
            Err(e) => {
                let why = format!("could not start: {e}");
                return RunEnd::Exited(self.note_spawn_error(&e), Duration::ZERO, Some(why));
            }
        };
        let pid = spawned.pid;
        let logs = self.entry.logs.clone();
        let mut output = spawned.output;
        let drained = tokio::spawn(async move {
            while let Some((stream, line)) = output.recv().await {
                logs.push(stream, &line);
            }
        });
        self.set(
            ServiceState::Running,
            pid,
            format!("pid {pid}"),
            Some(want.generation),
        );
        let mut exit = spawned.exit;
        let healthy = tokio::time::sleep(self.tuning.healthy_after);
        tokio::pin!(healthy);
        let mut is_healthy = false;
        let end = loop {
            tokio::select! {
                status = &mut exit => {
                    let status = status.unwrap_or(Exit::Code(-1));
                    break RunEnd::Exited(status, started.elapsed(), None);
                }
                () = &mut healthy, if !is_healthy => {
                    is_healthy = true;
                    self.entry.status.send_modify(|s| s.healthy = true);
                    self.events.publish(EventKind::Service, &name, format!("healthy (pid {pid})"));
                }
                changed = want_rx.changed() => {
                    let now = *want_rx.borrow_and_update();
                    if changed.is_err() || !now.run || now.generation != want.generation {
                        self.stop_process(pid, &mut exit).await;
                        break RunEnd::Stopped;
                    }
                }
            }
        };
        // Keep the output that was written before the exit.
        let _ = tokio::time::timeout(Duration::from_secs(1), drained).await;
        if matches!(end, RunEnd::Stopped) {
            self.set(ServiceState::Stopped, 0, "stopped on request".into(), None);
        }
        end
    }

    fn note_spawn_error(&self, e: &ServiceError) -> Exit {
        self.entry.logs.push(OutputStream::System, &e.to_string());
        Exit::Code(127)
    }

    /// SIGTERM to the group, SIGKILL after the stop timeout.
    async fn stop_process(&self, pid: u32, exit: &mut tokio::sync::oneshot::Receiver<Exit>) {
        self.set(
            ServiceState::Stopping,
            pid,
            format!("SIGTERM to pid {pid}"),
            None,
        );
        let spec = &self.entry.spec;
        if let Err(e) = self.spawner.signal(spec, pid, StopSignal::Term).await {
            self.entry.logs.push(OutputStream::System, &e.to_string());
        }
        if tokio::time::timeout(self.tuning.stop_timeout, &mut *exit)
            .await
            .is_ok()
        {
            return;
        }
        self.entry.logs.push(
            OutputStream::System,
            &format!(
                "still running after {} ms: SIGKILL",
                self.tuning.stop_timeout.as_millis()
            ),
        );
        if let Err(e) = self.spawner.signal(spec, pid, StopSignal::Kill).await {
            self.entry.logs.push(OutputStream::System, &e.to_string());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), exit).await;
    }
}
