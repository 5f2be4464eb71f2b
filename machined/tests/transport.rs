//! Transport security and the audit trail end to end: mutual TLS refusals, TLS 1.3 only,
//! maintenance mode and its switch to mutual TLS, audit entries for allowed and denied calls.

mod common;

use basalt_proto::audit::v1::QueryRequest;
use basalt_proto::machine::v1 as pb;
use basaltctl::connect::{ServerTrust, TlsSettings};
use common::{Fixture, Machined, audit, code, connect_with, now, pinned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tonic::Code;

#[tokio::test]
async fn clients_without_a_valid_certificate_are_refused() {
    let fx = Fixture::new();
    let node = fx.start_configured("mtls");
    let ca = fx.ca.pem().cert_pem;
    // No client certificate: the handshake (or the first call) fails.
    let no_cert = TlsSettings {
        trust: ServerTrust::Ca(
            CertificateDer::pem_slice_iter(ca.as_bytes())
                .map(|c| c.unwrap())
                .collect(),
        ),
        identity: None,
    };
    let refused = match connect_with(&node, &no_cert, None).await {
        Err(_) => true,
        Ok(mut c) => c.machine.version(pb::VersionRequest {}).await.is_err(),
    };
    assert!(refused, "a client without certificate must be refused");
    // A certificate from another CA (with the admin role) is refused too.
    let other = basaltctl::secrets::Ca::generate("rogue CA", 30).unwrap();
    let rogue = other.issue_client("admin", &["basalt:admin"], 30).unwrap();
    let tls = TlsSettings::mutual(&ca, &rogue.cert_pem, &rogue.key_pem).unwrap();
    let refused = match connect_with(&node, &tls, None).await {
        Err(_) => true,
        Ok(mut c) => c.machine.version(pb::VersionRequest {}).await.is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");
    // The server refuses them at the TLS layer, before any RPC.
    let mut ok = fx.connect(&node, "admin", None).await.unwrap();
    let rpcs: Vec<_> = audit(&mut ok, "")
        .await
        .into_iter()
        .map(|e| e.rpc)
        .collect();
    assert!(rpcs.iter().all(|r| r.ends_with("/Query")), "{rpcs:?}");
    assert!(
        node.stderr().contains("TLS handshake with"),
        "{}",
        node.stderr()
    );
}

fn tls_client(
    fx: &Fixture,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(fx.ca.pem().cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let admin = fx.client("admin");
    let chain = CertificateDer::pem_slice_iter(admin.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(admin.key_pem.as_bytes()).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

async fn handshake(node: &Machined, config: rustls::ClientConfig) -> Result<(), std::io::Error> {
    let tcp = tokio::net::TcpStream::connect(&node.addr).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // TLS 1.3 reports client-certificate problems after the handshake: read once.
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    tls.flush().await
}

#[tokio::test]
async fn tls_1_2_clients_are_refused() {
    let fx = Fixture::new();
    let node = fx.start_configured("tls12");
    handshake(&node, tls_client(&fx, &rustls::version::TLS13))
        .await
        .expect("the same client over TLS 1.3 is accepted");
    let err = handshake(&node, tls_client(&fx, &rustls::version::TLS12))
        .await
        .expect_err("TLS 1.2 must be refused");
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
    // Maintenance mode is TLS 1.3 only too.
    let fresh = Machined::start(&fx.state_dir("tls12-maint"));
    let err = handshake(&fresh, tls_client(&fx, &rustls::version::TLS12))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ProtocolVersion"), "{err}");
}

#[tokio::test]
async fn maintenance_mode_serves_version_and_apply_then_requires_mutual_tls() {
    let fx = Fixture::new();
    let state = fx.state_dir("maint");
    let node = Machined::start(&state);
    let fp = node
        .fingerprint
        .clone()
        .expect("fingerprint printed on stderr");
    assert_eq!(fp.len(), 64);
    assert!(
        std::fs::read_to_string(state.join("machined.log"))
            .unwrap()
            .contains(&fp)
    );
    // A wrong fingerprint is refused by the client.
    let wrong = format!("{}{}", &fp[..63], if fp.ends_with('0') { "1" } else { "0" });
    assert!(connect_with(&node, &pinned(&wrong), None).await.is_err());
    let mut c = connect_with(&node, &pinned(&fp), None).await.unwrap();
    let v = c
        .machine
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v.maintenance && v.machine_id.is_empty());
    // Only Version and ApplyConfiguration: no reads either (an unauthenticated caller on
    // the network learns nothing about the machine beyond its version).
    for (rpc, r) in [
        (
            "BootStatus",
            c.machine
                .boot_status(pb::BootStatusRequest {})
                .await
                .map(drop),
        ),
        (
            "Stats",
            c.machine.stats(pb::StatsRequest {}).await.map(drop),
        ),
        (
            "Processes",
            c.machine
                .processes(pb::ProcessesRequest::default())
                .await
                .map(drop),
        ),
        (
            "Logs",
            c.machine.logs(pb::LogsRequest::default()).await.map(drop),
        ),
        (
            "Dmesg",
            c.machine.dmesg(pb::DmesgRequest::default()).await.map(drop),
        ),
        (
            "Events",
            c.machine
                .events(pb::EventsRequest::default())
                .await
                .map(drop),
        ),
        (
            "audit Query",
            c.audit.query(QueryRequest::default()).await.map(drop),
        ),
        (
            "Reboot",
            c.machine
                .reboot(pb::RebootRequest::default())
                .await
                .map(drop),
        ),
        (
            "Shutdown",
            c.machine
                .shutdown(pb::ShutdownRequest::default())
                .await
                .map(drop),
        ),
        (
            "GetConfiguration",
            c.machine
                .get_configuration(pb::GetConfigurationRequest {})
                .await
                .map(drop),
        ),
    ] {
        assert_eq!(
            code(&r),
            Code::PermissionDenied,
            "{rpc} in maintenance mode"
        );
    }
    assert!(
        !state.join("host-actions.jsonl").exists(),
        "no host action in maintenance"
    );
    // Apply the configuration over the pinned connection.
    let a = c
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: fx.config_yaml.clone().into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(a.message.contains("mutual TLS"), "{}", a.message);
    // The maintenance connection is dead, a new pinned one is refused, mTLS works.
    let stale = c.machine.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(stale.code(), Code::Unavailable, "{stale:?}");
    let refused = match connect_with(&node, &pinned(&fp), None).await {
        Err(_) => true,
        Ok(mut c) => c.machine.version(pb::VersionRequest {}).await.is_err(),
    };
    assert!(
        refused,
        "after the switch a maintenance client must be refused"
    );
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let v = admin
        .machine
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((v.maintenance, v.machine_id.as_str()), (false, "node-1"));
    // The audit log kept the maintenance calls, allowed and denied, without the caller's
    // certificate (there was none) but with its address.
    let entries = audit(&mut admin, "").await;
    let maint: Vec<_> = entries
        .iter()
        .filter(|e| e.reason.contains("maintenance mode"))
        .collect();
    assert!(
        maint
            .iter()
            .any(|e| e.rpc.ends_with("/ApplyConfiguration") && e.result == "OK")
    );
    assert!(
        maint
            .iter()
            .any(|e| e.rpc.ends_with("/Reboot") && e.result == "PERMISSION_DENIED")
    );
    assert!(
        maint
            .iter()
            .all(|e| e.caller.as_ref().unwrap().subject.is_empty())
    );
    // A restart on the same state comes up in mutual TLS with the stored configuration.
    drop(admin);
    drop(node);
    let node = Machined::start(&state);
    assert!(node.fingerprint.is_none(), "{}", node.stderr());
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    admin.machine.version(pb::VersionRequest {}).await.unwrap();
}

#[tokio::test]
async fn audit_trail_records_allowed_and_denied_calls_without_secrets() {
    let fx = Fixture::new();
    let node = fx.start_configured("audit");
    let mut reader = fx.connect(&node, "reader", None).await.unwrap();
    reader.machine.version(pb::VersionRequest {}).await.unwrap();
    reader
        .machine
        .reboot(pb::RebootRequest::default())
        .await
        .unwrap_err();
    let denied = reader
        .audit
        .query(QueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "readers may not read the audit log"
    );
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    admin
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: fx.config_yaml.clone().into_bytes(),
            dry_run: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut operator = fx.connect(&node, "operator", None).await.unwrap();
    let all = operator
        .audit
        .query(QueryRequest {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let find = |rpc: &str, result: &str| {
        all.iter()
            .find(|e| e.rpc.ends_with(rpc) && e.result == result)
            .unwrap_or_else(|| panic!("no {rpc} {result} entry in {all:#?}"))
    };
    let ok = find("/Version", "OK");
    let caller = ok.caller.as_ref().unwrap();
    assert!(caller.subject.contains("CN=reader") && caller.subject.contains("basalt:reader"));
    assert_eq!(caller.fingerprint.len(), 64);
    assert!(caller.address.starts_with("127.0.0.1:"));
    assert!(ok.allowed && ok.time.is_some());
    let no = find("/Reboot", "PERMISSION_DENIED");
    assert!(!no.allowed && no.reason.contains("may not call"), "{no:?}");
    find("/Query", "PERMISSION_DENIED");
    let apply = find("/ApplyConfiguration", "OK");
    assert!(apply.summary.contains("sha256=") && apply.summary.contains("dry_run=true"));
    // Filters: result, rpc, since, limit.
    let q = |req: QueryRequest| {
        let mut a = admin.clone();
        async move { a.audit.query(req).await.unwrap().into_inner() }
    };
    let denied = q(QueryRequest {
        result: "DENIED".into(),
        limit: 100,
        ..Default::default()
    })
    .await;
    assert!(denied.entries.iter().all(|e| !e.allowed) && denied.entries.len() >= 2);
    let future = QueryRequest {
        since: Some(prost_types::Timestamp {
            seconds: now() as i64 + 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    assert!(q(future).await.entries.is_empty());
    let one = q(QueryRequest {
        limit: 1,
        ..Default::default()
    })
    .await;
    assert!(one.truncated && one.entries.len() == 1);
    // On disk: one JSON object per line, and never a private key.
    let text = std::fs::read_to_string(node.state.join("audit/audit.jsonl")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
        assert!(v["duration_ms"].is_u64());
    }
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains(fx.server.key_pem.lines().nth(1).unwrap())
    );
}

/// The first apply in maintenance mode ends it for good: an apply that was authorized in
/// maintenance mode (same listener generation) but reaches the node after the switch is
/// refused, and the configuration stays the first one. Driven through `Node` directly, so
/// that the second call is certainly "in flight" across the switch.
#[tokio::test]
async fn an_apply_authorized_before_the_switch_is_refused_after_it() {
    use basalt_bootloader::uboot_backend::UbootBootloader;
    use basalt_bootloader::{Bootloader, Slot};
    use machined::api::{ApiControl, tls::MaintenanceCert};
    use machined::node::{ApplyMode, Node, NodeError, NodeParts};
    let fx = Fixture::new();
    let state = fx.state_dir("race");
    let cert = MaintenanceCert::generate(vec!["127.0.0.1".into()]).unwrap();
    let node = Arc::new(Node::new(NodeParts {
        dev: true,
        state_dir: state.clone(),
        config: machined::state::ConfigStore::open(&state).unwrap(),
        host: Arc::new(machined::host::DevHost::new(&state)),
        boot: (
            Box::new(UbootBootloader::in_memory(Some(Slot::A))) as Box<dyn Bootloader + Send>,
            "memory".into(),
        ),
        audit: Arc::new(machined::audit::AuditLog::open(&state.join("audit"), 1 << 20, 2).unwrap()),
        api: Arc::new(ApiControl::maintenance(&cert).unwrap()),
        containers: None,
    }));
    let maintenance = node.api.current().generation;
    let first = node
        .apply_config(
            fx.config_yaml.as_bytes(),
            ApplyMode::Auto,
            false,
            Some(maintenance),
        )
        .await
        .unwrap();
    assert_eq!(first.version, 1);
    assert!(!node.api.is_maintenance());
    let other = fx
        .config_yaml
        .replace("hostname: node-1", "hostname: intruder");
    let e = node
        .apply_config(other.as_bytes(), ApplyMode::Auto, false, Some(maintenance))
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::Superseded { .. }), "{e}");
    assert!(e.to_string().contains("reconnect"), "{e}");
    let (current, _) = node.get_config().unwrap();
    assert_eq!(
        (current.version, current.data),
        (1, fx.config_yaml.clone().into_bytes())
    );
    assert_eq!(
        node.applied.latest().unwrap().config.machine.hostname,
        "node-1"
    );
}
