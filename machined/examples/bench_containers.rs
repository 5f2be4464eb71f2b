//! Benchmark of container services in dev mode: machined (release) runs Debian 13's
//! containerd as its system service, a local TLS registry (Debian's docker-registry) serves a
//! busybox httpd image padded to about 5 MiB, and the time from ApplyConfiguration to the
//! container answering HTTP is measured with the image pulled by the start and with the image
//! already present; side by side, containerd's own `ctr run` of the same image on the same
//! containerd (its time to the container answering), so that the difference is machined's
//! overhead over the runtime's. A second container service (`idle`) keeps containerd running
//! between the runs. Also containerd's and the shims' resident memory, and the import of an
//! archive of the same image over the API (`basaltctl image import`: streamed, staged on
//! the node, checked, then containerd's transfer service) beside `ctr images import` of the
//! same archive (containerd's transfer service alone). Run through `scripts/bench-containers`
//! (as root), which prints Markdown tables.

use basalt_proto::machine::v1 as pb;
use basalt_tests::containers::{
    ContainerdCleanup, HTTPD_INDEX, OciImage, Registry, busybox_static, containerd_bin_dir,
    oci_archive, push,
};
use basaltctl::config::{MachineConfigInput, render_machine_config};
use basaltctl::connect::{Clients, ConnectOptions, TlsSettings, connect};
use basaltctl::secrets::Secrets;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 5;

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_machined(machined: &Path, state: &Path, bin: &Path) -> (Node, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(machined)
        .args(["--dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .arg("--containerd-bin")
        .arg(bin)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn machined");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let addr = loop {
        let line = lines.next().expect("machined exited").expect("stderr");
        if let Some(rest) = line.split("API listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Node(child), addr)
}

fn answers(port: u16) -> bool {
    Command::new("curl")
        .args(["-sf", "-m", "1", &format!("http://127.0.0.1:{port}/")])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout == HTTPD_INDEX.as_bytes())
}

/// Time from `t0` until the container on `port` answers.
fn until_answering(t0: Instant, port: u16) -> Duration {
    while !answers(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no answer on port {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn until_silent(port: u16, after: &str) {
    let t0 = Instant::now();
    while answers(port) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "port {port} still answers 60 s after {after}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn apply(c: &mut Clients, yaml: &str) {
    c.machine
        .apply_configuration(pb::ApplyConfigurationRequest {
            data: yaml.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("apply");
}

/// `ctr` in the bench's own namespace.
fn ctr(socket: &Path, args: &[&str]) -> std::process::Output {
    ctr_in(socket, "bench", args)
}

/// `ctr` in machined's namespace.
fn ctr_basalt(socket: &Path, args: &[&str]) -> std::process::Output {
    ctr_in(socket, "basalt", args)
}

fn ctr_in(socket: &Path, namespace: &str, args: &[&str]) -> std::process::Output {
    Command::new(
        containerd_bin_dir(basalt_tests::containers::debian_arch(
            std::env::consts::ARCH,
        ))
        .join("ctr"),
    )
    .arg("--address")
    .arg(socket)
    .args(["--namespace", namespace])
    .args(args)
    .output()
    .expect("ctr")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pids_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The archive of `layout` imported [`RUNS`] times over the API and by `ctr`, the image
/// removed before each run (its content stays in containerd's store: both import the same
/// bytes into a store that holds them already).
async fn imports(
    c: &mut Clients,
    socket: &Path,
    layout: &Path,
    work: &Path,
) -> (Vec<Duration>, Vec<Duration>) {
    use basaltctl::image_import::import_archive;
    use basaltctl::upgrade::Retry;
    let archive = work.join("web.tar");
    oci_archive(layout, &archive, "bench-import:1");
    let (mut api, mut by_ctr) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let _ = ctr_basalt(
            socket,
            &["images", "rm", "docker.io/library/bench-import:1"],
        );
        let t0 = Instant::now();
        import_archive(&mut c.machine, &archive, &Retry::default(), &mut |_| {})
            .await
            .expect("ImageImport");
        api.push(t0.elapsed());
        let _ = ctr(socket, &["images", "rm", "bench-import:1"]);
        let t0 = Instant::now();
        let archive = archive.to_string_lossy();
        let out = ctr(socket, &["images", "import", &archive]);
        assert!(
            out.status.success(),
            "ctr images import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        by_ctr.push(t0.elapsed());
    }
    (api, by_ctr)
}

#[tokio::main]
async fn main() {
    let machined = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/machined".into());
    let arch = basalt_tests::containers::debian_arch(std::env::consts::ARCH);
    let work = tempfile::tempdir().expect("temp dir");
    let registry = Registry::start(&work.path().join("registry"), true);
    let port = basalt_tests::free_port();
    let padding: Vec<u8> = (0..5u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layout = OciImage::new(arch)
        .file("/bin/busybox", &busybox_static(arch), 0o755)
        .file_bytes("/www/index.html", HTTPD_INDEX, 0o644)
        .file_bytes("/padding.bin", padding, 0o644)
        .entrypoint(&["/bin/busybox"])
        .cmd(&["httpd", "-f", "-p", &port.to_string(), "-h", "/www"])
        .write(&work.path().join("image"));
    let image = registry.reference("web:1");
    push(&layout, &image, &registry);

    let secrets = Secrets::generate(&["127.0.0.1".into()], 30).unwrap();
    let machine = render_machine_config(
        &MachineConfigInput {
            hostname: "bench".into(),
            cluster: None,
            ca_pem: secrets.ca.cert_pem.clone(),
            cert_pem: secrets.server.cert_pem.clone(),
            key_pem: secrets.server.key_pem.clone(),
            token_keys: vec![],
        },
        &[],
    )
    .expect("machine config");
    let ca: String = registry
        .ca_pem()
        .expect("TLS")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let registries = format!(
        "registries:\n  - host: {}\n    ca: |\n{ca}",
        registry.addr()
    );
    let without = format!(
        "{machine}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\n{registries}services:\n  - name: idle\n    image: {image}\n    args: [sleep, '3600']\n"
    );
    let with = format!("{without}  - name: web\n    image: {image}\n");
    let state = work.path().join("state");
    let _containerd = ContainerdCleanup(state.clone());
    machined::state::ConfigStore::open(&state)
        .unwrap()
        .store(without.as_bytes())
        .unwrap();
    let (_node, addr) = start_machined(Path::new(&machined), &state, &containerd_bin_dir(arch));
    let admin = secrets.client("admin").expect("admin certificate");
    let tls = TlsSettings::mutual(&secrets.ca.cert_pem, &admin.cert_pem, &admin.key_pem).unwrap();
    let mut c = connect(&addr, &tls, &ConnectOptions::default())
        .await
        .expect("connect");
    let socket = state.join("containerd/containerd.sock");
    // containerd is up once its socket answers.
    while !ctr(&socket, &["version"]).status.success() {
        std::thread::sleep(Duration::from_millis(50));
    }

    let (mut pulled, mut present, mut by_ctr) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        // Pulled: the image is removed from the node first.
        let _ = ctr_basalt(&socket, &["images", "rm", &image]);
        let t0 = Instant::now();
        apply(&mut c, &with).await;
        pulled.push(until_answering(t0, port));
        apply(&mut c, &without).await;
        until_silent(port, "the removal of the pulled service");
        // Present: the image stays.
        let t0 = Instant::now();
        apply(&mut c, &with).await;
        present.push(until_answering(t0, port));
        apply(&mut c, &without).await;
        until_silent(port, "the removal of the service");
    }
    // ctr run of the same image (already in containerd's content store, its own namespace).
    let pulled_by_ctr = ctr(&socket, &["images", "pull", "--local=false", &image]);
    assert!(
        pulled_by_ctr.status.success(),
        "ctr pull: {}",
        String::from_utf8_lossy(&pulled_by_ctr.stderr)
    );
    for i in 0..RUNS {
        let id = format!("ctr-{i}");
        let t0 = Instant::now();
        let out = ctr(&socket, &["run", "-d", "--net-host", &image, &id]);
        assert!(
            out.status.success(),
            "ctr run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        by_ctr.push(until_answering(t0, port));
        let _ = ctr(&socket, &["tasks", "kill", "-s", "SIGKILL", &id]);
        while !ctr(&socket, &["tasks", "rm", &id]).status.success() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = ctr(&socket, &["containers", "rm", &id]);
        until_silent(port, "ctr tasks kill");
    }
    let (imported, by_ctr_import) = imports(&mut c, &socket, &layout, work.path()).await;
    apply(&mut c, &with).await;
    until_answering(Instant::now(), port);
    let containerd: u64 = pids_named("containerd").iter().map(|p| rss_kib(*p)).sum();
    // Shims of finished `ctr run`s that linger as zombies have no resident memory: left out.
    let shims: Vec<u64> = pids_named("containerd-shim")
        .iter()
        .map(|p| rss_kib(*p))
        .filter(|kib| *kib > 0)
        .collect();

    println!(
        "| measure (dev mode, {} CPUs, median of {RUNS}) | time |",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("|---|---|");
    println!(
        "| ApplyConfiguration → container answering, image pulled (5 MiB layer) | {} |",
        ms(median(pulled))
    );
    println!(
        "| ApplyConfiguration → container answering, image present | {} |",
        ms(median(present))
    );
    println!(
        "| `ctr run -d --net-host` → container answering (reference, same containerd) | {} |",
        ms(median(by_ctr))
    );
    println!(
        "| `basaltctl image import` of the same image's archive → imported and unpacked | {} |",
        ms(median(imported))
    );
    println!(
        "| `ctr images import` of the same archive (reference, same containerd) | {} |",
        ms(median(by_ctr_import))
    );
    println!();
    println!("| process | RSS |");
    println!("|---|---|");
    println!("| containerd (one web container) | {} KiB |", containerd);
    for (i, kib) in shims.iter().enumerate() {
        println!("| containerd-shim-runc-v2 #{i} | {kib} KiB |");
    }
}
