//! Connecting to a node's API: TCP, a TLS 1.3 handshake checked against the machine's CA
//! or a pinned certificate fingerprint, then tonic over the TLS stream.
//!
//! - CA mode (normal): the server certificate must chain to the CA in `basaltctl.yaml` and
//!   name the address dialled; the client presents its certificate (mutual TLS).
//! - Fingerprint mode (`--insecure --fingerprint HEX`, maintenance mode): the server's
//!   self-signed certificate is accepted only if its SHA-256 equals the pinned value, and
//!   the handshake signature is still verified with its key. No client certificate.
//! - Insecure mode (`--insecure` alone): any server certificate; for a node whose console
//!   is not visible. The caller warns.
//!
//! Connection attempts are retried with exponential backoff on network errors (refused,
//! unreachable, timed out), never on TLS errors: a certificate problem does not fix itself.
//! RPCs are not retried (some are not idempotent).

use basalt_proto::audit::v1::audit_service_client::AuditServiceClient;
use basalt_proto::machine::v1::machine_service_client::MachineServiceClient;
use basalt_proto::resource::v1::resource_service_client::ResourceServiceClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The API port used when a node is given without one.
pub const DEFAULT_PORT: u16 = 50000;

/// A failed connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The node address or the TLS material is unusable.
    #[error("{0}")]
    Config(String),
    /// The TCP connection failed.
    #[error("connecting to {addr}: {source}")]
    Tcp {
        /// The address dialled.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed.
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// tonic could not set up the HTTP/2 channel.
    #[error("connecting to {addr}: {source}")]
    Transport {
        /// The address dialled.
        addr: String,
        /// The underlying error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// It must chain to one of these CA certificates.
    Ca(Vec<CertificateDer<'static>>),
    /// Its SHA-256 must be this (hex, any case, colons allowed).
    Fingerprint(String),
    /// Anything (maintenance mode without a visible console).
    Insecure,
}

/// The TLS side of a connection.
#[derive(Debug)]
pub struct TlsSettings {
    /// How the server is checked.
    pub trust: ServerTrust,
    /// The client certificate chain and key, for mutual TLS.
    pub identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
}

impl TlsSettings {
    /// Mutual TLS from PEM strings: CA, client certificate and client key.
    pub fn mutual(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, ConnectError> {
        let certs = |pem: &str, what: &str| {
            CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ConnectError::Config(format!("{what}: {e}")))
                .and_then(|c| {
                    if c.is_empty() {
                        Err(ConnectError::Config(format!("{what}: no certificate")))
                    } else {
                        Ok(c)
                    }
                })
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| ConnectError::Config(format!("client key: {e}")))?;
        Ok(Self {
            trust: ServerTrust::Ca(certs(ca_pem, "CA")?),
            identity: Some((certs(cert_pem, "client certificate")?, key)),
        })
    }
}

/// Timeouts and retries.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Time allowed for TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Time allowed for each RPC.
    pub request_timeout: Duration,
    /// Connection attempts after the first.
    pub retries: u32,
    /// Delay before the first retry; doubled each time.
    pub backoff: Duration,
    /// A bearer token sent with every call.
    pub token: Option<String>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            retries: 3,
            backoff: Duration::from_millis(250),
            token: None,
        }
    }
}

/// SHA-256 of `der` as lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Normalises a fingerprint: lowercase, no colons or `sha256:` prefix.
pub fn normalize_fingerprint(fp: &str) -> String {
    let fp = fp.trim();
    let fp = fp
        .strip_prefix("sha256:")
        .or_else(|| fp.strip_prefix("SHA256:"))
        .unwrap_or(fp);
    fp.chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
}

/// Accepts a server certificate by fingerprint (or any, when none is pinned), still
/// verifying the handshake signature with its key.
#[derive(Debug)]
struct PinnedVerifier {
    fingerprint: Option<String>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256_hex(end_entity);
        match &self.fingerprint {
            Some(want) if *want != got => Err(rustls::Error::General(format!(
                "server certificate fingerprint {got} does not match the pinned {want}"
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls client configuration for `tls`: TLS 1.3 only, ALPN h2, ring provider.
pub fn client_config(tls: &TlsSettings) -> Result<Arc<ClientConfig>, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Config(format!("TLS 1.3: {e}")))?;
    let builder = match &tls.trust {
        ServerTrust::Ca(cas) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in cas {
                roots
                    .add(ca.clone())
                    .map_err(|e| ConnectError::Config(format!("CA certificate: {e}")))?;
            }
            builder.with_root_certificates(roots)
        }
        ServerTrust::Fingerprint(fp) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    fingerprint: Some(normalize_fingerprint(fp)),
                    provider,
                }))
        }
        ServerTrust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                fingerprint: None,
                provider,
            })),
    };
    let mut config = match &tls.identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| ConnectError::Config(format!("client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// `host` or `host:port` → `host:port`, adding [`DEFAULT_PORT`].
pub fn with_port(node: &str) -> String {
    let node = node.trim();
    let has_port = if let Some(rest) = node.strip_prefix('[') {
        rest.contains("]:")
    } else {
        node.matches(':').count() == 1
    };
    if has_port {
        node.to_string()
    } else if node.contains(':') && !node.starts_with('[') {
        format!("[{node}]:{DEFAULT_PORT}")
    } else {
        format!("{node}:{DEFAULT_PORT}")
    }
}

fn host_of(addr: &str) -> &str {
    let host = match addr.rfind(':') {
        Some(i) => &addr[..i],
        None => addr,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Dials TCP and runs the TLS handshake; plugged into tonic with `connect_with_connector`.
#[derive(Clone)]
struct TlsConnector {
    addr: String,
    config: Arc<ClientConfig>,
}

type IoStream = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;

impl tower::Service<http::Uri> for TlsConnector {
    type Response = IoStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<IoStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let addr = self.addr.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let name = ServerName::try_from(host_of(&addr).to_string())
                .map_err(|e| ConnectError::Config(format!("server name of {addr}: {e}")))?;
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|source| ConnectError::Tcp {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| ConnectError::Tls { addr, source })?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

/// Adds `authorization: Bearer` to every call when a token is configured.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that sends the configured bearer token.
pub type AuthedChannel = InterceptedService<Channel, Bearer>;

/// The API clients of one node.
#[derive(Clone)]
pub struct Clients {
    /// `basalt.machine.v1.MachineService`.
    pub machine: MachineServiceClient<AuthedChannel>,
    /// `basalt.audit.v1.AuditService`.
    pub audit: AuditServiceClient<AuthedChannel>,
    /// `basalt.resource.v1.ResourceService`.
    pub resource: ResourceServiceClient<AuthedChannel>,
}

/// Whether a connection error is worth retrying (network trouble, not TLS or config).
fn retryable(err: &ConnectError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            match c {
                ConnectError::Tcp { .. } => return true,
                ConnectError::Tls { .. } | ConnectError::Config(_) => return false,
                ConnectError::Transport { .. } => {}
            }
        }
        source = e.source();
    }
    // A tonic transport error without our connector's error inside: a timeout.
    true
}

async fn connect_once(
    addr: &str,
    config: Arc<ClientConfig>,
    opts: &ConnectOptions,
) -> Result<Channel, ConnectError> {
    let transport = |source| ConnectError::Transport {
        addr: addr.to_string(),
        source,
    };
    // The scheme is http: TLS is done by the connector, not by tonic.
    Endpoint::from_shared(format!("http://{addr}"))
        .map_err(transport)?
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.request_timeout)
        .connect_with_connector(TlsConnector {
            addr: addr.to_string(),
            config,
        })
        .await
        .map_err(transport)
}

/// Connects to `node` (`host[:port]`), retrying network errors with backoff.
pub async fn connect(
    node: &str,
    tls: &TlsSettings,
    opts: &ConnectOptions,
) -> Result<Clients, ConnectError> {
    let addr = with_port(node);
    let config = client_config(tls)?;
    let mut delay = opts.backoff;
    let mut attempt = 0;
    let channel = loop {
        match connect_once(&addr, config.clone(), opts).await {
            Ok(channel) => break channel,
            Err(e) if attempt < opts.retries && retryable(&e) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(e) => return Err(e),
        }
    };
    let bearer = match &opts.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ConnectError::Config("the bearer token is not ASCII".into()))?,
        ),
        None => None,
    };
    let authed = InterceptedService::new(channel, Bearer(bearer));
    Ok(Clients {
        machine: MachineServiceClient::new(authed.clone()),
        audit: AuditServiceClient::new(authed.clone()),
        resource: ResourceServiceClient::new(authed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_hosts() {
        assert_eq!(with_port("10.0.0.5"), "10.0.0.5:50000");
        assert_eq!(with_port("10.0.0.5:1234"), "10.0.0.5:1234");
        assert_eq!(with_port("node1.local"), "node1.local:50000");
        assert_eq!(with_port("::1"), "[::1]:50000");
        assert_eq!(with_port("[::1]:7"), "[::1]:7");
        assert_eq!(host_of("[::1]:7"), "::1");
        assert_eq!(host_of("127.0.0.1:7"), "127.0.0.1");
    }

    #[test]
    fn fingerprints_normalise() {
        assert_eq!(normalize_fingerprint("SHA256:AB:cd"), "abcd");
        assert_eq!(normalize_fingerprint(" abcd "), "abcd");
    }
}
