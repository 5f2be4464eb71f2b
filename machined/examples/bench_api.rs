//! Benchmark of machined's API over mutual TLS on loopback, against dev-mode machined
//! processes (the same binary, API and authorization path as on a node; host actions are
//! recorded instead of performed). Run through `scripts/bench-api`, which builds everything
//! in release mode and prints a Markdown table for docs/PERFORMANCE.md.
//!
//! ```text
//! bench_api --machined PATH --basaltctl PATH [--nodes 50] [--requests 2000] [--concurrency 16]
//! ```
//!
//! Measures: Version RPC latency on one connection (sequential calls: p50, p99, max);
//! Version throughput with concurrent calls multiplexed on one HTTP/2 connection; the
//! time of a new connection (TCP + TLS 1.3 handshake with client certificate + one
//! Version); machined's resident memory idle after start and after the load; and the wall
//! time of `basaltctl -n <all nodes> version`, the CLI's real client-side fan-out.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use basalt_proto::machine::v1 as pb;
use basaltctl::config::{ClientConfig, Context, MachineConfigInput, render_machine_config};
use basaltctl::connect::{ConnectOptions, TlsSettings, connect};
use basaltctl::secrets::Secrets;

struct Args {
    machined: PathBuf,
    basaltctl: PathBuf,
    nodes: usize,
    requests: usize,
    concurrency: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        machined: PathBuf::from("target/release/machined"),
        basaltctl: PathBuf::from("target/release/basaltctl"),
        nodes: 50,
        requests: 2000,
        concurrency: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--machined" => args.machined = value.into(),
            "--basaltctl" => args.basaltctl = value.into(),
            "--nodes" => args.nodes = value.parse().expect("--nodes N"),
            "--requests" => args.requests = value.parse().expect("--requests N"),
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// A dev-mode machined, killed on drop.
struct Node {
    child: Child,
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(machined: &Path, state: &Path) -> Node {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(machined)
        .args(["--dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn machined");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("machined exited before listening")
            .expect("read machined's stderr");
        if let Some(rest) = line.split("API listening on ").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    // Keep draining stderr so machined never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Node { child, addr }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let work = tempfile::tempdir().expect("temp dir");
    let secrets = Secrets::generate(&["127.0.0.1".into(), "localhost".into()], 30).unwrap();
    let config = render_machine_config(
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
    let mut nodes = Vec::new();
    for i in 0..args.nodes.max(1) {
        let state = work.path().join(format!("node-{i}"));
        machined::state::ConfigStore::open(&state)
            .unwrap()
            .store(config.as_bytes())
            .unwrap();
        nodes.push(start(&args.machined, &state));
    }
    let first_pid = nodes[0].child.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = rss_kib(first_pid);

    let admin = secrets.client("admin").expect("admin certificate");
    let tls = TlsSettings::mutual(&secrets.ca.cert_pem, &admin.cert_pem, &admin.key_pem).unwrap();
    let opts = ConnectOptions::default();

    // New connections: TCP + TLS handshake + one Version.
    let mut setups = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        let mut c = connect(&nodes[0].addr, &tls, &opts).await.expect("connect");
        c.machine
            .version(pb::VersionRequest {})
            .await
            .expect("Version");
        setups.push(t.elapsed());
    }
    setups.sort();

    // Sequential latency on one connection.
    let mut c = connect(&nodes[0].addr, &tls, &opts).await.expect("connect");
    for _ in 0..100 {
        c.machine
            .version(pb::VersionRequest {})
            .await
            .expect("warm-up");
    }
    let mut lat = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let t = Instant::now();
        c.machine
            .version(pb::VersionRequest {})
            .await
            .expect("Version");
        lat.push(t.elapsed());
    }
    lat.sort();

    // Throughput: concurrent calls multiplexed on one connection.
    let total = args.requests * 5;
    let per_task = total / args.concurrency.max(1);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let mut m = c.machine.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                m.version(pb::VersionRequest {}).await.expect("Version");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let elapsed = t.elapsed();
    let throughput = (per_task * args.concurrency.max(1)) as f64 / elapsed.as_secs_f64();
    let loaded_rss = rss_kib(first_pid);

    // Fan-out with the CLI to every node.
    let client_config = ClientConfig {
        context: "bench".into(),
        contexts: [(
            "bench".to_string(),
            Context {
                endpoints: vec![nodes[0].addr.clone()],
                ca: secrets.ca.cert_pem.clone(),
                cert: admin.cert_pem.clone(),
                key: admin.key_pem.clone(),
                token: None,
            },
        )]
        .into(),
    };
    let client_path = work.path().join("basaltctl.yaml");
    std::fs::write(&client_path, client_config.to_yaml()).unwrap();
    let all: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    let all = all.join(",");
    let mut fanouts = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let out = Command::new(&args.basaltctl)
            .arg("--basaltconfig")
            .arg(&client_path)
            .args(["-n", &all, "version"])
            .output()
            .expect("run basaltctl");
        assert!(
            out.status.success(),
            "fan-out failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(lines, nodes.len(), "one line per node");
        fanouts.push(t.elapsed());
    }
    fanouts.sort();

    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| Version latency, one mTLS connection, {} sequential calls | p50 {}, p99 {}, max {} |",
        args.requests,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
    println!(
        "| Version throughput, {} concurrent callers on one connection | {:.0} calls/s |",
        args.concurrency, throughput
    );
    println!(
        "| new connection (TCP + TLS 1.3 with client certificate) + Version, 50 times | p50 {}, p99 {} |",
        ms(percentile(&setups, 0.5)),
        ms(percentile(&setups, 0.99))
    );
    println!(
        "| machined RSS (dev mode, configured): idle after start / after the load | {} KiB / {} KiB |",
        idle_rss, loaded_rss
    );
    println!(
        "| `basaltctl -n <{} nodes> version` (process start to exit), best / median of 3 | {} / {} |",
        nodes.len(),
        ms(fanouts[0]),
        ms(fanouts[1])
    );
}
