//! HTTP(S) image download with Range resume (ureq, rustls with `ring`).
//!
//! [`HttpReader`] is a plain [`Read`]: the first request is a normal GET; when the
//! connection fails or ends before `Content-Length` bytes, it reconnects with
//! `Range: bytes=POS-` and continues at the same byte, up to [`MAX_RESUMES`] times in a row
//! (the count resets whenever data arrives). A server that ignores Range (answers 200
//! instead of 206, or a `Content-Range` that does not start at POS) is an error rather than
//! a silent restart, since the bytes already handed on cannot be taken back.

use std::io::{self, Read};
use std::time::Duration;

/// Reconnections without progress before giving up.
pub const MAX_RESUMES: u32 = 5;

/// A failed download.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request failed (connection, TLS, status).
    #[error("failed to download {url} at offset {offset}: {reason}")]
    Request {
        /// The URL.
        url: String,
        /// The byte the request started at.
        offset: u64,
        /// What went wrong.
        reason: String,
    },
    /// The server cannot resume.
    #[error("failed to resume {url} at offset {offset}: {reason}")]
    NoResume {
        /// The URL.
        url: String,
        /// The byte the download had reached.
        offset: u64,
        /// What the server did.
        reason: String,
    },
}

/// A resuming HTTP body reader.
pub struct HttpReader {
    url: String,
    agent: ureq::Agent,
    body: Option<Box<dyn Read + Send>>,
    pos: u64,
    total: Option<u64>,
    resumes: u32,
    /// Number of reconnections made (for tests and the summary).
    pub reconnects: u32,
}

impl std::fmt::Debug for HttpReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpReader")
            .field("url", &self.url)
            .field("pos", &self.pos)
            .finish()
    }
}

impl HttpReader {
    /// Starts downloading `url`.
    pub fn open(url: &str) -> Result<HttpReader, HttpError> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_recv_body(None)
            .build()
            .into();
        let mut r = HttpReader {
            url: url.to_string(),
            agent,
            body: None,
            pos: 0,
            total: None,
            resumes: 0,
            reconnects: 0,
        };
        r.connect()?;
        Ok(r)
    }

    /// The body length, when the server sent it.
    pub fn content_length(&self) -> Option<u64> {
        self.total
    }

    fn connect(&mut self) -> Result<(), HttpError> {
        let mut req = self.agent.get(&self.url);
        if self.pos > 0 {
            req = req.header("Range", &format!("bytes={}-", self.pos));
        }
        let resp = req.call().map_err(|e| HttpError::Request {
            url: self.url.clone(),
            offset: self.pos,
            reason: e.to_string(),
        })?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = resp.status().as_u16();
        if self.pos == 0 {
            if status != 200 {
                return Err(HttpError::Request {
                    url: self.url.clone(),
                    offset: 0,
                    reason: format!("HTTP status {status}"),
                });
            }
            self.total = header("content-length").and_then(|v| v.parse().ok());
        } else {
            let range = header("content-range").unwrap_or_default();
            let start = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse::<u64>().ok());
            if status != 206 || start != Some(self.pos) {
                return Err(HttpError::NoResume {
                    url: self.url.clone(),
                    offset: self.pos,
                    reason: format!("HTTP status {status}, Content-Range {range:?}"),
                });
            }
        }
        self.body = Some(Box::new(resp.into_body().into_reader()));
        Ok(())
    }

    fn resume(&mut self, cause: String) -> io::Result<()> {
        self.body = None;
        loop {
            self.resumes += 1;
            if self.resumes > MAX_RESUMES {
                return Err(io::Error::other(HttpError::Request {
                    url: self.url.clone(),
                    offset: self.pos,
                    reason: format!("gave up after {MAX_RESUMES} reconnections: {cause}"),
                }));
            }
            std::thread::sleep(Duration::from_millis(200 * u64::from(self.resumes)));
            self.reconnects += 1;
            match self.connect() {
                Ok(()) => return Ok(()),
                Err(e @ HttpError::NoResume { .. }) => return Err(io::Error::other(e)),
                Err(_) => continue,
            }
        }
    }
}

impl Read for HttpReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.total.is_some_and(|t| self.pos >= t) {
                return Ok(0);
            }
            let Some(body) = self.body.as_mut() else {
                self.resume("no connection".into())?;
                continue;
            };
            match body.read(buf) {
                Ok(0) if self.total.is_none() => return Ok(0),
                Ok(0) => self.resume("connection closed early".into())?,
                Ok(n) => {
                    self.pos += n as u64;
                    self.resumes = 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.resume(e.to_string())?,
            }
        }
    }
}
