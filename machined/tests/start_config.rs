//! A stored configuration that cannot be used never reopens maintenance mode: dev-mode
//! machined on a STATE whose newest configuration is damaged starts with the newest usable
//! one, or locked to the stored CA, and says so.

mod common;

use basalt_proto::machine::v1 as pb;
use common::{Fixture, Machined};
use machined::start_config::{StartConfig, choose};
use machined::state::ConfigStore;

/// A MachineConfig field this release does not know (a newer schema, or damage).
fn with_unknown_field(config: &str) -> String {
    config.replacen("hostname: node-1", "hostname: node-1\nfutureField: 1", 1)
}

#[tokio::test]
async fn a_damaged_current_configuration_falls_back_to_the_newest_usable_one() {
    let fx = Fixture::new();
    let state = fx.state_dir("fallback");
    let store = ConfigStore::open(&state).unwrap();
    store.store(fx.config_yaml.as_bytes()).unwrap();
    store
        .store(with_unknown_field(&fx.config_yaml).as_bytes())
        .unwrap();
    let node = Machined::start(&state);
    let log = node.stderr();
    assert!(node.fingerprint.is_none(), "no maintenance mode:\n{log}");
    assert!(
        log.contains("stored configuration version 2: ") && log.contains("passed over"),
        "{log}"
    );
    assert!(
        log.contains("started with configuration version 1, the newest usable one"),
        "{log}"
    );
    assert!(log.contains("(mutual TLS, configuration locked)"), "{log}");
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let v = admin
        .machine
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.machine_id, "node-1");
    assert!(!v.maintenance);
    let lock = config_lock(&mut admin).await;
    assert_eq!(lock.len(), 1, "{lock:?}");
    assert_eq!(
        (lock[0]["locked"].clone(), lock[0]["version"].clone()),
        (serde_json::json!(false), serde_json::json!(1)),
        "{lock:?}"
    );
}

/// The specs of the `config/ConfigLock` resources (what `basaltctl health` reads).
async fn config_lock(c: &mut basaltctl::connect::Clients) -> Vec<serde_json::Value> {
    c.resource
        .list(basalt_proto::resource::v1::ListRequest {
            namespace: "config".into(),
            r#type: "ConfigLock".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .resources
        .iter()
        .map(|r| serde_json::from_slice(&r.spec_json).unwrap())
        .collect()
}

#[tokio::test]
async fn no_usable_configuration_locks_the_api_to_the_stored_ca() {
    let fx = Fixture::new();
    let state = fx.state_dir("locked");
    ConfigStore::open(&state)
        .unwrap()
        .store(with_unknown_field(&fx.config_yaml).as_bytes())
        .unwrap();
    let node = Machined::start(&state);
    let log = node.stderr();
    assert!(node.fingerprint.is_none(), "no maintenance mode:\n{log}");
    assert!(
        log.contains("locked (mutual TLS with the stored CA"),
        "{log}"
    );
    // An administrator can still reach the node, sees why it is locked, and can replace
    // the configuration, which ends the lock.
    let mut admin = fx.connect(&node, "admin", None).await.unwrap();
    let lock = config_lock(&mut admin).await;
    assert_eq!(lock.len(), 1, "{lock:?}");
    assert_eq!(lock[0]["locked"], true, "{lock:?}");
    assert!(
        lock[0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("futureField"),
        "{lock:?}"
    );
    admin
        .machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: fx.config_yaml.clone().into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        config_lock(&mut admin).await,
        Vec::<serde_json::Value>::new()
    );
    // A client certificate of another CA is refused as before.
    let other = Fixture::new();
    assert!(other.connect(&node, "admin", None).await.is_err());
}

#[test]
fn nothing_stored_is_maintenance_and_nothing_decodable_serves_no_api() {
    let dir = tempfile::tempdir().unwrap();
    let store = ConfigStore::open(dir.path()).unwrap();
    assert!(matches!(choose(&store).unwrap(), StartConfig::Unconfigured));
    store.store(b"apiVersion: [\n").unwrap();
    match choose(&store).unwrap() {
        StartConfig::Locked { settings, problems } => {
            assert!(settings.is_none());
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with("version 1: "), "{problems:?}");
        }
        _ => panic!("an undecodable store must be locked"),
    }
}
