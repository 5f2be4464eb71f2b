//! A bounded ring of timestamped log lines with live followers.
//!
//! Memory is bounded twice: at most `max_lines` lines and `max_bytes` bytes of text are
//! kept (the oldest lines go first), and a line longer than [`MAX_LINE`] bytes is split.
//! Followers get new lines through a tokio broadcast channel; taking the snapshot and
//! subscribing happen under one lock, so a follower sees neither a gap nor a duplicate.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;
use tokio::sync::broadcast;

/// The longest line kept as one entry, in bytes; longer output is split.
pub const MAX_LINE: usize = 8192;
/// Lines a follower may fall behind before it loses some.
const FOLLOW_BACKLOG: usize = 1024;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// The supervisor or machined itself.
    System,
}

/// One log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it was read.
    pub time: SystemTime,
    /// Its stream.
    pub stream: OutputStream,
    /// The text, without the newline.
    pub text: String,
}

struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

/// The log ring of one service.
pub struct LogRing {
    ring: Mutex<Ring>,
    max_lines: usize,
    max_bytes: usize,
    tx: broadcast::Sender<LogLine>,
}

impl std::fmt::Debug for LogRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRing")
            .field("max_lines", &self.max_lines)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl LogRing {
    /// A ring keeping at most `max_lines` lines and `max_bytes` bytes of text.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                lines: VecDeque::new(),
                bytes: 0,
            }),
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(MAX_LINE),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }

    /// Appends a line (split when longer than [`MAX_LINE`]).
    pub fn push(&self, stream: OutputStream, text: &str) {
        let time = SystemTime::now();
        let mut rest = text;
        loop {
            let mut cut = rest.len().min(MAX_LINE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            self.push_one(LogLine {
                time,
                stream,
                text: piece.to_string(),
            });
            if tail.is_empty() {
                return;
            }
            rest = tail;
        }
    }

    fn push_one(&self, line: LogLine) {
        let mut r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        r.bytes += line.text.len();
        r.lines.push_back(line.clone());
        while r.lines.len() > self.max_lines || r.bytes > self.max_bytes {
            match r.lines.pop_front() {
                Some(old) => r.bytes -= old.text.len(),
                None => break,
            }
        }
        let _ = self.tx.send(line);
    }

    /// The last `tail` lines kept (0: all), oldest first, and a receiver of later lines.
    pub fn subscribe(&self, tail: usize) -> (Vec<LogLine>, broadcast::Receiver<LogLine>) {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let rx = self.tx.subscribe();
        let skip = if tail == 0 {
            0
        } else {
            r.lines.len().saturating_sub(tail)
        };
        (r.lines.iter().skip(skip).cloned().collect(), rx)
    }

    /// Lines and bytes kept now.
    pub fn usage(&self) -> (usize, usize) {
        let r = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (r.lines.len(), r.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_lines_and_bytes() {
        let ring = LogRing::new(3, 1 << 20);
        for i in 0..5 {
            ring.push(OutputStream::Stdout, &format!("line {i}"));
        }
        let (lines, _) = ring.subscribe(0);
        let texts: Vec<_> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["line 2", "line 3", "line 4"]);
        let ring = LogRing::new(1000, MAX_LINE);
        for _ in 0..10 {
            ring.push(OutputStream::Stderr, &"x".repeat(3000));
        }
        let (n, bytes) = ring.usage();
        assert!(bytes <= MAX_LINE && n == 2, "{n} lines, {bytes} bytes");
    }

    #[test]
    fn long_lines_are_split_and_tail_selects() {
        let ring = LogRing::new(100, 1 << 20);
        // 2-byte characters, 1.5 lines' worth: split on a character boundary.
        ring.push(
            OutputStream::Stdout,
            &format!("a{}", "é".repeat(MAX_LINE * 3 / 4)),
        );
        let (lines, _) = ring.subscribe(0);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].text.len(), MAX_LINE - 1);
        assert!(lines.iter().all(|l| l.text.len() <= MAX_LINE));
        assert_eq!(ring.subscribe(1).0.len(), 1);
    }

    #[tokio::test]
    async fn followers_get_new_lines() {
        let ring = LogRing::new(10, 1 << 20);
        ring.push(OutputStream::Stdout, "old");
        let (old, mut rx) = ring.subscribe(0);
        ring.push(OutputStream::Stderr, "new");
        assert_eq!(old.len(), 1);
        let line = rx.recv().await.unwrap();
        assert_eq!(
            (line.stream, line.text.as_str()),
            (OutputStream::Stderr, "new")
        );
    }
}
