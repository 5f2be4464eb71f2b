//! Spawning and signalling service processes, behind the [`Spawner`] trait.
//!
//! [`OsSpawner`] starts each service in its own process group (so that a stop reaches the
//! helpers a shell script forks), with stdin from /dev/null, a fixed `PATH` plus the
//! service's environment (machined's own environment is not inherited), and stdout and
//! stderr piped: a task per pipe splits them into lines of at most [`MAX_LINE`] bytes.
//! Another task waits for the exit status (tokio waits for this pid only, so the PID 1
//! [`super::reaper`] must leave it alone).

use super::logring::{MAX_LINE, OutputStream};
use super::{ServiceError, ServiceSpec};
use std::process::Stdio;
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

/// Starts and signals processes.
pub trait Spawner: Send + Sync + std::fmt::Debug {
    /// Starts `spec`'s program. Must be called within a tokio runtime.
    fn spawn(&self, spec: &ServiceSpec) -> Result<Spawned, ServiceError>;
    /// Sends `signal` to the process group `pid` of service `name`.
    fn signal(&self, name: &str, pid: u32, signal: StopSignal) -> Result<(), ServiceError>;
}

/// Real processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsSpawner;

async fn read_lines(
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
    fn spawn(&self, spec: &ServiceSpec) -> Result<Spawned, ServiceError> {
        let mut child = tokio::process::Command::new(&spec.command)
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
                command: spec.command.clone(),
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

    fn signal(&self, name: &str, pid: u32, signal: StopSignal) -> Result<(), ServiceError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sh(script: &str) -> ServiceSpec {
        ServiceSpec {
            name: "t".into(),
            command: "/bin/sh".into(),
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
        let p = OsSpawner.spawn(&sh("sleep 30 & wait")).unwrap();
        OsSpawner.signal("t", p.pid, StopSignal::Term).unwrap();
        assert_eq!(p.exit.await.unwrap(), Exit::Signal(15));
        let e = OsSpawner
            .spawn(&ServiceSpec {
                command: "/nonexistent/program".into(),
                ..sh("")
            })
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    }
}
