//! The audit trail: one JSON line per API call, allowed or denied.
//!
//! Design: the log lives under the state dir (`<state>/audit/audit.jsonl`, on the STATE
//! partition on a node). Each call is one line, written with a single `write` and then
//! `fsync`ed before the next call is recorded, so an entry that was acknowledged survives a
//! power cut; a line torn by a power cut is skipped when reading. When the file would grow
//! past `max_bytes` it is rotated (`audit.jsonl` → `audit.jsonl.1` → … → `.keep`, the oldest
//! dropped) and the directory is fsynced. Entries never hold secrets: callers pass a summary.
//!
//! Limits: writes are synchronous (one fsync per call, done on the calling task); that
//! bounds the API at the disk's fsync rate, which is fine for a management API. Queries read
//! every kept file, so `max_bytes × (keep + 1)` should stay small (the defaults: 1 MiB × 6).

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// Default size at which the log is rotated.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;
/// Default number of rotated files kept besides the current one.
pub const DEFAULT_KEEP: usize = 5;
const FILE_NAME: &str = "audit.jsonl";

/// A failed audit log operation.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log directory or a log file could not be created, written, synced or read.
    #[error("audit log {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be encoded.
    #[error("audit entry for {rpc}: {source}")]
    Encode {
        /// The RPC of the entry.
        rpc: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

/// Who made a call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPeer {
    /// Client certificate subject, empty when none was sent.
    pub subject: String,
    /// SHA-256 fingerprint of the client certificate (lowercase hex), empty when none.
    pub fingerprint: String,
    /// Client address and port.
    pub address: String,
}

/// One audited call, as stored (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the call arrived, RFC 3339 UTC.
    pub time: String,
    /// Who made it.
    pub peer: AuditPeer,
    /// Id of the bearer token presented, empty when none.
    pub token_id: String,
    /// Full gRPC method path.
    pub rpc: String,
    /// Whether authorization let the call through.
    pub allowed: bool,
    /// What granted or refused it.
    pub reason: String,
    /// What was asked, without secrets.
    pub summary: String,
    /// gRPC status code name the call ended with.
    pub result: String,
    /// Numeric gRPC status code.
    pub code: i32,
    /// Duration of the call in milliseconds.
    pub duration_ms: u64,
}

/// Filters of [`AuditLog::query`]; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only entries at or after this time.
    pub since: Option<SystemTime>,
    /// Only this RPC (full method path).
    pub rpc: Option<String>,
    /// Only this result code name, or `DENIED` for every refused call.
    pub result: Option<String>,
    /// At most this many of the most recent matches.
    pub limit: usize,
}

struct Writer {
    file: File,
    size: u64,
}

/// An append-only, size-rotated, fsynced JSON-lines audit log.
pub struct AuditLog {
    dir: PathBuf,
    max_bytes: u64,
    keep: usize,
    writer: Mutex<Writer>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("keep", &self.keep)
            .finish()
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open_append(path: &Path) -> Result<Writer, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let mut size = file.metadata().map_err(io_err(path))?.len();
    if size > 0 && !ends_with_newline(path).map_err(io_err(path))? {
        // A line torn by a power cut: end it so the next entry starts on its own line.
        (&file).write_all(b"\n").map_err(io_err(path))?;
        size += 1;
    }
    Ok(Writer { file, size })
}

fn ends_with_newline(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl AuditLog {
    /// Opens (creating it if needed) the log in `dir`, rotating at `max_bytes` and keeping
    /// `keep` rotated files.
    pub fn open(dir: &Path, max_bytes: u64, keep: usize) -> Result<Self, AuditError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let writer = open_append(&dir.join(FILE_NAME))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes: max_bytes.max(1),
            keep,
            writer: Mutex::new(writer),
        })
    }

    fn path(&self, index: usize) -> PathBuf {
        match index {
            0 => self.dir.join(FILE_NAME),
            n => self.dir.join(format!("{FILE_NAME}.{n}")),
        }
    }

    /// Appends one record and fsyncs it; rotates first when the file would grow too big.
    pub fn append(&self, record: &AuditRecord) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|source| AuditError::Encode {
            rpc: record.rpc.clone(),
            source,
        })?;
        line.push(b'\n');
        let mut writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if writer.size > 0 && writer.size + line.len() as u64 > self.max_bytes {
            self.rotate(&mut writer)?;
        }
        let path = self.path(0);
        writer.file.write_all(&line).map_err(io_err(&path))?;
        writer.file.sync_data().map_err(io_err(&path))?;
        writer.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&self, writer: &mut Writer) -> Result<(), AuditError> {
        if self.keep == 0 {
            let path = self.path(0);
            writer.file.set_len(0).map_err(io_err(&path))?;
            writer.size = 0;
            return Ok(());
        }
        let oldest = self.path(self.keep);
        if oldest.exists() {
            std::fs::remove_file(&oldest).map_err(io_err(&oldest))?;
        }
        for n in (0..self.keep).rev() {
            let from = self.path(n);
            if from.exists() {
                std::fs::rename(&from, self.path(n + 1)).map_err(io_err(&from))?;
            }
        }
        sync_dir(&self.dir)?;
        *writer = open_append(&self.path(0))?;
        Ok(())
    }

    /// The records matching `query`, oldest first, and whether older matches were left out
    /// because of the limit.
    pub fn query(&self, query: &AuditQuery) -> Result<(Vec<AuditRecord>, bool), AuditError> {
        // Hold the writer lock so a rotation cannot move files while they are read.
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let mut matches = Vec::new();
        for n in (0..=self.keep).rev() {
            let path = self.path(n);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&path)(e)),
            };
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io_err(&path))?;
                // A line torn by a power cut does not parse and is skipped.
                let Ok(record) = serde_json::from_str::<AuditRecord>(&line) else {
                    continue;
                };
                if matches_query(&record, query) {
                    matches.push(record);
                }
            }
        }
        let limit = query.limit.max(1);
        let truncated = matches.len() > limit;
        if truncated {
            matches.drain(..matches.len() - limit);
        }
        Ok((matches, truncated))
    }
}

fn matches_query(record: &AuditRecord, query: &AuditQuery) -> bool {
    if let Some(rpc) = &query.rpc
        && &record.rpc != rpc
    {
        return false;
    }
    if let Some(result) = &query.result {
        let ok = if result.eq_ignore_ascii_case("DENIED") {
            !record.allowed
        } else {
            record.result.eq_ignore_ascii_case(result)
        };
        if !ok {
            return false;
        }
    }
    if let Some(since) = query.since {
        match crate::timefmt::parse_rfc3339(&record.time) {
            Ok(t) if t >= since => {}
            _ => return false,
        }
    }
    true
}

/// The canonical name of a gRPC status code, e.g. `PERMISSION_DENIED`.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(rpc: &str, allowed: bool, result: &str) -> AuditRecord {
        AuditRecord {
            time: crate::timefmt::rfc3339(SystemTime::now()),
            peer: AuditPeer::default(),
            token_id: String::new(),
            rpc: rpc.to_string(),
            allowed,
            reason: "test".into(),
            summary: String::new(),
            result: result.to_string(),
            code: 0,
            duration_ms: 1,
        }
    }

    fn all() -> AuditQuery {
        AuditQuery {
            limit: 10_000,
            ..Default::default()
        }
    }

    #[test]
    fn appends_filters_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, DEFAULT_KEEP).unwrap();
        log.append(&record("/a", true, "OK")).unwrap();
        log.append(&record("/b", false, "PERMISSION_DENIED"))
            .unwrap();
        log.append(&record("/a", true, "INTERNAL")).unwrap();
        let (all_entries, truncated) = log.query(&all()).unwrap();
        assert_eq!(all_entries.len(), 3);
        assert!(!truncated);
        let q = AuditQuery {
            rpc: Some("/a".into()),
            ..all()
        };
        assert_eq!(log.query(&q).unwrap().0.len(), 2);
        let q = AuditQuery {
            result: Some("denied".into()),
            ..all()
        };
        assert_eq!(log.query(&q).unwrap().0[0].rpc, "/b");
        let q = AuditQuery { limit: 1, ..all() };
        let (last, truncated) = log.query(&q).unwrap();
        assert!(truncated);
        assert_eq!(last[0].result, "INTERNAL", "the most recent entry is kept");
        let q = AuditQuery {
            since: Some(SystemTime::now() + std::time::Duration::from_secs(60)),
            ..all()
        };
        assert!(log.query(&q).unwrap().0.is_empty());
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&record("/x", true, "OK")).unwrap().len() as u64 + 1;
        // Two entries per file (with slack: the timestamp's length varies by a few bytes),
        // two rotated files kept.
        let log = AuditLog::open(dir.path(), one * 5 / 2, 2).unwrap();
        for _ in 0..9 {
            log.append(&record("/x", true, "OK")).unwrap();
        }
        assert!(dir.path().join("audit.jsonl.2").exists());
        assert!(!dir.path().join("audit.jsonl.3").exists());
        // 2 + 2 full rotated files and 1 entry in the current one.
        assert_eq!(log.query(&all()).unwrap().0.len(), 5);
    }

    #[test]
    fn torn_last_line_is_skipped_and_reopen_appends() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, 1).unwrap();
            log.append(&record("/x", true, "OK")).unwrap();
        }
        let path = dir.path().join("audit.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"20").unwrap();
        drop(f);
        let log = AuditLog::open(dir.path(), DEFAULT_MAX_BYTES, 1).unwrap();
        log.append(&record("/y", true, "OK")).unwrap();
        // The torn line is skipped; the entries before and after it survive.
        let (entries, _) = log.query(&all()).unwrap();
        let rpcs: Vec<_> = entries.iter().map(|e| e.rpc.as_str()).collect();
        assert_eq!(rpcs, ["/x", "/y"]);
    }
}
