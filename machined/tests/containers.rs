//! Container services against a real containerd (Debian 13's, run by machined as its system
//! service with its root, state and socket under the test's state directory, with this
//! host's runc) and a real registry (Debian's docker-registry over TLS from a test CA), the
//! images built by the tests from busybox and pushed with skopeo.
//!
//! One machined runs the whole sequence: pull and run, logs, a program depending on a
//! container, a shared volume, limits in the container's cgroup, bad images and devices
//! that fail alone, a container killed from outside restarted, a config change recreating
//! only what changed, and removal. containerd's own `ctr` checks what machined says.

mod common;

use basalt_proto::machine::v1 as pb;
use basalt_tests::containers::{
    ContainerdCleanup, HTTPD_INDEX, OciImage, Registry, busybox_httpd_image, busybox_static,
    containerd_bin_dir, push,
};
use basaltctl::connect::Clients;
use common::{Fixture, Machined};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Waits until `check` returns `Some`, at most `within`; panics with `what` and the last
/// service list otherwise.
async fn wait_for<T>(
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

async fn list(c: &mut Clients) -> Vec<pb::ServiceInfo> {
    c.machine
        .service_list(pb::ServiceListRequest {})
        .await
        .unwrap()
        .into_inner()
        .services
}

fn find<'a>(services: &'a [pb::ServiceInfo], id: &str) -> Option<&'a pb::ServiceInfo> {
    services.iter().find(|s| s.id == id)
}

fn running(services: &[pb::ServiceInfo], id: &str) -> Option<pb::ServiceInfo> {
    find(services, id)
        .filter(|s| s.state == pb::ServiceState::Running as i32 && s.healthy)
        .cloned()
}

async fn logs(c: &mut Clients, service: &str) -> String {
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

fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sf", "-m", "3", url])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn wait_curl(url: &str, want: &str) {
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
fn ctr(state: &Path, args: &[&str]) -> String {
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
fn cgroup_value(paths: &[&str]) -> String {
    for path in paths {
        if let Ok(s) = std::fs::read_to_string(path) {
            return s.trim().to_string();
        }
    }
    panic!("none of {paths:?} exists");
}

fn services_yaml(registry: &Registry, mode: &str, extra: &str) -> String {
    let ca: String = registry
        .ca_pem()
        .unwrap()
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let r = registry.addr();
    format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n\
         registries:\n  - host: {r}\n    ca: |\n{ca}\
         services:\n\
         \x20 - name: web\n    image: {r}/httpd:v1\n    memory: 32Mi\n    cpu: 500m\n\
         \x20   volumes: [{{name: shared, mountPath: /www/shared, readOnly: true}}]\n\
         \x20   devices: [/dev/net/tun]\n\
         \x20 - name: worker\n    image: {r}/shell:v1\n    dependsOn: [web]\n\
         \x20   args: ['echo started $MODE; echo note-$MODE > /data/note.txt; exec sleep 300']\n\
         \x20   env: {{MODE: {mode}}}\n\
         \x20   volumes: [{{name: shared, mountPath: /data}}]\n\
         \x20 - name: helper\n    command: /bin/sh\n    args: [-c, 'exec sleep 300']\n    dependsOn: [worker]\n\
         {extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_run_fail_alone_restart_and_follow_the_config() {
    let fx = Fixture::new();
    let work = fx.state_dir("work");
    let registry = Registry::start(&work.join("registry"), true);
    let port = basalt_tests::free_port();
    push(
        &busybox_httpd_image(&work.join("httpd"), "amd64", port),
        &registry.reference("httpd:v1"),
        &registry,
    );
    let shell = OciImage::new("amd64")
        .file("/bin/busybox", &busybox_static("amd64"), 0o755)
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo idle; exec sleep 300"])
        .env(&["PATH=/bin"])
        .write(&work.join("shell"));
    push(&shell, &registry.reference("shell:v1"), &registry);
    let alien = OciImage::new("arm64")
        .file_bytes("/hello", "arm64 only", 0o644)
        .entrypoint(&["/hello"])
        .write(&work.join("alien"));
    push(&alien, &registry.reference("alien:v1"), &registry);

    let r = registry.addr();
    let bad = format!(
        "  - name: ghost\n    image: {r}/ghost:v1\n\
         \x20 - name: alien\n    image: {r}/alien:v1\n\
         \x20 - name: nodev\n    image: {r}/shell:v1\n    devices: [/dev/gpiochip-basalt-none]\n"
    );
    let state = fx.state_dir("node");
    let config = format!(
        "{}{}",
        fx.config_yaml,
        services_yaml(&registry, "blue", &bad)
    );
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(config.as_bytes())
        .unwrap();
    let bin = containerd_bin_dir("amd64");
    // Dropped after machined: containerd, its shims and containers end with the test.
    let _containerd = ContainerdCleanup(state.clone());
    let node = Machined::start_with(
        &state,
        &[
            "--service-backoff-ms",
            "200",
            "--service-restart-limit",
            "2",
            "--service-stop-timeout-ms",
            "2000",
            "--containerd-bin",
            bin.to_str().unwrap(),
        ],
    );
    let mut c = fx.connect(&node, "admin", None).await.unwrap();

    // Pulled and running; a program after the container it depends on; a shared volume.
    let minute = Duration::from_secs(60);
    let web = wait_for(&mut c, "web running", minute, |s| running(s, "web")).await;
    wait_curl(&format!("http://127.0.0.1:{port}/"), HTTPD_INDEX).await;
    let worker = wait_for(&mut c, "worker running", minute, |s| running(s, "worker")).await;
    wait_for(&mut c, "helper running", minute, |s| running(s, "helper")).await;
    wait_curl(
        &format!("http://127.0.0.1:{port}/shared/note.txt"),
        "note-blue\n",
    )
    .await;
    assert!(
        state.join("containerd/volumes/shared/note.txt").is_file(),
        "the volume lives under the state (DATA) directory"
    );
    assert!(logs(&mut c, "worker").await.contains("started blue"));
    assert!(
        logs(&mut c, "web").await.contains("response:200"),
        "httpd's access log reaches Logs"
    );

    // Limits in the container's cgroup.
    assert_eq!(
        cgroup_value(&[
            "/sys/fs/cgroup/memory/basalt/web/memory.limit_in_bytes",
            "/sys/fs/cgroup/basalt/web/memory.max"
        ]),
        (32u64 << 20).to_string()
    );
    let cpu = cgroup_value(&[
        "/sys/fs/cgroup/cpu,cpuacct/basalt/web/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/basalt/web/cpu.cfs_quota_us",
        "/sys/fs/cgroup/basalt/web/cpu.max",
    ]);
    assert!(cpu.starts_with("50000"), "{cpu}");
    let tasks = ctr(&state, &["tasks", "ls"]);
    for id in ["web", "worker"] {
        assert!(
            tasks
                .lines()
                .any(|l| l.starts_with(id) && l.contains("RUNNING")),
            "{tasks}"
        );
    }

    // Bad images and devices fail alone, each saying why.
    let ghost = wait_for(&mut c, "ghost retrying", minute, |s| {
        find(s, "ghost")
            .filter(|g| g.message.contains("retrying in"))
            .cloned()
    })
    .await;
    assert!(
        ghost.message.contains("pull failed") && ghost.message.contains("ghost:v1"),
        "{ghost:?}"
    );
    let alien = wait_for(&mut c, "alien failed", minute, |s| {
        find(s, "alien")
            .filter(|a| a.message.contains("linux/amd64"))
            .cloned()
    })
    .await;
    assert!(
        alien.message.contains("alien:v1") && alien.message.contains("linux/amd64"),
        "{alien:?}"
    );
    let nodev = wait_for(&mut c, "nodev failed", minute, |s| {
        find(s, "nodev")
            .filter(|n| n.message.contains("gave up"))
            .cloned()
    })
    .await;
    assert!(
        nodev.message.contains("device /dev/gpiochip-basalt-none"),
        "{nodev:?}"
    );

    // Killed from outside: restarted.
    Command::new("kill")
        .args(["-9", &web.pid.to_string()])
        .status()
        .unwrap();
    let again = wait_for(&mut c, "web restarted", minute, |s| {
        running(s, "web").filter(|w| w.pid != web.pid && w.restarts >= 1)
    })
    .await;
    wait_curl(&format!("http://127.0.0.1:{port}/"), HTTPD_INDEX).await;

    // A changed service is recreated with what depends on it; the others keep running; the
    // removed ones are stopped and their containers removed.
    let helper = running(&list(&mut c).await, "helper").unwrap();
    let changed = format!(
        "{}{}",
        fx.config_yaml,
        services_yaml(&registry, "green", "")
    );
    c.machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: changed.into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_curl(
        &format!("http://127.0.0.1:{port}/shared/note.txt"),
        "note-green\n",
    )
    .await;
    let services = wait_for(&mut c, "recreated", minute, |s| {
        let w = running(s, "worker")?;
        let h = running(s, "helper")?;
        (w.pid != worker.pid && h.pid != helper.pid && s.len() == 4).then(|| s.to_vec())
    })
    .await;
    assert_eq!(
        running(&services, "web").unwrap().pid,
        again.pid,
        "web did not change: kept running"
    );
    assert!(logs(&mut c, "worker").await.contains("started green"));
    let containers = ctr(&state, &["containers", "ls", "-q"]);
    let mut ids: Vec<&str> = containers.lines().collect();
    ids.sort();
    assert_eq!(
        ids,
        ["web", "worker"],
        "removed services leave no container"
    );
    drop(node);
}
