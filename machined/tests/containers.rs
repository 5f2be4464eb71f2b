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

/// A dev-mode machined with `config` stored, the pinned containerd as its runtime, a short
/// service backoff and `extra` arguments.
fn start_machined(state: &Path, config: &str, extra: &[&str]) -> Machined {
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
fn service_config(registry: &Registry, services: &str) -> String {
    service_config_gc(registry, services, 100)
}

/// The same, removing unused images once the disk is `gc_percent` full.
fn service_config_gc(registry: &Registry, services: &str, gc_percent: u8) -> String {
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

fn services_yaml(registry: &Registry, mode: &str, extra: &str) -> String {
    let r = registry.addr();
    let services = format!(
        "\x20 - name: web\n    image: {r}/httpd:v1\n    memory: 32Mi\n    cpu: 500m\n\
         \x20   volumes: [{{name: shared, mountPath: /www/shared, readOnly: true}}]\n\
         \x20   devices: [/dev/net/tun]\n\
         \x20 - name: worker\n    image: {r}/shell:v1\n    dependsOn: [web]\n\
         \x20   args: ['echo started $MODE; echo note-$MODE > /data/note.txt; exec sleep 300']\n\
         \x20   env: {{MODE: {mode}}}\n\
         \x20   volumes: [{{name: shared, mountPath: /data}}]\n\
         \x20 - name: helper\n    command: /bin/sh\n    args: [-c, 'exec sleep 300']\n    dependsOn: [worker]\n\
         {extra}"
    );
    service_config(registry, &services)
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
    // Dropped after machined: containerd, its shims and containers end with the test.
    let _containerd = ContainerdCleanup(state.clone());
    let node = start_machined(
        &state,
        &config,
        &[
            "--service-restart-limit",
            "2",
            "--service-stop-timeout-ms",
            "2000",
            "--image-gc-interval",
            "1",
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
    images_are_listed_and_removed_when_unused(&mut c, &fx, &registry, &state).await;
    drop(node);
}

async fn apply(c: &mut Clients, config: String) {
    c.machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: config.into_bytes(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn images(c: &mut Clients) -> Vec<pb::ImageInfo> {
    c.machine
        .image_list(pb::ImageListRequest {})
        .await
        .unwrap()
        .into_inner()
        .images
}

/// `ctr images ls` as (name, digest, size) rows.
fn ctr_images(state: &Path) -> Vec<(String, String, String)> {
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
fn ctr_size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let (mut size, mut unit) = (bytes as f64, 0);
    while size >= 1024.0 && unit < units.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    format!("{size:.1} {}", units[unit])
}

/// ImageList against `ctr`, ImageRemove refused while a service uses the image, a removal
/// freeing the content, and ImagePrune.
async fn images_are_listed_and_removed_when_unused(
    c: &mut Clients,
    fx: &Fixture,
    registry: &Registry,
    state: &Path,
) {
    let r = registry.addr();
    let (httpd, shell) = (format!("{r}/httpd:v1"), format!("{r}/shell:v1"));
    // `alien` was pulled (for another platform) and its service removed since.
    let alien = format!("{r}/alien:v1");
    let listed = images(c).await;
    let rows: Vec<(String, String, String)> = listed
        .iter()
        .map(|i| (i.name.clone(), i.digest.clone(), ctr_size(i.size_bytes)))
        .collect();
    assert_eq!(rows, ctr_images(state), "ImageList agrees with ctr");
    let users: Vec<(&str, Vec<String>)> = listed
        .iter()
        .map(|i| (i.name.as_str(), i.used_by.clone()))
        .collect();
    assert_eq!(
        users,
        [
            (alien.as_str(), vec![]),
            (httpd.as_str(), vec!["web".into()]),
            (shell.as_str(), vec!["worker".into()])
        ]
    );
    assert!(listed.iter().all(|i| i.size_known && i.size_bytes > 0));

    let refused = c
        .machine
        .image_remove(pb::ImageRemoveRequest {
            name: httpd.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("used by service web"),
        "{refused:?}"
    );
    let missing = c
        .machine
        .image_remove(pb::ImageRemoveRequest {
            name: format!("{r}/ghost:v1"),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    // Without `web`, its image may go, and its content with it.
    let worker = format!("  - name: worker\n    image: {shell}\n    args: ['exec sleep 300']\n");
    apply(
        c,
        format!("{}{}", fx.config_yaml, service_config(registry, &worker)),
    )
    .await;
    wait_for(c, "only worker", Duration::from_secs(60), |s| {
        (s.len() == 2).then(|| running(s, "worker")).flatten()
    })
    .await;
    let removed = c
        .machine
        .image_remove(pb::ImageRemoveRequest {
            name: httpd.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(
        (removed.name.as_str(), &removed.digest),
        (httpd.as_str(), &listed[1].digest)
    );
    assert_eq!(
        ctr_images(state)
            .iter()
            .map(|i| i.0.as_str())
            .collect::<Vec<_>>(),
        [alien.as_str(), shell.as_str()]
    );
    let content = ctr(state, &["content", "ls", "-q"]);
    assert!(
        !content.contains(&removed.digest),
        "the removed image's content was collected: {content}"
    );
    let pruned = c
        .machine
        .image_prune(pb::ImagePruneRequest {})
        .await
        .unwrap();
    let names: Vec<String> = pruned
        .into_inner()
        .removed
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, [alien], "unused: pruned; shell: in use");

    // No services: prune takes the rest.
    apply(
        c,
        format!("{}{}", fx.config_yaml, service_config(registry, "  []")),
    )
    .await;
    let pruned = c
        .machine
        .image_prune(pb::ImagePruneRequest {})
        .await
        .unwrap();
    let names: Vec<String> = pruned
        .into_inner()
        .removed
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, [shell]);
    assert!(ctr_images(state).is_empty(), "{:?}", ctr_images(state));

    // The image collector (every second here) removes what no service uses once the disk
    // is as full as `imageGC.highPercent` says.
    apply(
        c,
        format!("{}{}", fx.config_yaml, service_config(registry, &worker)),
    )
    .await;
    wait_for(c, "worker again", Duration::from_secs(60), |s| {
        running(s, "worker")
    })
    .await;
    apply(
        c,
        format!(
            "{}{}",
            fx.config_yaml,
            service_config_gc(registry, "  []", 1)
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr_images(state).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the collector left {:?}",
            ctr_images(state)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tmpfs mounted for a test, unmounted when dropped (also when an assertion fails).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs on {}", at.display());
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "grow the tmpfs on {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A pull that runs out of space fails alone, says so, is retried, and succeeds once there
/// is room: containerd's root (DATA on a node) is a tmpfs too small for the image, grown
/// while the service waits for its next try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_onto_a_full_disk_fails_alone_and_succeeds_once_there_is_room() {
    let fx = Fixture::new();
    let work = fx.state_dir("work");
    let registry = Registry::start(&work.join("registry"), true);
    let shell = OciImage::new("amd64")
        .file("/bin/busybox", &busybox_static("amd64"), 0o755)
        .symlink("/bin/sh", "busybox")
        .symlink("/bin/sleep", "busybox")
        .entrypoint(&["/bin/sh", "-c"])
        .cmd(&["echo up; exec sleep 300"])
        .env(&["PATH=/bin"])
        .write(&work.join("shell"));
    push(&shell, &registry.reference("shell:v1"), &registry);
    let state = fx.state_dir("node");
    // Room for containerd's metadata, not for the image (busybox: about 1 MiB compressed).
    let disk = Tmpfs::mount(&state.join("containerd/root"), "384k");
    let services = format!(
        "  - name: small\n    image: {}\n  - name: helper\n    command: /bin/sh\n    \
         args: [-c, 'exec sleep 300']\n",
        registry.reference("shell:v1")
    );
    let config = format!("{}{}", fx.config_yaml, service_config(&registry, &services));
    let _containerd = ContainerdCleanup(state.clone());
    let node = start_machined(&state, &config, &[]);
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let minute = Duration::from_secs(60);
    let full = wait_for(&mut c, "small: no space", minute, |s| {
        find(s, "small")
            .filter(|x| x.message.contains("no space left on device"))
            .cloned()
    })
    .await;
    assert!(
        full.message.contains("pull failed") && full.message.contains("shell:v1"),
        "{full:?}"
    );
    wait_for(&mut c, "helper running", minute, |s| running(s, "helper")).await;

    disk.resize("64m");
    wait_for(&mut c, "small running", minute, |s| running(s, "small")).await;
    assert!(logs(&mut c, "small").await.contains("up"));
    drop(node);
}
