//! TLS for the API: server configurations, the maintenance-mode certificate and the peer
//! identity taken from a client certificate.
//!
//! - TLS 1.3 only (`with_protocol_versions(&[&TLS13])`); a TLS 1.2 client gets a
//!   `protocol_version` alert.
//! - The crypto provider is rustls' `ring` provider: it builds with only a C compiler, while
//!   aws-lc-rs needs cmake and nasm and breaks the static aarch64 node build.
//! - Normal mode: mutual TLS. `WebPkiClientVerifier` checks the client chain against the
//!   machine's CA (signature, validity, clientAuth usage); a client without a certificate,
//!   or with one from another CA, fails the handshake before any RPC is seen.
//! - Maintenance mode (no configuration yet): a self-signed certificate generated at each
//!   start with rcgen; no client certificate is asked for. Clients pin it by the SHA-256
//!   fingerprint machined prints on the console.
//!
//! Limits: no certificate revocation (CRLs/OCSP); a compromised client certificate is
//! revoked by rotating the CA (short-lived client certificates are recommended).

use crate::api::authz::Role;
use crate::settings::ApiSettings;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A failed TLS setup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the certificates or keys.
    #[error("TLS setup for the {what}: {source}")]
    Rustls {
        /// What was being set up, e.g. "mutual TLS server".
        what: &'static str,
        /// The underlying error.
        #[source]
        source: rustls::Error,
    },
    /// The CA certificates could not be used as trust roots.
    #[error("TLS setup: client CA: {0}")]
    Verifier(String),
    /// The maintenance certificate could not be generated.
    #[error("TLS setup: maintenance certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A client certificate could not be parsed.
    #[error("client certificate: {0}")]
    Parse(String),
}

/// The crypto provider used everywhere in machined: rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SHA-256 of `der`, lowercase hex without separators (64 characters).
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Who is at the other end of a connection, from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject distinguished name, e.g. `CN=alice, O=basalt:admin`.
    pub subject: String,
    /// SHA-256 fingerprint of the certificate (lowercase hex).
    pub fingerprint: String,
    /// The Basalt roles named by the subject's Organization attributes.
    pub roles: Vec<Role>,
}

impl PeerIdentity {
    /// Reads the identity of a (verified) client certificate.
    pub fn from_cert(der: &CertificateDer<'_>) -> Result<Self, TlsError> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Parse(e.to_string()))?;
        let subject = cert.subject();
        let mut roles = Vec::new();
        for org in subject.iter_organization() {
            if let Some(role) = org.as_str().ok().and_then(Role::from_organization)
                && !roles.contains(&role)
            {
                roles.push(role);
            }
        }
        Ok(Self {
            subject: subject.to_string(),
            fingerprint: sha256_hex(der),
            roles,
        })
    }
}

/// What the API knows about a connection; tonic puts it in every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The client certificate's identity; `None` when the client sent no certificate
    /// (maintenance mode).
    pub identity: Option<Arc<PeerIdentity>>,
    /// The listener generation the connection was accepted in; a connection from before a
    /// switch (maintenance → mutual TLS) is refused.
    pub generation: u64,
    /// Why the identity could not be read, when a certificate was sent but not understood.
    pub identity_error: Option<String>,
}

/// A TLS connection handed to tonic, carrying its [`ConnInfo`].
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: ConnInfo,
}

impl PeerStream {
    /// Wraps an accepted TLS stream, reading the peer's identity once.
    pub fn new(inner: tokio_rustls::server::TlsStream<TcpStream>, generation: u64) -> Self {
        let (tcp, conn) = inner.get_ref();
        let remote = tcp.peer_addr().ok();
        let (identity, identity_error) = match conn.peer_certificates().and_then(|c| c.first()) {
            None => (None, None),
            Some(cert) => match PeerIdentity::from_cert(cert) {
                Ok(id) => (Some(Arc::new(id)), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        Self {
            inner,
            info: ConnInfo {
                remote,
                identity,
                generation,
                identity_error,
            },
        }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn tls13_builder() -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|source| TlsError::Rustls {
            what: "TLS 1.3 protocol",
            source,
        })
}

fn finish(mut config: ServerConfig) -> Arc<ServerConfig> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The mutual-TLS server configuration of a configured node.
pub fn mtls_server_config(settings: &ApiSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in &settings.ca {
        roots.add(ca.clone()).map_err(|source| TlsError::Rustls {
            what: "client CA",
            source,
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let config = tls13_builder()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(settings.cert_chain.clone(), settings.key.clone_key())
        .map_err(|source| TlsError::Rustls {
            what: "server certificate and key",
            source,
        })?;
    Ok(finish(config))
}

/// The self-signed certificate served in maintenance mode.
pub struct MaintenanceCert {
    /// The certificate.
    pub cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    /// SHA-256 fingerprint of the certificate (lowercase hex), printed on the console.
    pub fingerprint: String,
}

impl MaintenanceCert {
    /// Generates a fresh key (ECDSA P-256) and a self-signed certificate for `names` (IP
    /// addresses or DNS names; clients pin the fingerprint, not the names).
    pub fn generate(names: Vec<String>) -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(names)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "basalt maintenance mode");
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.self_signed(&key)?;
        let fingerprint = sha256_hex(cert.der());
        Ok(Self {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            fingerprint,
        })
    }

    /// The maintenance-mode server configuration: this certificate, no client auth.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let config = tls13_builder()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.cert.clone()],
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .map_err(|source| TlsError::Rustls {
                what: "maintenance certificate",
                source,
            })?;
        Ok(finish(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_cert_fingerprint_matches_its_der() {
        let m = MaintenanceCert::generate(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(m.fingerprint.len(), 64);
        assert_eq!(m.fingerprint, sha256_hex(&m.cert));
        let config = m.server_config().unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn roles_come_from_the_organization() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ci");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "basalt:operator");
        let cert = params.self_signed(&key).unwrap();
        let id = PeerIdentity::from_cert(cert.der()).unwrap();
        assert_eq!(id.roles, vec![Role::Operator]);
        assert!(id.subject.contains("CN=ci"), "{}", id.subject);
    }
}
