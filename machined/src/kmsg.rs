//! The kernel log, read from `/dev/kmsg`.
//!
//! Each `read(2)` of `/dev/kmsg` returns one record: `PRI,SEQ,USEC,FLAGS[,…];TEXT` and
//! then optional continuation lines ` KEY=value` (device properties), which are dropped.
//! `PRI` holds the syslog facility (`PRI >> 3`) and priority (`PRI & 7`). A reader that is
//! overtaken by the ring buffer gets `EPIPE` once and goes on with the oldest record still
//! kept. Opened non-blocking, the end of the buffer shows as `EAGAIN`; to follow, the
//! reader then polls for new records, checking every [`POLL_INTERVAL`] whether its
//! consumer is gone.
//!
//! Reading runs on a blocking thread and sends records through a channel. In dev mode
//! machined reads the host's `/dev/kmsg`; without permission the error says so.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// The kernel log device.
pub const KMSG: &str = "/dev/kmsg";
/// How often a following reader checks that its consumer is still there.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A failure to read the kernel log.
#[derive(Debug, thiserror::Error)]
pub enum KmsgError {
    /// The device could not be opened.
    #[error("kernel log {path}: {source}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Reading failed.
    #[error("kernel log {path}: read: {source}")]
    Read {
        /// The device.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl KmsgError {
    /// Whether the error is a lack of permission (e.g. an unprivileged dev-mode machined
    /// with `kernel.dmesg_restrict=1`).
    pub fn is_permission(&self) -> bool {
        let e = match self {
            KmsgError::Open { source, .. } | KmsgError::Read { source, .. } => source,
        };
        e.kind() == std::io::ErrorKind::PermissionDenied
    }
}

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsgRecord {
    /// Syslog priority, 0 (emergency) to 7 (debug).
    pub priority: u8,
    /// Syslog facility (0 for the kernel).
    pub facility: u32,
    /// Kernel sequence number.
    pub sequence: u64,
    /// Time since boot.
    pub since_boot: Duration,
    /// The text (escaped by the kernel: non-printable bytes as `\xNN`).
    pub message: String,
}

/// Parses one record as read from `/dev/kmsg`; None when it is malformed.
pub fn parse_record(record: &str) -> Option<KmsgRecord> {
    let (header, rest) = record.split_once(';')?;
    let message = rest.split('\n').next().unwrap_or("").to_string();
    let mut fields = header.split(',');
    let pri: u32 = fields.next()?.trim().parse().ok()?;
    let sequence = fields.next()?.parse().ok()?;
    let usec: u64 = fields.next()?.parse().ok()?;
    Some(KmsgRecord {
        priority: (pri & 7) as u8,
        facility: pri >> 3,
        sequence,
        since_boot: Duration::from_micros(usec),
        message,
    })
}

/// Reads the kernel log at `path` on the calling (blocking) thread: the last `tail`
/// records kept (0: all), then with `follow` new ones, into `tx`, until the buffer's end
/// (without `follow`) or until `tx` is closed. Opening errors are returned before anything
/// is sent.
pub fn read(
    path: &Path,
    tail: usize,
    follow: bool,
    tx: mpsc::Sender<Result<KmsgRecord, KmsgError>>,
) -> Result<(), KmsgError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|source| KmsgError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let read_err = |source| KmsgError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = vec![0u8; 16 * 1024];
    let mut backlog = std::collections::VecDeque::new();
    let mut caught_up = false;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let Some(record) = parse_record(&String::from_utf8_lossy(&buf[..n])) else {
                    continue;
                };
                if caught_up {
                    if tx.blocking_send(Ok(record)).is_err() {
                        return Ok(());
                    }
                } else {
                    backlog.push_back(record);
                    if tail > 0 && backlog.len() > tail {
                        backlog.pop_front();
                    }
                }
            }
            // Overtaken by the ring buffer: the next read returns the oldest kept record.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !caught_up {
                    caught_up = true;
                    for record in backlog.drain(..) {
                        if tx.blocking_send(Ok(record)).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !follow {
                    return Ok(());
                }
                // Wait for a new record, checking that the consumer is still there.
                loop {
                    if tx.is_closed() {
                        return Ok(());
                    }
                    let mut fds = [rustix::event::PollFd::new(
                        &file,
                        rustix::event::PollFlags::IN,
                    )];
                    let timeout = rustix::event::Timespec {
                        tv_sec: 0,
                        tv_nsec: POLL_INTERVAL.as_nanos() as i64,
                    };
                    match rustix::event::poll(&mut fds, Some(&timeout)) {
                        Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                        Ok(_) => break,
                        Err(e) => return Err(read_err(e.into())),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(e)),
        }
    }
}

/// Starts reading `path` on a blocking thread; records (and a final error, if any) come
/// through the returned receiver. Opening is checked first, so a missing permission is an
/// immediate error rather than an empty stream.
pub fn spawn_reader(
    path: &Path,
    tail: usize,
    follow: bool,
) -> Result<mpsc::Receiver<Result<KmsgRecord, KmsgError>>, KmsgError> {
    std::fs::File::open(path).map_err(|source| KmsgError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (tx, rx) = mpsc::channel(256);
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = read(&path, tail, follow, tx.clone()) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r =
            parse_record("6,1234,5678901,-;usb 1-1: new device\n SUBSYSTEM=usb\n DEVICE=c189:1\n")
                .unwrap();
        assert_eq!(
            r,
            KmsgRecord {
                priority: 6,
                facility: 0,
                sequence: 1234,
                since_boot: Duration::from_micros(5_678_901),
                message: "usb 1-1: new device".into(),
            }
        );
        let user = parse_record("14,7,100,-,caller=T1;hello from userspace").unwrap();
        assert_eq!((user.facility, user.priority), (1, 6));
        assert_eq!(user.message, "hello from userspace");
        assert!(parse_record("garbage").is_none());
        assert!(parse_record("x,1,2,-;text").is_none());
    }

    #[test]
    fn a_missing_device_is_a_clear_error() {
        let e = spawn_reader(Path::new("/nonexistent/kmsg"), 0, false).unwrap_err();
        assert!(
            e.to_string().contains("kernel log /nonexistent/kmsg"),
            "{e}"
        );
        assert!(!e.is_permission());
    }

    #[tokio::test]
    async fn reads_this_machines_kernel_log_when_permitted() {
        let mut rx = match spawn_reader(Path::new(KMSG), 5, false) {
            Ok(rx) => rx,
            Err(e) => {
                // Unprivileged hosts with dmesg_restrict: the error names the device.
                assert!(e.to_string().contains(KMSG), "{e}");
                return;
            }
        };
        let mut records = Vec::new();
        while let Some(r) = rx.recv().await {
            records.push(r.unwrap());
        }
        assert!(!records.is_empty() && records.len() <= 5, "{records:?}");
        assert!(records.windows(2).all(|w| w[0].sequence < w[1].sequence));
    }
}
