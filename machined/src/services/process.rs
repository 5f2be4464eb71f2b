//! Spawning and signalling service processes, behind the [`Spawner`] trait.
//!
//! [`OsSpawner`] starts each service in its own process group (so that a stop reaches the
//! helpers a shell script forks), with stdin from /dev/null, a fixed `PATH` plus the
//! service's environment (machined's own environment is not inherited), and stdout and
//! stderr piped: a task per pipe splits them into lines of at most [`MAX_LINE`] bytes.
//! Another task waits for the exit status (tokio waits for this pid only, so the PID 1
//! [`super::reaper`] must leave it alone).

use super::logring::{MAX_LINE, OutputStream};
use super::spec::Runnable;
use super::{ServiceError, ServiceSpec};
use std::future::Future;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};

/// `PATH` of every service.
pub const SERVICE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl Exit {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exited with code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (also its process group id).
    pub pid: u32,
    /// Its output, line by line; ends when both pipes are closed.
    pub output: mpsc::Receiver<(OutputStream, String)>,
    /// Its exit status, once it has exited.
    pub exit: oneshot::Receiver<Exit>,
}

/// The signals the supervisor sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM: please stop.
    Term,
    /// SIGKILL: stop now.
    Kill,
}

/// A boxed future, for the object-safe [`Spawner`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts and signals what a service runs.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts `spec`. Must be called within a tokio runtime.
    fn spawn<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<Spawned, ServiceError>>;
    /// Sends `signal` to what runs `spec` (main process `pid`).
    fn signal<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        pid: u32,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), ServiceError>>;
}

/// Real processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsSpawner;

/// Programs through [`OsSpawner`], containers through the container runtime when the node
/// has one.
#[derive(Debug, Default)]
pub struct ByKind {
    /// The container runtime; `None` on an image built without it.
    pub containers: Option<Arc<dyn Spawner>>,
}

impl ByKind {
    fn for_spec(&self, spec: &ServiceSpec) -> Result<&dyn Spawner, ServiceError> {
        match (&spec.run, &self.containers) {
            (Runnable::Program(_), _) => Ok(&OsSpawner),
            (Runnable::Container(_), Some(c)) => Ok(c.as_ref()),
            (Runnable::Container(c), None) => Err(ServiceError::Invalid {
                name: spec.name.clone(),
                message: format!(
                    "image {}: this node has no container runtime (its system image was built \
                     without the container extension)",
                    c.image
                ),
            }),
        }
    }
}

impl Spawner for ByKind {
    fn spawn<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<Spawned, ServiceError>> {
        match self.for_spec(spec) {
            Ok(s) => s.spawn(spec),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }

    fn signal<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        pid: u32,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        match self.for_spec(spec) {
            Ok(s) => s.signal(spec, pid, signal),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Splits what `pipe` delivers into lines of at most [`MAX_LINE`] bytes, sent to `tx` with
/// their stream; ends at end of file or when the receiver is gone.
pub async fn read_lines(
    pipe: impl AsyncRead + Unpin,
    stream: OutputStream,
    tx: mpsc::Sender<(OutputStream, String)>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    while let Ok(buf) = reader.fill_buf().await {
        if buf.is_empty() {
            break;
        }
        let (take, end) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, Some(i + 1)),
            None => (buf.len(), None),
        };
        let room = MAX_LINE - line.len();
        let take = take.min(room);
        line.extend_from_slice(&buf[..take]);
        let consumed = match end {
            Some(e) if take + 1 == e => e,
            _ => take,
        };
        reader.consume(consumed);
        if end.is_some_and(|e| consumed == e) || line.len() >= MAX_LINE {
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            line.clear();
            if tx.send((stream, text)).await.is_err() {
                return;
            }
        }
    }
    if !line.is_empty() {
        let _ = tx
            .send((stream, String::from_utf8_lossy(&line).into_owned()))
            .await;
    }
}

impl Spawner for OsSpawner {
    fn spawn<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<Spawned, ServiceError>> {
        Box::pin(std::future::ready(spawn_program(spec)))
    }

    fn signal<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        pid: u32,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(std::future::ready(signal_group(&spec.name, pid, signal)))
    }
}

fn spawn_program(spec: &ServiceSpec) -> Result<Spawned, ServiceError> {
    let command = spec.target();
    let mut child = tokio::process::Command::new(command)
        .args(&spec.args)
        .env_clear()
        .env("PATH", SERVICE_PATH)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ServiceError::Spawn {
            name: spec.name.clone(),
            command: command.to_string(),
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    let (out_tx, output) = mpsc::channel(256);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(read_lines(stdout, OutputStream::Stdout, out_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(read_lines(stderr, OutputStream::Stderr, out_tx));
    }
    let (exit_tx, exit) = oneshot::channel();
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let status = match child.wait().await {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Code(-1),
            },
            Err(_) => Exit::Code(-1),
        };
        let _ = exit_tx.send(status);
    });
    Ok(Spawned { pid, output, exit })
}

fn signal_group(name: &str, pid: u32, signal: StopSignal) -> Result<(), ServiceError> {
    use rustix::process::{Pid, Signal, kill_process_group};
    let (sig, label) = match signal {
        StopSignal::Term => (Signal::TERM, "SIGTERM"),
        StopSignal::Kill => (Signal::KILL, "SIGKILL"),
    };
    let target = Pid::from_raw(pid as i32).ok_or_else(|| ServiceError::Signal {
        name: name.to_string(),
        pid,
        signal: label,
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    match kill_process_group(target, sig) {
        // Already gone: nothing to stop.
        Err(rustix::io::Errno::SRCH) | Ok(()) => Ok(()),
        Err(e) => Err(ServiceError::Signal {
            name: name.to_string(),
            pid,
            signal: label,
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sh(script: &str) -> ServiceSpec {
        ServiceSpec {
            name: "t".into(),
            run: super::super::spec::Runnable::Program("/bin/sh".into()),
            args: vec!["-c".into(), script.into()],
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            depends_on: vec![],
            restart: super::super::Restart::Never,
        }
    }

    #[tokio::test]
    async fn captures_lines_and_exit_code() {
        let mut p = OsSpawner
            .spawn(&sh("echo $GREETING; echo oops >&2; printf partial; exit 3"))
            .await
            .unwrap();
        assert!(p.pid > 0);
        let mut lines = Vec::new();
        while let Some(l) = p.output.recv().await {
            lines.push(l);
        }
        lines.sort_by_key(|(s, _)| *s == OutputStream::Stderr);
        assert_eq!(
            lines,
            [
                (OutputStream::Stdout, "hello".to_string()),
                (OutputStream::Stdout, "partial".to_string()),
                (OutputStream::Stderr, "oops".to_string())
            ]
        );
        assert_eq!(p.exit.await.unwrap(), Exit::Code(3));
    }

    #[tokio::test]
    async fn signals_reach_the_group() {
        let spec = sh("sleep 30 & wait");
        let p = OsSpawner.spawn(&spec).await.unwrap();
        OsSpawner
            .signal(&spec, p.pid, StopSignal::Term)
            .await
            .unwrap();
        assert_eq!(p.exit.await.unwrap(), Exit::Signal(15));
        let missing = ServiceSpec {
            run: super::super::spec::Runnable::Program("/nonexistent/program".into()),
            ..sh("")
        };
        let e = OsSpawner.spawn(&missing).await.unwrap_err();
        assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    }
}
