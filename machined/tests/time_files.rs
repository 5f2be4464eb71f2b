//! Files, module parameters and time sync against a dev-mode machined.
//!
//! The time test runs chrony's `chronyd` (a reference NTP server nobody here wrote) on a
//! loopback port with `-x` (it never touches the host clock) and gives machined a simulated
//! clock 5 s behind: machined must query it, compute the offset and step its clock.

mod common;

use basalt_proto::resource::v1 as rs;
use common::{Fixture, Machined};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn dev_state(node: &Machined) -> serde_json::Value {
    let data = std::fs::read(node.state.join(machined::host::DEV_STATE_FILE)).unwrap();
    serde_json::from_slice(&data).unwrap()
}

async fn wait_for(node: &Machined, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !node.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?} within {secs} s:\n{}",
            node.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn resource(
    fx: &Fixture,
    node: &Machined,
    ns: &str,
    kind: &str,
    id: &str,
) -> serde_json::Value {
    let mut c = fx.connect(node, "reader", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = c
            .resource
            .get(rs::GetRequest {
                namespace: ns.into(),
                r#type: kind.into(),
                id: id.into(),
            })
            .await;
        if let Ok(r) = r
            && let Some(r) = r.into_inner().resource
        {
            return serde_json::from_slice(&r.spec_json).unwrap();
        }
        assert!(Instant::now() < deadline, "no resource {ns}/{kind}/{id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn files_and_module_parameters_are_applied_and_kept() {
    let fx = Fixture::new();
    let state = fx.state_dir("files");
    let config = format!(
        "{}kernelModules:\n  - name: dummy\n    parameters: [numdummies=2]\n\
         files:\n  - path: /etc/app/app.conf\n    content: \"level=3\\n\"\n    mode: \"0600\"\n\
         \x20 - path: /var/log/notes\n    content: \"from config\\n\"\n    op: append\n",
        fx.config_yaml
    );
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    let root = state.join(machined::host::DEV_ROOT_DIR);
    std::fs::create_dir_all(root.join("var/log")).unwrap();
    std::fs::write(root.join("var/log/notes"), "already here\n").unwrap();
    let node = Machined::start_with(&state, &["--reconcile-interval", "1"]);

    let app = root.join("etc/app/app.conf");
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "level=3\n");
    assert_eq!(
        std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(root.join("var/log/notes")).unwrap(),
        "already here\nfrom config\n"
    );
    let actions = std::fs::read_to_string(state.join(machined::host::DEV_ACTIONS_FILE)).unwrap();
    assert!(
        actions.contains(r#""action":"load_module","name":"dummy","parameters":["numdummies=2"]"#),
        "{actions}"
    );

    // Somebody edits the file and loosens its mode: the next round puts both back.
    std::fs::write(&app, "level=9\n").unwrap();
    wait_for(
        &node,
        "drift corrected: file /etc/app/app.conf had other content",
        20,
    )
    .await;
    assert_eq!(std::fs::read_to_string(&app).unwrap(), "level=3\n");
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o666)).unwrap();
    wait_for(
        &node,
        "drift corrected: file /etc/app/app.conf had another mode",
        20,
    )
    .await;
    assert_eq!(
        std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // Appending is not repeated while the content is there.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(root.join("var/log/notes")).unwrap(),
        "already here\nfrom config\n"
    );
    let file = resource(&fx, &node, "machine", "File", "/etc/app/app.conf").await;
    assert_eq!(file["inSync"], true, "{file}");
    assert_eq!(file["mode"], "0600", "{file}");
    let module = resource(&fx, &node, "machine", "KernelModule", "dummy").await;
    assert_eq!(module["parameters"][0], "numdummies=2", "{module}");
}

/// chronyd serving its (the host's) clock on a loopback port; killed on drop.
struct Chronyd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Chronyd {
    fn start() -> Chronyd {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n\
                 pidfile {}\n",
                dir.path().join("chronyd.pid").display()
            ),
        )
        .unwrap();
        let user = if is_root() { "root" } else { "_chrony" };
        let child = Command::new("chronyd")
            .args(["-x", "-d", "-u", user, "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("chronyd not found ({e}): run scripts/setup-host"));
        Chronyd {
            child,
            port,
            _dir: dir,
        }
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_clock_is_stepped_from_a_reference_ntp_server() {
    let chronyd = Chronyd::start();
    let fx = Fixture::new();
    let state = fx.state_dir("time");
    // The first server does not answer; the second is chronyd.
    let config = format!(
        "{}timeServers: [\"127.0.0.1:9\", \"127.0.0.1:{}\"]\n",
        fx.config_yaml, chronyd.port
    );
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    // The node "booted" with its clock 5 s behind.
    std::fs::write(
        state.join(machined::host::DEV_STATE_FILE),
        br#"{"clock_offset_ns": -5000000000}"#,
    )
    .unwrap();
    let node = Machined::start_with(&state, &["--time-sync-interval", "2"]);
    wait_for(&node, "clock stepped by", 30).await;
    let offset = dev_state(&node)["clock_offset_ns"].as_i64().unwrap();
    assert!(offset.abs() < 100_000_000, "clock still {offset} ns off");
    let status = resource(&fx, &node, "time", "TimeStatus", "status").await;
    assert_eq!(status["synced"], true, "{status}");
    assert_eq!(
        status["server"],
        format!("127.0.0.1:{}", chronyd.port),
        "{status}"
    );
    assert_eq!(status["stratum"], 8, "{status}");
    // Once right, later polls leave the clock alone.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        node.stderr().matches("clock stepped by").count(),
        1,
        "{}",
        node.stderr()
    );
    let offset_ms = resource(&fx, &node, "time", "TimeStatus", "status").await["offsetMs"]
        .as_f64()
        .unwrap();
    assert!(offset_ms.abs() < 128.0, "{offset_ms}");
}
