//! Helpers of the container tests: dev-mode machined with the pinned containerd, waiting
//! on the service list, logs, curl, containerd's own `ctr`, and ServiceConfigs that trust a
//! test registry.

use super::Machined;
use basalt_proto::machine::v1 as pb;
use basalt_tests::containers::{Registry, containerd_bin_dir};
use basaltctl::connect::Clients;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until `check` returns `Some`, at most `within`; panics with `what` and the last
/// service list otherwise.
pub async fn wait_for<T>(
    c: &mut Clients,
    what: &str,
    within: Duration,
    check: impl Fn(&[pb::ServiceInfo]) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let services = list(c).await;
        if let Some(v) = check(&services) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {services:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn list(c: &mut Clients) -> Vec<pb::ServiceInfo> {
    c.machine
        .service_list(pb::ServiceListRequest {})
        .await
        .unwrap()
        .into_inner()
        .services
}

pub fn find<'a>(services: &'a [pb::ServiceInfo], id: &str) -> Option<&'a pb::ServiceInfo> {
    services.iter().find(|s| s.id == id)
}

pub fn running(services: &[pb::ServiceInfo], id: &str) -> Option<pb::ServiceInfo> {
    find(services, id)
        .filter(|s| s.state == pb::ServiceState::Running as i32 && s.healthy)
        .cloned()
}

pub async fn logs(c: &mut Clients, service: &str) -> String {
    let mut stream = c
        .machine
        .logs(pb::LogsRequest {
            service: service.into(),
            follow: false,
            tail_lines: 200,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    while let Some(line) = stream.message().await.unwrap() {
        out.push_str(&line.message);
        out.push('\n');
    }
    out
}

pub fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "3", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn wait_curl(url: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if curl(url).as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never answered {want:?} (last: {:?})",
            curl(url)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ctr` (containerd's own client) against machined's containerd, in Basalt's namespace.
pub fn ctr(state: &Path, args: &[&str]) -> String {
    let out = Command::new(containerd_bin_dir("amd64").join("ctr"))
        .arg("--address")
        .arg(state.join("containerd/containerd.sock"))
        .args(["--namespace", "basalt"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the first of `paths` (cgroup files in the v1 or v2 layout) that exists.
pub fn cgroup_value(paths: &[&str]) -> String {
    for path in paths {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s.trim().to_string();
        }
    }
    panic!("none of {paths:?} exists");
}

/// A dev-mode machined with `config` stored, the pinned containerd as its runtime, a short
/// service backoff and `extra` arguments.
pub fn start_machined(state: &Path, config: &str, extra: &[&str]) -> Machined {
    machined::state::ConfigStore::open(state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    let bin = containerd_bin_dir("amd64");
    let mut args = vec![
        "--service-backoff-ms",
        "200",
        "--containerd-bin",
        bin.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Machined::start_with(state, &args)
}

/// A ServiceConfig trusting `registry`, with `services` (YAML list items); unused images
/// are removed by themselves only when the disk is full.
pub fn service_config(registry: &Registry, services: &str) -> String {
    service_config_gc(registry, services, 100)
}

/// The same, removing unused images once the disk is `gc_percent` full.
pub fn service_config_gc(registry: &Registry, services: &str, gc_percent: u8) -> String {
    let ca: String = registry
        .ca_pem()
        .unwrap()
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let r = registry.addr();
    format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n\
         imageGC:\n  highPercent: {gc_percent}\n\
         registries:\n  - host: {r}\n    ca: |\n{ca}\
         services:\n{services}"
    )
}

pub async fn apply(c: &mut Clients, config: String) {
    c.machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: config.into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
}

pub async fn images(c: &mut Clients) -> Vec<pb::ImageInfo> {
    c.machine
        .image_list(pb::ImageListRequest {})
        .await
        .unwrap()
        .into_inner()
        .images
}

/// `ctr images ls` as (name, digest, size) rows.
pub fn ctr_images(state: &Path) -> Vec<(String, String, String)> {
    ctr(state, &["images", "ls"])
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].into(), f[2].into(), format!("{} {}", f[3], f[4]))
        })
        .collect()
}

/// A size as containerd's `ctr` prints it (binary units, one decimal).
pub fn ctr_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let (mut size, mut unit) = (bytes as f64, 0);
    while size >= 1024.0 && unit < units.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", units[unit])
}
