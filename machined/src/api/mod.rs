//! The machine API server: TLS listener, the guard in front of every service, and the
//! handlers.
//!
//! Design:
//!
//! - machined builds its own `rustls::ServerConfig` ([`tls`]): TLS 1.3 only, mutual TLS
//!   with the machine's CA, the `ring` provider. It accepts TCP connections itself, runs
//!   each TLS handshake in its own task (with a timeout and a cap on handshakes in flight,
//!   so a slow client cannot stall the others), and hands finished connections to tonic
//!   with `serve_with_incoming`. Each connection carries its verified identity
//!   ([`tls::ConnInfo`]), which tonic puts into every request.
//! - One tower layer ([`guard`]) authorizes every call against the single table in
//!   [`authz`] (client certificate roles, or a bearer [`token`]), and audits it, allowed or
//!   denied. Handlers ([`machine`], [`resource`], [`audit_service`]) stay thin: they
//!   convert between protobuf and [`crate::node`] calls.
//! - The API mode (maintenance or mutual TLS) lives in [`ApiControl`]. Applying the first
//!   configuration switches it: new connections get the mutual-TLS configuration at once
//!   (the listener is restarted with it), and connections opened before the switch are
//!   refused with UNAVAILABLE on their next call, so no maintenance-mode connection can
//!   be used once the node is configured.

pub mod audit_service;
pub mod authz;
pub mod guard;
pub mod images;
pub mod machine;
pub mod resource;
pub mod streams;
pub mod tls;
pub mod token;
pub mod upgrade;

use crate::node::Node;
use crate::settings::ApiSettings;
use basalt_proto::audit::v1::audit_service_server::AuditServiceServer;
use basalt_proto::machine::v1::machine_service_server::MachineServiceServer;
use basalt_proto::resource::v1::resource_service_server::ResourceServiceServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many TLS handshakes may be in progress at once.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// A failure of the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// tonic's server stopped with an error.
    #[error("API server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The TLS settings could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// How the API authenticates callers right now.
#[derive(Debug, Clone)]
pub enum ModeKind {
    /// No configuration: self-signed certificate, no client authentication, only the
    /// maintenance column of the table.
    Maintenance {
        /// SHA-256 fingerprint of the self-signed certificate.
        fingerprint: String,
    },
    /// Configured: mutual TLS with the machine's CA, roles and tokens.
    Secure {
        /// Verifies bearer tokens against the trusted keys.
        verifier: token::TokenVerifier,
        /// The machine id from the configuration.
        machine_id: String,
    },
}

/// The API mode in force, with the TLS acceptor for new connections.
pub struct ActiveMode {
    /// Increases at every listener restart; connections from older generations are refused.
    pub generation: u64,
    /// How callers are authenticated.
    pub kind: ModeKind,
    /// The TLS acceptor for new connections.
    pub acceptor: TlsAcceptor,
    /// Fingerprint-relevant TLS material, to tell whether a new configuration changes it.
    tls_material: Vec<Vec<u8>>,
}

/// The switch between API modes, shared by the listener, the guard and the handlers.
pub struct ApiControl {
    tx: watch::Sender<Arc<ActiveMode>>,
}

impl std::fmt::Debug for ApiControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cur = self.current();
        f.debug_struct("ApiControl")
            .field("generation", &cur.generation)
            .field("kind", &cur.kind)
            .finish()
    }
}

fn secure_material(settings: &ApiSettings) -> Vec<Vec<u8>> {
    let mut m: Vec<Vec<u8>> = settings.ca.iter().map(|c| c.to_vec()).collect();
    m.extend(settings.cert_chain.iter().map(|c| c.to_vec()));
    m.push(settings.key.secret_der().to_vec());
    m
}

fn secure_kind(settings: &ApiSettings) -> ModeKind {
    let mut audiences = vec![settings.machine_id.clone()];
    audiences.extend(settings.cluster_id.clone());
    ModeKind::Secure {
        verifier: token::TokenVerifier::new(
            settings.token_keys.clone(),
            audiences,
            settings.token_limits.clone(),
        ),
        machine_id: settings.machine_id.clone(),
    }
}

impl ApiControl {
    /// Starts in maintenance mode with `cert`.
    pub fn maintenance(cert: &tls::MaintenanceCert) -> Result<Self, tls::TlsError> {
        let mode = ActiveMode {
            generation: 1,
            kind: ModeKind::Maintenance {
                fingerprint: cert.fingerprint.clone(),
            },
            acceptor: TlsAcceptor::from(cert.server_config()?),
            tls_material: vec![cert.cert.to_vec()],
        };
        Ok(Self {
            tx: watch::Sender::new(Arc::new(mode)),
        })
    }

    /// Starts in mutual-TLS mode with `settings`.
    pub fn secure(settings: &ApiSettings) -> Result<Self, tls::TlsError> {
        let mode = ActiveMode {
            generation: 1,
            kind: secure_kind(settings),
            acceptor: TlsAcceptor::from(tls::mtls_server_config(settings)?),
            tls_material: secure_material(settings),
        };
        Ok(Self {
            tx: watch::Sender::new(Arc::new(mode)),
        })
    }

    /// The mode in force.
    pub fn current(&self) -> Arc<ActiveMode> {
        self.tx.borrow().clone()
    }

    /// Whether the node is in maintenance mode.
    pub fn is_maintenance(&self) -> bool {
        matches!(self.current().kind, ModeKind::Maintenance { .. })
    }

    /// Switches to mutual TLS with `settings`. When the TLS material changes (always, from
    /// maintenance mode) the listener is restarted: a new generation starts and older
    /// connections are refused; otherwise only the token settings are updated. Returns
    /// whether the listener was restarted.
    pub fn switch_to_secure(&self, settings: &ApiSettings) -> Result<bool, tls::TlsError> {
        let material = secure_material(settings);
        let cur = self.current();
        if cur.tls_material == material && matches!(cur.kind, ModeKind::Secure { .. }) {
            self.tx.send_replace(Arc::new(ActiveMode {
                generation: cur.generation,
                kind: secure_kind(settings),
                acceptor: cur.acceptor.clone(),
                tls_material: material,
            }));
            return Ok(false);
        }
        let acceptor = TlsAcceptor::from(tls::mtls_server_config(settings)?);
        self.tx.send_replace(Arc::new(ActiveMode {
            generation: cur.generation + 1,
            kind: secure_kind(settings),
            acceptor,
            tls_material: material,
        }));
        Ok(true)
    }
}

/// Accepts TCP connections and runs each TLS handshake in its own task with the acceptor
/// of the current mode; finished connections go to tonic through `tx`.
async fn accept_loop(
    listener: TcpListener,
    control: Arc<ApiControl>,
    tx: mpsc::Sender<Result<tls::PeerStream, std::io::Error>>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else {
            return;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("machined: API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let mode = control.current();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, mode.acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx
                        .send(Ok(tls::PeerStream::new(stream, mode.generation)))
                        .await;
                }
                Ok(Err(e)) => eprintln!("machined: TLS handshake with {addr} refused: {e}"),
                Err(_) => eprintln!("machined: TLS handshake with {addr} timed out"),
            }
        });
    }
}

/// Serves the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, node: Arc<Node>) -> Result<(), ApiError> {
    let (tx, rx) = mpsc::channel(MAX_PENDING_HANDSHAKES);
    tokio::spawn(accept_loop(listener, node.api.clone(), tx));
    let guard = guard::GuardLayer::new(
        node.api.clone(),
        node.audit.clone(),
        node.time_floor.clone(),
    );
    tonic::transport::Server::builder()
        .layer(guard)
        .add_service(MachineServiceServer::new(machine::MachineApi::new(
            node.clone(),
        )))
        .add_service(ResourceServiceServer::new(resource::ResourceApi::new(
            node.resources.clone(),
        )))
        .add_service(AuditServiceServer::new(audit_service::AuditApi::new(
            node.audit.clone(),
        )))
        .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    Ok(())
}
