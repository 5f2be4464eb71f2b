//! Service supervision: machined starts, stops and restarts the node's long-running
//! programs.
//!
//! Design:
//!
//! - [`spec`]: what a service is ([`ServiceSpec`]: command, arguments, environment,
//!   dependencies, restart policy), read from the configuration's `ServiceConfig` document
//!   (`basalt-config` schema), and the dependency order (unknown dependencies and cycles are
//!   refused as a whole, before anything starts).
//! - [`process`]: spawning behind the [`Spawner`] trait. [`OsSpawner`] runs real processes
//!   (each in its own process group, stdin from /dev/null, stdout and stderr piped into the
//!   log ring, signals to the whole group); tests may script exits with their own spawner.
//! - [`logring`]: a bounded per-service ring of timestamped output lines (by line count
//!   and bytes; over-long lines are split) with live followers.
//! - [`supervisor`]: the services by name, the requests (start, stop, restart, reconcile
//!   with a new configuration) and an orderly shutdown in reverse dependency order; one
//!   task per service (`task`) runs its lifecycle: wait for the dependencies to be healthy,
//!   start, watch, restart with exponential backoff up to a limit of consecutive failures,
//!   then mark failed; orderly stop (SIGTERM to the group, a timeout, SIGKILL). Every state
//!   change is published on the event bus.
//! - [`reaper`]: as PID 1, reaps orphaned zombies without stealing the exit status of the
//!   supervisor's own children.
//!
//! Container services run through the same supervisor with the container runtime as their
//! spawner ([`crate::containers`]).
//!
//! Limits: a service is healthy once it has kept running for [`Tuning::healthy_after`]
//! (the schema has no health probes yet); program services get no resource limits, users
//! or namespaces (containers do).

pub mod logring;
pub mod process;
pub mod reaper;
pub mod spec;
pub mod supervisor;
mod task;

pub use logring::{LogLine, LogRing, OutputStream};
pub use process::{Exit, OsSpawner, Spawned, Spawner};
pub use spec::{Restart, ServiceSpec, Tuning};
pub use supervisor::{ServiceState, ServiceStatus, Supervisor};

impl ServiceError {
    /// Whether starting again later may succeed without a configuration change (a pull
    /// from a registry that is down, a runtime still starting): retried with backoff, never
    /// given up.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServiceError::Pull { .. } | ServiceError::RuntimeUnavailable { .. }
        )
    }
}

/// A failure of service supervision.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No service has this id.
    #[error("service {0:?} does not exist")]
    NotFound(String),
    /// A service definition is unusable.
    #[error("service {name:?}: {message}")]
    Invalid {
        /// The service.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The `ServiceConfig` document could not be read.
    #[error("ServiceConfig: {0}")]
    Config(String),
    /// Spawning the process failed.
    #[error("service {name:?}: starting {command}: {source}")]
    Spawn {
        /// The service.
        name: String,
        /// The program.
        command: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Signalling the process failed.
    #[error("service {name:?}: signal {signal} to pid {pid}: {source}")]
    Signal {
        /// The service.
        name: String,
        /// The process (group) id.
        pid: u32,
        /// The signal.
        signal: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The image of a container service could not be pulled; retried with backoff whatever
    /// the restart policy (the registry may come back).
    #[error("service {name:?}: pull failed: {message}")]
    Pull {
        /// The service.
        name: String,
        /// What went wrong (the image is named).
        message: String,
    },
    /// The container runtime is not reachable (containerd starting or restarting); retried
    /// with backoff like a failed pull.
    #[error("service {name:?}: container runtime not available: {message}")]
    RuntimeUnavailable {
        /// The service.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// The container runtime refused or failed a step of starting or stopping a container.
    #[error("service {name:?}: {message}")]
    Runtime {
        /// The service.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// A request could not be carried out in time.
    #[error("service {name:?}: {message}")]
    Timeout {
        /// The service.
        name: String,
        /// What did not happen.
        message: String,
    },
}
