//! Console output of the early boot: `[basalt] …` lines on the kernel console.
//!
//! As PID 1 machined's stdout is `/dev/console` (the initramfs ships the node; the kernel
//! opens it for `/init`), which the kernel routes to `console=` (ttyAMA0 on qemu-arm64).
//! Stage lines are printed when a stage has completed, with the time since machined
//! started: `[basalt] stage: <name> (<ms> ms since start)`. Each line is written with one
//! `write` call, so kernel messages do not split it in practice.

use std::io::Write;
use std::time::{Duration, Instant};

/// The prefix of every early-boot console line.
pub const PREFIX: &str = "[basalt]";

/// `[basalt] stage: <name> (<ms> ms since start)`.
pub fn stage_line(name: &str, since_start: Duration) -> String {
    format!(
        "{PREFIX} stage: {name} ({} ms since start)",
        since_start.as_millis()
    )
}

/// Where early-boot lines go, and the clock they are timed against.
pub struct Console {
    start: Instant,
    out: std::sync::Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// Lines to stdout, timed from `start`.
    pub fn stdout(start: Instant) -> Self {
        Self::new(start, Box::new(std::io::stdout()))
    }

    /// Lines to `out`, timed from `start`.
    pub fn new(start: Instant, out: Box<dyn Write + Send>) -> Self {
        Self {
            start,
            out: std::sync::Mutex::new(out),
        }
    }

    /// Time since machined started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Prints one line as is (a failed console write is ignored: there is nowhere else to
    /// report it).
    pub fn line(&self, text: &str) {
        let mut out = match self.out.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = out.write_all(format!("{text}\n").as_bytes());
        let _ = out.flush();
    }

    /// `[basalt] <message>`.
    pub fn info(&self, message: &str) {
        self.line(&format!("{PREFIX} {message}"));
    }

    /// A completed stage.
    pub fn stage(&self, name: &str) {
        self.line(&stage_line(name, self.elapsed()));
    }

    /// `[basalt] FATAL: <error>`.
    pub fn fatal(&self, error: &str) {
        self.line(&format!("{PREFIX} FATAL: {error}"));
    }
}

/// Makes sure file descriptors 0, 1 and 2 are open: when the kernel could not open
/// `/dev/console` for init (an initramfs without the node), they are closed, and every
/// message would be lost. Call after `/dev` is mounted; does nothing when they are open.
pub fn ensure_stdio() {
    use rustix::io::{Errno, fcntl_getfd};
    use std::os::fd::AsFd;
    let closed = |fd: rustix::fd::BorrowedFd<'_>| fcntl_getfd(fd) == Err(Errno::BADF);
    let stdin_closed = closed(std::io::stdin().as_fd());
    let stdout_closed = closed(std::io::stdout().as_fd());
    let stderr_closed = closed(std::io::stderr().as_fd());
    if !(stdin_closed || stdout_closed || stderr_closed) {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    else {
        return;
    };
    if stdin_closed {
        let _ = rustix::stdio::dup2_stdin(&console);
    }
    if stdout_closed {
        let _ = rustix::stdio::dup2_stdout(&console);
    }
    if stderr_closed {
        let _ = rustix::stdio::dup2_stderr(&console);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn line_formats() {
        assert_eq!(
            stage_line("modules", Duration::from_micros(412_900)),
            "[basalt] stage: modules (412 ms since start)"
        );
        let buf = Buf::default();
        let c = Console::new(Instant::now(), Box::new(buf.clone()));
        c.info("hello");
        c.fatal("no slot: missing");
        c.stage("cmdline");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "[basalt] hello");
        assert_eq!(lines[1], "[basalt] FATAL: no slot: missing");
        assert!(lines[2].starts_with("[basalt] stage: cmdline ("), "{text}");
        assert!(lines[2].ends_with(" ms since start)"), "{text}");
    }
}
