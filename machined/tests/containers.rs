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
    ContainerdCleanup, HTTPD_INDEX, OciImage, Registry, busybox_httpd_image, busybox_shell_image,
    manifest_digest, oci_archive, push,
};
use basaltctl::connect::Clients;
use common::Fixture;
use common::containers::{
    apply, cgroup_value, ctr, ctr_images, ctr_size, find, images, list, logs, running,
    service_config, service_config_gc, start_machined, wait_curl, wait_for,
};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
    let shell = busybox_shell_image(&work.join("shell"), "amd64", "idle");
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
            "--image-gc-grace",
            "0",
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
    let shell = busybox_shell_image(&work.join("shell"), "amd64", "up");
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

/// One ImageImport call carrying `chunks` (offset, bytes) of the archive `sha256`.
async fn import_chunks(
    c: &mut Clients,
    sha256: &str,
    size: u64,
    chunks: &[(u64, &[u8])],
) -> Result<pb::ImageImportResponse, tonic::Status> {
    let options = pb::image_import_chunk::Message::Options(pb::ImageImportOptions {
        size,
        sha256: sha256.into(),
    });
    let mut messages = vec![pb::ImageImportChunk {
        message: Some(options),
    }];
    for (offset, data) in chunks {
        messages.push(pb::ImageImportChunk {
            message: Some(pb::image_import_chunk::Message::Data(pb::ImageImportData {
                offset: *offset,
                data: data.to_vec(),
            })),
        });
    }
    c.machine
        .image_import(tokio_stream::iter(messages))
        .await
        .map(tonic::Response::into_inner)
}

async fn staged_bytes(c: &mut Clients, sha256: &str) -> u64 {
    c.machine
        .image_import_status(pb::ImageImportStatusRequest {
            sha256: sha256.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .staged_bytes
}

/// An archive streamed in two calls (the first cut half way, the second resuming where
/// the node is), imported whole and run by a service without any registry; a corrupt copy
/// and an archive for another architecture refused with nothing imported. The node starts
/// with no container service, so containerd runs only once an archive is staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_archive_is_imported_resumably_and_runs_without_a_registry() {
    use basaltctl::image_import::{archive_identity, import_archive};
    use basaltctl::upgrade::Retry;
    let fx = Fixture::new();
    let work = fx.state_dir("work");
    let port = basalt_tests::free_port();
    let layout = busybox_httpd_image(&work.join("httpd"), "amd64", port);
    let archive = work.join("web.tar");
    oci_archive(&layout, &archive, "web:1");
    let foreign = work.join("foreign.tar");
    let arm = OciImage::new("arm64")
        .file_bytes("/hello", "hi", 0o644)
        .entrypoint(&["/hello"])
        .write(&work.join("arm"));
    oci_archive(&arm, &foreign, "registry.example/arm:1");
    let state = fx.state_dir("node");
    let _containerd = ContainerdCleanup(state.clone());
    let node = start_machined(&state, &fx.config_yaml, &[]);
    let mut c = fx.connect(&node, "admin", None).await.unwrap();

    let data = std::fs::read(&archive).unwrap();
    let (sha, size) = archive_identity(&archive).unwrap();
    let half = data.len() / 2;
    let e = import_chunks(&mut c, &sha, size, &[(0, &data[..half])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Aborted, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("ended at {half} of {size} bytes")),
        "{e:?}"
    );
    assert_eq!(staged_bytes(&mut c, &sha).await, half as u64);
    assert!(
        images(&mut c).await.is_empty(),
        "half an archive imports nothing"
    );
    let e = import_chunks(&mut c, &sha, size, &[(0, &data[..10])])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains(&format!("the node holds {half} bytes")),
        "{e:?}"
    );

    let mut lines = Vec::new();
    let r = import_archive(&mut c.machine, &archive, &Retry::default(), &mut |l| {
        lines.push(l)
    })
    .await
    .unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("resuming at byte {half}"))),
        "{lines:?}"
    );
    assert_eq!(r.bytes_received, size - half as u64);
    let names: Vec<&str> = r.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["docker.io/library/web:1"]);
    let digest = manifest_digest(&layout);
    assert_eq!(r.images[0].digest, digest);
    let listed = ctr_images(&state);
    assert_eq!(
        listed
            .iter()
            .map(|(n, d, _)| (n.as_str(), d.as_str()))
            .collect::<Vec<_>>(),
        [("docker.io/library/web:1", digest.as_str())],
        "containerd's own view"
    );
    assert_eq!(
        staged_bytes(&mut c, &sha).await,
        0,
        "the staged copy is gone"
    );

    let services = "  - name: web\n    image: web:1\n";
    let config = format!(
        "{}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\nservices:\n{services}",
        fx.config_yaml
    );
    apply(&mut c, config).await;
    wait_for(&mut c, "web running", Duration::from_secs(60), |s| {
        running(s, "web")
    })
    .await;
    wait_curl(&format!("http://127.0.0.1:{port}/index.html"), HTTPD_INDEX).await;

    let mut corrupt = data.clone();
    corrupt[size as usize / 3] ^= 0xff;
    let e = import_chunks(&mut c, &sha, size, &[(0, &corrupt)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("the staged copy is removed"), "{e:?}");
    assert_eq!(staged_bytes(&mut c, &sha).await, 0);

    let e = import_archive(&mut c.machine, &foreign, &Retry::default(), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("registry.example/arm:1 is built for linux/arm64, this node is linux/amd64"),
        "{e}"
    );
    assert_eq!(
        ctr_images(&state).len(),
        1,
        "nothing of the foreign archive is stored"
    );
    drop(node);
}

/// Every file under `dir` (but the configuration store, which keeps the configuration as
/// applied) that contains `secret`.
fn files_holding(dir: &Path, secret: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let (path, kind) = (e.path(), e.file_type().unwrap());
            if kind.is_dir() && path != dir.join("config") {
                pending.push(path);
            } else if kind.is_file()
                && std::fs::read(&path)
                    .is_ok_and(|b| b.windows(secret.len()).any(|w| w == secret.as_bytes()))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// A registry that wants credentials: a pull with a wrong password fails alone with the
/// registry's refusal, the right one (a configuration change that does not restart
/// containerd) pulls and runs; the password reaches no log, audit entry, configuration
/// view or file but the configuration store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_wants_credentials_is_pulled_from_with_those_of_the_config() {
    let fx = Fixture::new();
    let work = fx.state_dir("work");
    let (user, wrong, right) = ("edge", "wr0ng-pa55word", "pu11-s3cret-1");
    let registry = Registry::start_with_login(&work.join("registry"), user, right);
    let shell = busybox_shell_image(&work.join("shell"), "amd64", "up");
    push(&shell, &registry.reference("private:v1"), &registry);
    let ca: String = registry
        .ca_pem()
        .unwrap()
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let config = |password: &str| {
        format!(
            "{}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n\
             registries:\n  - host: {}\n    ca: |\n{ca}    auth:\n      username: {user}\n      password: {password}\n\
             services:\n  - name: app\n    image: {}\n",
            fx.config_yaml,
            registry.addr(),
            registry.reference("private:v1")
        )
    };
    let state = fx.state_dir("node");
    let _containerd = ContainerdCleanup(state.clone());
    let node = start_machined(&state, &config(wrong), &[]);
    let mut c = fx.connect(&node, "admin", None).await.unwrap();
    let minute = Duration::from_secs(60);
    let refused = wait_for(&mut c, "app: refused", minute, |s| {
        find(s, "app")
            .filter(|x| x.message.contains("pull failed"))
            .cloned()
    })
    .await;
    assert!(
        refused.message.contains("401") || refused.message.contains("unauthorized"),
        "{refused:?}"
    );
    let containerd_pid = running(&list(&mut c).await, "containerd").unwrap().pid;

    apply(&mut c, config(right)).await;
    wait_for(&mut c, "app running", minute, |s| running(s, "app")).await;
    assert!(logs(&mut c, "app").await.contains("up"));
    assert_eq!(
        running(&list(&mut c).await, "containerd").unwrap().pid,
        containerd_pid,
        "new credentials do not restart containerd"
    );
    assert!(
        registry.log().contains(&format!("auth.user.name={user} ")),
        "the registry saw the user: {}",
        registry.log()
    );

    let shown = c
        .machine
        .get_configuration(pb::GetConfigurationRequest::default())
        .await
        .unwrap()
        .into_inner();
    let shown = format!("{shown:?}");
    let audit = format!("{:?}", common::audit(&mut c, "ApplyConfiguration").await);
    for secret in [wrong, right] {
        assert!(!shown.contains(secret), "GetConfiguration shows {secret}");
        assert!(!audit.contains(secret), "the audit log holds {secret}");
        assert!(!node.stderr().contains(secret), "machined logged {secret}");
        assert_eq!(files_holding(&state, secret), Vec::<String>::new());
    }
    assert!(logs(&mut c, "containerd").await.len() > 100);
    drop(node);
}
