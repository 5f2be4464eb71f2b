//! Test harness: dev-mode machined processes on 127.0.0.1 with ephemeral ports, killed on
//! drop (also when a test fails), and the secrets and configurations they use.

#![allow(dead_code)]

use basalt_proto::audit::v1::QueryRequest;
use basalt_proto::machine::v1 as pb;
use basalt_proto::resource::v1 as rs;
use basaltctl::config::{MachineConfigInput, TokenKeyEntry, render_machine_config};
use basaltctl::connect::{self, Clients, ConnectError, ConnectOptions, ServerTrust, TlsSettings};
use basaltctl::secrets::{Ca, CertAndKey};
use basaltctl::token::TokenKey;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::Code;

pub mod containers;

/// A running dev-mode machined.
pub struct Machined {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The maintenance certificate fingerprint, when started in maintenance mode.
    pub fingerprint: Option<String>,
    /// The state directory.
    pub state: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Machined {
    /// Starts machined on `state` and waits until it listens.
    pub fn start(state: &Path) -> Machined {
        Self::start_with(state, &[])
    }

    /// Starts machined on `state` with `extra` arguments and waits until it listens.
    pub fn start_with(state: &Path, extra: &[&str]) -> Machined {
        let mut child = Command::new(env!("CARGO_BIN_EXE_machined"))
            .args(["--dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn machined");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut fingerprint = None;
        let addr = loop {
            let line = match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("machined did not start:\n{}", stderr.lock().unwrap());
                }
            };
            if let Some(fp) = line.split("fingerprint: ").nth(1) {
                fingerprint = Some(fp.trim().to_string());
            }
            if let Some(rest) = line.split("API listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        Machined {
            child,
            addr,
            fingerprint,
            state: state.to_path_buf(),
            stderr,
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`, then SIGKILL) for machined to exit.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What machined printed so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Machined {
    /// An orderly stop (SIGTERM: machined stops its services, which run in process groups
    /// of their own and would outlive a SIGKILL), then SIGKILL if it takes too long.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate(Duration::from_secs(20));
        }
    }
}

/// A CA with certificates for every role and a configuration that uses them.
pub struct Fixture {
    /// The machine CA.
    pub ca: Ca,
    /// The node server certificate.
    pub server: CertAndKey,
    /// Client certificates by name: admin, operator, reader, nobody (no basalt role).
    pub clients: Vec<(&'static str, CertAndKey)>,
    /// The trusted token key (kid `ci`).
    pub token_key: TokenKey,
    /// The machine configuration (machine id `node-1`, cluster `lab`).
    pub config_yaml: String,
    /// Temporary directory holding state directories.
    pub dir: tempfile::TempDir,
}

impl Fixture {
    /// A fresh CA, certificates and configuration.
    pub fn new() -> Fixture {
        let ca = Ca::generate("test machine CA", 30).unwrap();
        let server = ca
            .issue_server(&["127.0.0.1".into(), "localhost".into()], 30)
            .unwrap();
        let mut clients = Vec::new();
        for (name, org) in [
            ("admin", "basalt:admin"),
            ("operator", "basalt:operator"),
            ("reader", "basalt:reader"),
            ("nobody", "acme:staff"),
        ] {
            clients.push((name, ca.issue_client(name, &[org], 30).unwrap()));
        }
        let token_key = TokenKey::generate().unwrap();
        let config_yaml = render_machine_config(
            &MachineConfigInput {
                hostname: "node-1".into(),
                cluster: Some("lab".into()),
                ca_pem: ca.pem().cert_pem,
                cert_pem: server.cert_pem.clone(),
                key_pem: server.key_pem.clone(),
                token_keys: vec![
                    TokenKeyEntry {
                        id: "ci".into(),
                        public_key: token_key.public_key_base64(),
                        audience: None,
                    },
                    TokenKeyEntry {
                        id: "fleet".into(),
                        public_key: token_key.public_key_base64(),
                        audience: Some("lab".into()),
                    },
                ],
            },
            &[],
        )
        .unwrap();
        Fixture {
            ca,
            server,
            clients,
            token_key,
            config_yaml,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A client certificate by name.
    pub fn client(&self, name: &str) -> &CertAndKey {
        &self.clients.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// A new empty state directory.
    pub fn state_dir(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Starts a node that already has this fixture's configuration.
    pub fn start_configured(&self, name: &str) -> Machined {
        let state = self.state_dir(name);
        machined::state::ConfigStore::open(&state)
            .unwrap()
            .store(self.config_yaml.as_bytes())
            .unwrap();
        let node = Machined::start(&state);
        assert!(node.fingerprint.is_none(), "{}", node.stderr());
        node
    }

    /// Mutual-TLS clients for `node` with client certificate `name` and optional token.
    pub async fn connect(
        &self,
        node: &Machined,
        name: &str,
        token: Option<String>,
    ) -> Result<Clients, ConnectError> {
        let c = self.client(name);
        let tls = TlsSettings::mutual(&self.ca.pem().cert_pem, &c.cert_pem, &c.key_pem)?;
        connect_with(node, &tls, token).await
    }
}

/// Connects without retries.
pub async fn connect_with(
    node: &Machined,
    tls: &TlsSettings,
    token: Option<String>,
) -> Result<Clients, ConnectError> {
    let opts = ConnectOptions {
        retries: 0,
        token,
        ..ConnectOptions::default()
    };
    connect::connect(&node.addr, tls, &opts).await
}

/// TLS settings pinning the maintenance certificate, without a client certificate.
pub fn pinned(fingerprint: &str) -> TlsSettings {
    TlsSettings {
        trust: ServerTrust::Fingerprint(fingerprint.to_string()),
        identity: None,
    }
}

/// Calls `rpc` (full method path) with a harmless request; ApplyConfiguration is a dry run.
pub async fn call(c: &mut Clients, rpc: &str, config: &str) -> Result<(), tonic::Status> {
    let m = &mut c.machine;
    let method = rpc.rsplit('/').next().unwrap();
    let service = rpc.split('/').nth(1).unwrap();
    match (service, method) {
        (_, "Version") => m.version(pb::VersionRequest {}).await.map(drop),
        (_, "ApplyConfiguration") => m
            .apply_configuration(pb::ApplyConfigurationRequest {
                data: config.as_bytes().to_vec(),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map(drop),
        (_, "GetConfiguration") => m
            .get_configuration(pb::GetConfigurationRequest {})
            .await
            .map(drop),
        (_, "Reboot") => m.reboot(pb::RebootRequest::default()).await.map(drop),
        (_, "Shutdown") => m.shutdown(pb::ShutdownRequest::default()).await.map(drop),
        (_, "Reset") => m.reset(pb::ResetRequest::default()).await.map(drop),
        (_, "BootStatus") => m.boot_status(pb::BootStatusRequest {}).await.map(drop),
        (_, "Rollback") => m.rollback(pb::RollbackRequest::default()).await.map(drop),
        (_, "ServiceList") => m.service_list(pb::ServiceListRequest {}).await.map(drop),
        (_, "ServiceStart") => m
            .service_start(pb::ServiceStartRequest::default())
            .await
            .map(drop),
        (_, "ServiceStop") => m
            .service_stop(pb::ServiceStopRequest::default())
            .await
            .map(drop),
        (_, "ServiceRestart") => m
            .service_restart(pb::ServiceRestartRequest::default())
            .await
            .map(drop),
        (_, "ImageList") => m.image_list(pb::ImageListRequest {}).await.map(drop),
        (_, "ImageRemove") => m
            .image_remove(pb::ImageRemoveRequest::default())
            .await
            .map(drop),
        (_, "ImagePrune") => m.image_prune(pb::ImagePruneRequest {}).await.map(drop),
        (_, "ImageImportStatus") => m
            .image_import_status(pb::ImageImportStatusRequest::default())
            .await
            .map(drop),
        (_, "ImageImport") => {
            // Only the options: the call gets past authorization and is then refused (no
            // sha256).
            let first = pb::ImageImportChunk {
                message: Some(pb::image_import_chunk::Message::Options(
                    pb::ImageImportOptions::default(),
                )),
            };
            m.image_import(tokio_stream::iter(vec![first]))
                .await
                .map(drop)
        }
        (_, "Logs") => m.logs(pb::LogsRequest::default()).await.map(drop),
        (_, "Dmesg") => m.dmesg(pb::DmesgRequest::default()).await.map(drop),
        (_, "Events") => m.events(pb::EventsRequest::default()).await.map(drop),
        (_, "Stats") => m.stats(pb::StatsRequest {}).await.map(drop),
        (_, "Processes") => m.processes(pb::ProcessesRequest {}).await.map(drop),
        (_, "Mounts") => m.mounts(pb::MountsRequest {}).await.map(drop),
        (_, "Disks") => m.disks(pb::DisksRequest {}).await.map(drop),
        ("basalt.resource.v1.ResourceService", "Get") => {
            c.resource.get(rs::GetRequest::default()).await.map(drop)
        }
        ("basalt.resource.v1.ResourceService", "List") => {
            c.resource.list(rs::ListRequest::default()).await.map(drop)
        }
        ("basalt.resource.v1.ResourceService", "Watch") => c
            .resource
            .watch(rs::WatchRequest::default())
            .await
            .map(drop),
        ("basalt.machine.v1.MachineService", "Upgrade") => {
            // Only the options: the call gets past authorization and is then refused
            // (no slot devices in this node, or an incomplete bundle).
            let first = pb::UpgradeChunk {
                message: Some(pb::upgrade_chunk::Message::Options(
                    pb::UpgradeOptions::default(),
                )),
            };
            c.machine
                .upgrade(tokio_stream::iter(vec![first]))
                .await
                .map(drop)
        }
        ("basalt.machine.v1.MachineService", "UpgradeFromUrl") => c
            .machine
            .upgrade_from_url(pb::UpgradeFromUrlRequest::default())
            .await
            .map(drop),
        ("basalt.machine.v1.MachineService", "UpgradePlan") => c
            .machine
            .upgrade_plan(pb::UpgradePlanRequest::default())
            .await
            .map(drop),
        ("basalt.machine.v1.MachineService", "UpgradeStatus") => c
            .machine
            .upgrade_status(pb::UpgradeStatusRequest {})
            .await
            .map(drop),
        ("basalt.audit.v1.AuditService", "Query") => {
            c.audit.query(QueryRequest::default()).await.map(drop)
        }
        _ => panic!("the test does not know how to call {rpc}"),
    }
}

pub fn code(r: &Result<(), tonic::Status>) -> Code {
    r.as_ref().err().map(|s| s.code()).unwrap_or(Code::Ok)
}

pub async fn audit(c: &mut Clients, rpc: &str) -> Vec<basalt_proto::audit::v1::AuditEntry> {
    c.audit
        .query(QueryRequest {
            rpc: rpc.to_string(),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
