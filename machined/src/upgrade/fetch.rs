//! `UpgradeFromUrl`: the node fetches a bundle over HTTP(S) and feeds it to an
//! [`UpgradeSession`], resuming after a dropped connection with a Range request.
//!
//! The client is hyper's HTTP/1.1 client connection over our own TCP stream (plus
//! tokio-rustls with the ring provider for `https`). The header is fetched in 64 KiB
//! Range requests; once it is verified, [`UpgradeSession::plan_reuse`] indexes the booted
//! slot and the chunks it already holds are copied from it
//! ([`UpgradeSession::copy_local`]); the others are fetched as `Range: bytes=A-B` runs
//! ([`UpgradeSession::fetch_range`]). After a drop, a stall (no byte for `read_timeout`)
//! or a 5xx answer, the request is repeated from where the session is, with exponential
//! backoff, until `max_attempts` failures in a row without progress. A server that
//! ignores Range (200) is read from the start and the bytes the session already has are
//! skipped.
//!
//! Trust comes only from the bundle's signature: the server, the path and the transport
//! are untrusted, so `https` encrypts the download but the server certificate is not
//! checked against any CA (there is no CA store on a node; the handshake signature is
//! still verified). Redirects are not followed. TLS 1.3 only.

use super::engine::{
    UpgradeContext, UpgradeEngine, UpgradeError, UpgradeOptions, UpgradeOutcome, UpgradeSession,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bytes handed to the session at once.
const FEED_BYTES: usize = 1 << 20;

/// A failed download.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an absolute `http`/`https` URL.
    #[error("bundle URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("GET {url} (from offset {offset}): HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// Requested start offset.
        offset: u64,
        /// The status code.
        status: u16,
    },
    /// Connecting, the request or the body failed.
    #[error("GET {url} (from offset {offset}): {message}")]
    Network {
        /// The URL.
        url: String,
        /// Offset the request started at.
        offset: u64,
        /// What failed.
        message: String,
    },
    /// The server's answer does not fit the request.
    #[error("GET {url} (from offset {offset}): {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// Requested start offset.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// Retries ran out.
    #[error(
        "giving up on {url} after {attempts} failed attempts without progress; last error: {last}"
    )]
    GaveUp {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<FetchError>,
    },
    /// The upgrade itself was refused or failed.
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// A worker task died.
    #[error("upgrade task: {0}")]
    Task(String),
}

impl FetchError {
    fn retryable(&self) -> bool {
        match self {
            FetchError::Network { .. } => true,
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }
}

/// Timeouts and retries of a download.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Longest wait for the response head or the next body bytes.
    pub read_timeout: Duration,
    /// Failed attempts in a row (without a byte of progress) before giving up.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time, at most 30 s.
    pub backoff: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            max_attempts: 6,
            backoff: Duration::from_millis(500),
        }
    }
}

/// The phase an upgrade is in (mirrors `basalt.machine.v1.UpgradePhase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fetching and verifying the header.
    Header,
    /// Writing verified chunks.
    Write,
    /// Reading the slot back.
    Readback,
    /// Switching the bootloader.
    Activate,
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchProgress {
    /// The phase.
    pub phase: Phase,
    /// Payload bytes verified and written.
    pub written: u64,
    /// Payload size (0 before the header).
    pub total: u64,
    /// Detail.
    pub message: String,
}

#[derive(Debug, Clone)]
struct Target {
    url: String,
    https: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user information in URLs is not supported"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(Target {
        url: url.to_string(),
        https,
        host,
        port,
        authority: authority.as_str().to_string(),
        path,
    })
}

/// Any server certificate, but a valid handshake signature by its key.
#[derive(Debug)]
struct SignatureOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for SignatureOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn connect(t: &Target, opts: &FetchOptions, offset: u64) -> Result<Box<dyn Io>, FetchError> {
    let net = |message: String| FetchError::Network {
        url: t.url.clone(),
        offset,
        message,
    };
    let work = async {
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| net(format!("connect to {}:{}: {e}", t.host, t.port)))?;
        let _ = tcp.set_nodelay(true);
        if !t.https {
            return Ok(Box::new(tcp) as Box<dyn Io>);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| net(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SignatureOnly(provider)))
            .with_no_client_auth();
        let name = ServerName::try_from(t.host.clone())
            .map_err(|e| net(format!("TLS server name {}: {e}", t.host)))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| net(format!("TLS handshake: {e}")))?;
        Ok(Box::new(tls) as Box<dyn Io>)
    };
    tokio::time::timeout(opts.connect_timeout, work)
        .await
        .map_err(|_| {
            net(format!(
                "connect timed out after {:?}",
                opts.connect_timeout
            ))
        })?
}

/// `bytes S-E/T` → S.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

async fn with_session<T: Send + 'static>(
    session: UpgradeSession,
    f: impl FnOnce(&mut UpgradeSession) -> Result<T, UpgradeError> + Send + 'static,
) -> (UpgradeSession, Result<T, UpgradeError>) {
    let task = tokio::task::spawn_blocking(move || {
        let mut session = session;
        let r = f(&mut session);
        (session, r)
    });
    match task.await {
        Ok(x) => x,
        // A panic in the engine is a bug: let it end this upgrade's task as it would have
        // without the thread hop (the session recorded its progress when it was dropped).
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("upgrade worker cancelled: {e}"),
    }
}

/// One GET of `range` (bundle offsets; `range.start` is the session's next offset), until
/// the body ends or fails. Returns the session whatever happened.
async fn fetch_once(
    t: &Target,
    opts: &FetchOptions,
    mut session: UpgradeSession,
    range: std::ops::Range<u64>,
    report: &mut (dyn FnMut(FetchProgress) + Send),
) -> (UpgradeSession, Result<(), FetchError>) {
    let offset = range.start;
    let net = |message: String| FetchError::Network {
        url: t.url.clone(),
        offset,
        message,
    };
    let io = match connect(t, opts, offset).await {
        Ok(io) => io,
        Err(e) => return (session, Err(e)),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(io)).await {
        Ok(x) => x,
        Err(e) => return (session, Err(net(format!("HTTP handshake: {e}")))),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = match http::Request::get(&t.path)
        .header(http::header::HOST, &t.authority)
        .header(
            http::header::RANGE,
            format!("bytes={offset}-{}", range.end.saturating_sub(1)),
        )
        .header(http::header::USER_AGENT, "basalt-machined")
        .body(Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return (session, Err(net(format!("request: {e}")))),
    };
    let response = match tokio::time::timeout(opts.read_timeout, sender.send_request(request)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return (session, Err(net(format!("request: {e}")))),
        Err(_) => return (session, Err(net("no response head in time".into()))),
    };
    let status = response.status().as_u16();
    let mut position = match status {
        200 => 0,
        206 => {
            let start = response
                .headers()
                .get(http::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            match start {
                Some(s) if s <= offset => s,
                other => {
                    return (
                        session,
                        Err(FetchError::Protocol {
                            url: t.url.clone(),
                            offset,
                            message: format!(
                                "206 answer with Content-Range start {other:?}, asked for {offset}"
                            ),
                        }),
                    );
                }
            }
        }
        s => {
            return (
                session,
                Err(FetchError::Status {
                    url: t.url.clone(),
                    offset,
                    status: s,
                }),
            );
        }
    };
    let mut body = response.into_body();
    let mut pending: Vec<u8> = Vec::with_capacity(FEED_BYTES);
    let mut pending_at = position;
    loop {
        let frame = match tokio::time::timeout(opts.read_timeout, body.frame()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                let r;
                (session, r) = flush(session, &mut pending, pending_at, report).await;
                return (session, r.and(Err(net(format!("body: {e}")))));
            }
            Err(_) => {
                let r;
                (session, r) = flush(session, &mut pending, pending_at, report).await;
                return (
                    session,
                    r.and(Err(net(format!("no data for {:?}", opts.read_timeout)))),
                );
            }
        };
        let Some(frame) = frame else {
            let r;
            (session, r) = flush(session, &mut pending, pending_at, report).await;
            return (session, r);
        };
        if let Ok(data) = frame.into_data() {
            pending.extend_from_slice(&data);
            position += data.len() as u64;
            if pending.len() >= FEED_BYTES {
                let r;
                (session, r) = flush(session, &mut pending, pending_at, report).await;
                if r.is_err() {
                    return (session, r);
                }
                pending_at = position;
            }
        }
    }
}

async fn flush(
    session: UpgradeSession,
    pending: &mut Vec<u8>,
    at: u64,
    report: &mut (dyn FnMut(FetchProgress) + Send),
) -> (UpgradeSession, Result<(), FetchError>) {
    if pending.is_empty() {
        return (session, Ok(()));
    }
    let data = std::mem::take(pending);
    let had_header = session.header_verified();
    let (session, r) = with_session(session, move |s| s.feed(at, &data)).await;
    let (written, total) = session.written();
    if !had_header && session.header_verified() {
        report(FetchProgress {
            phase: Phase::Header,
            written,
            total,
            message: "bundle header verified".into(),
        });
    }
    if r.is_ok() {
        report(FetchProgress {
            phase: Phase::Write,
            written,
            total,
            message: String::new(),
        });
    }
    (session, r.map_err(FetchError::from))
}

/// Fetches `url` and installs it: header, write, read-back, activation (and reboot unless
/// staged). `report` receives progress.
pub async fn upgrade_from_url(
    engine: &UpgradeEngine,
    ctx: Arc<dyn UpgradeContext>,
    url: &str,
    options: UpgradeOptions,
    fetch: &FetchOptions,
    report: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<UpgradeOutcome, FetchError> {
    let target = parse_url(url)?;
    let mut session = engine.begin(ctx.clone(), options, url)?;
    let mut failures = 0u32;
    let mut delay = fetch.backoff;
    let mut last_progress = session.next_offset();
    loop {
        let r;
        (session, r) = with_session(session, |s| s.copy_local()).await;
        r?;
        if session.is_complete() {
            break;
        }
        let Some(range) = session.fetch_range() else {
            return Err(UpgradeError::State("nothing to fetch and nothing to copy").into());
        };
        let had_header = session.header_verified();
        let r;
        (session, r) = fetch_once(&target, fetch, session, range.clone(), report).await;
        if !had_header && session.header_verified() {
            let planned;
            (session, planned) = with_session(session, |s| s.plan_reuse()).await;
            let (reuse, bytes) = planned?;
            let (written, total) = session.written();
            report(FetchProgress {
                phase: Phase::Header,
                written,
                total,
                message: format!(
                    "{reuse} chunks copied from the booted slot, {bytes} payload bytes to fetch"
                ),
            });
        }
        let next = session.next_offset();
        if next > last_progress {
            failures = 0;
            delay = fetch.backoff;
            last_progress = next;
        }
        let e = match r {
            // The range (or the header probe) arrived whole: go on.
            Ok(()) if next >= range.end || (!had_header && session.header_verified()) => {
                continue;
            }
            Ok(()) if session.is_complete() => break,
            Ok(()) => FetchError::Network {
                url: url.to_string(),
                offset: next,
                message: "connection closed before the end of the requested range".into(),
            },
            Err(e) => e,
        };
        if !e.retryable() {
            return Err(e);
        }
        failures += 1;
        if failures >= fetch.max_attempts {
            return Err(FetchError::GaveUp {
                url: url.to_string(),
                attempts: failures,
                last: Box::new(e),
            });
        }
        let message = format!("{e}; retrying from offset {next} in {delay:?}");
        ctx.log(&format!("upgrade: {message}"));
        let (written, total) = session.written();
        report(FetchProgress {
            phase: if session.header_verified() {
                Phase::Write
            } else {
                Phase::Header
            },
            written,
            total,
            message,
        });
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
    let (written, total) = session.written();
    report(FetchProgress {
        phase: Phase::Readback,
        written,
        total,
        message: "reading the slot back".into(),
    });
    let (session, r) = with_session(session, |s| s.readback()).await;
    r?;
    report(FetchProgress {
        phase: Phase::Activate,
        written,
        total,
        message: "activating the new slot".into(),
    });
    tokio::task::spawn_blocking(move || session.activate())
        .await
        .map_err(|e| FetchError::Task(e.to_string()))?
        .map_err(FetchError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/b/x.bundle?sig=1").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.https),
            ("127.0.0.1", 8080, false)
        );
        assert_eq!(t.path, "/b/x.bundle?sig=1");
        let t = parse_url("https://[::1]/x").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.https), ("::1", 443, true));
        assert!(parse_url("ftp://h/x").is_err());
        assert!(parse_url("/relative").is_err());
        assert!(parse_url("http://user:pw@h/x").is_err());
    }

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
    }
}
