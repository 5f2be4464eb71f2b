//! The basaltctl binary against real dev-mode machined processes: secrets and config
//! generation, apply-config in maintenance mode pinned by fingerprint, then version, stats,
//! reboot, audit and boot-status over mutual TLS, fan-out with a dead node, JSON output and
//! tokens.
//!
//! machined's binary is taken from the same target directory (`cargo test -p machined -p
//! basaltctl` builds it; `cargo build -p machined` otherwise).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn machined_bin() -> PathBuf {
    // target/debug/deps/cli-HASH → target/debug/machined
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("machined");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p machined, same target dir)",
        bin.display()
    );
    bin
}

/// A dev-mode machined, killed on drop.
struct Machined {
    child: Child,
    addr: String,
    fingerprint: Option<String>,
}

impl Machined {
    fn start(state: &Path) -> Self {
        let mut child = Command::new(machined_bin())
            .args(["--dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut fingerprint = None;
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("machined did not start");
            };
            if let Some(fp) = line.split("fingerprint: ").nth(1) {
                fingerprint = Some(fp.trim().to_string());
            }
            if let Some(rest) = line.split("API listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                return Self {
                    child,
                    addr,
                    fingerprint,
                };
            }
        }
    }
}

impl Drop for Machined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basaltctl"));
    cmd.args(["--retries", "1", "--connect-timeout", "5"])
        .args(args);
    cmd.env_remove("BASALT_TOKEN");
    match config {
        Some(c) => cmd.env("BASALTCONFIG", c),
        None => cmd.env_remove("BASALTCONFIG"),
    };
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A port nothing listens on.
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    addr
}

#[test]
fn bootstrap_a_node_and_operate_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let node = Machined::start(&d.join("state"));
    let fp = node.fingerprint.clone().expect("maintenance fingerprint");
    let secrets = d.join("secrets");
    let cfg = d.join("cfg");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    ok(ctl(
        None,
        &[
            "gen",
            "secrets",
            "--out",
            &s(&secrets),
            "--san",
            "127.0.0.1",
        ],
    ));
    // Secrets are not overwritten by accident.
    let again = ctl(
        None,
        &[
            "gen",
            "secrets",
            "--out",
            &s(&secrets),
            "--san",
            "127.0.0.1",
        ],
    );
    assert!(
        !again.status.success() && text(&again).contains("--force"),
        "{}",
        text(&again)
    );
    let key_file = d.join("ci.key");
    let out = ok(ctl(None, &["gen", "token-key", "--out", &s(&key_file)]));
    let public = out
        .lines()
        .find_map(|l| l.strip_prefix("publicKey: "))
        .unwrap()
        .to_string();
    ok(ctl(
        None,
        &[
            "gen",
            "config",
            "--secrets",
            &s(&secrets),
            "--machine-id",
            "node-1",
            "--endpoint",
            &node.addr,
            "--out",
            &s(&cfg),
            "--token-key",
            &format!("ci={public}"),
        ],
    ));
    let machine_yaml = s(&cfg.join("machine.yaml"));
    let client_yaml = cfg.join("basaltctl.yaml");

    // Maintenance mode: a wrong fingerprint is refused, the right one applies.
    let wrong = format!("{}{}", &fp[..63], if fp.ends_with('0') { "1" } else { "0" });
    let o = ctl(
        None,
        &[
            "-n",
            &node.addr,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &wrong,
            "-f",
            &machine_yaml,
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("fingerprint"), "{}", text(&o));
    let dry = ok(ctl(
        None,
        &[
            "-n",
            &node.addr,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &fp,
            "--dry-run",
            "-f",
            &machine_yaml,
        ],
    ));
    assert!(
        dry.contains("dry run") && dry.contains("+hostname: node-1"),
        "{dry}"
    );
    let applied = ok(ctl(
        None,
        &[
            "-n",
            &node.addr,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &fp,
            "-f",
            &machine_yaml,
        ],
    ));
    assert!(applied.contains("mutual TLS"), "{applied}");

    // Mutual TLS with the generated client configuration.
    let cfgp = Some(client_yaml.as_path());
    let v = ok(ctl(cfgp, &["version"]));
    assert!(v.contains("machine node-1"), "{v}");
    let stats = ok(ctl(cfgp, &["stats"]));
    assert!(
        stats.contains("memory:") && stats.contains("cpu:"),
        "{stats}"
    );
    let procs = ok(ctl(cfgp, &["processes"]));
    assert!(procs.starts_with("    PID    PPID    RSS KiB"), "{procs}");
    assert!(procs.contains("machined"), "{procs}");
    let boot = ok(ctl(cfgp, &["boot-status"]));
    assert!(boot.starts_with("booted A next A"), "{boot}");
    let health = ok(ctl(cfgp, &["health"]));
    for line in [
        "ok   api",
        "ok   boot     slot A committed",
        "ok   config   version 1 applied",
        "ok   drift",
        "warn time     no time servers configured",
    ] {
        assert!(health.contains(line), "{line:?} in\n{health}");
    }
    assert!(ok(ctl(cfgp, &["reboot"])).contains("recorded"));

    // Patch: read, patch (JSON patch, then strategic merge), validate, apply on trial.
    let json_patch = "[{op: add, path: /MachineConfig/sysctls, value: {vm.swappiness: \"5\"}}]";
    let dry = ok(ctl(cfgp, &["patch", "-p", json_patch, "--dry-run"]));
    assert!(dry.contains("+sysctls:"), "{dry}");
    let merge_file = d.join("merge.yaml");
    std::fs::write(
        &merge_file,
        "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nsysctls:\n  net.ipv4.ip_forward: \"1\"\n",
    )
    .unwrap();
    let tried = ok(ctl(
        cfgp,
        &[
            "patch",
            "-p",
            json_patch,
            "-p",
            &format!("@{}", merge_file.display()),
            "--mode",
            "try",
            "--try-timeout",
            "600",
        ],
    ));
    assert!(tried.contains("on trial for 600s"), "{tried}");
    let broken = ctl(
        cfgp,
        &[
            "patch",
            "-p",
            "[{op: replace, path: /MachineConfig/hostname, value: -x-}]",
        ],
    );
    assert!(
        !broken.status.success() && text(&broken).contains("MachineConfig.hostname"),
        "{}",
        text(&broken)
    );
    let confirmed = ok(ctl(cfgp, &["patch", "-p", "[]"]));
    assert!(confirmed.contains("trial confirmed"), "{confirmed}");

    // Resources: the patched sysctls as the node publishes them (within a second or two).
    let mut sysctls = String::new();
    for _ in 0..50 {
        sysctls = ok(ctl(cfgp, &["get", "sysctls"]));
        if sysctls.contains("vm.swappiness") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        sysctls.contains("vm.swappiness") && sysctls.contains(r#""want":"5""#),
        "{sysctls}"
    );
    let one = ok(ctl(cfgp, &["-o", "json", "get", "config", "current"]));
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["entry"]["type"], "MachineConfig", "{one}");
    let unknown = ctl(cfgp, &["get", "nope"]);
    assert!(
        !unknown.status.success() && text(&unknown).contains("unknown resource type"),
        "{}",
        text(&unknown)
    );

    // Fan-out: one dead node fails alone, with a non-zero exit code and JSON per node.
    let dead = dead_addr();
    let nodes = format!("{},{dead}", node.addr);
    let o = ctl(cfgp, &["-n", &nodes, "-o", "json", "version"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json[0]["node"], node.addr.as_str());
    assert_eq!(json[0]["result"]["machine_id"], "node-1");
    assert_eq!(json[1]["node"], dead.as_str());
    assert!(
        json[1]["error"]
            .as_str()
            .unwrap()
            .contains("Connection refused"),
        "{json}"
    );
    let o = ctl(cfgp, &["-n", &nodes, "version"]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(t.contains(&format!("{}\tbasalt", node.addr)), "{t}");
    assert!(t.contains(&format!("basaltctl: {dead}: error:")), "{t}");
    let o = ctl(cfgp, &["-n", &nodes, "health"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("ok   boot"), "{}", text(&o));

    // Tokens: a reader-scoped token cannot reboot, an operator-scoped one can.
    let token = |scope: &str| {
        ok(ctl(
            None,
            &[
                "gen",
                "token",
                "--key",
                &s(&key_file),
                "--kid",
                "ci",
                "--aud",
                "node-1",
                "--scope",
                scope,
            ],
        ))
        .trim()
        .to_string()
    };
    let o = ctl(cfgp, &["--token", &token("role:reader"), "reboot"]);
    assert!(
        !o.status.success() && text(&o).contains("PermissionDenied"),
        "{}",
        text(&o)
    );
    ok(ctl(cfgp, &["--token", &token("role:operator"), "reboot"]));

    // The audit trail shows the bootstrap, the calls and the refusal.
    let audit = ok(ctl(cfgp, &["audit", "--limit", "1000"]));
    assert!(
        audit.contains("ApplyConfiguration") && audit.contains("maintenance mode"),
        "{audit}"
    );
    let denied = ok(ctl(
        cfgp,
        &["-o", "json", "audit", "--result", "PERMISSION_DENIED"],
    ));
    let denied: serde_json::Value = serde_json::from_str(&denied).unwrap();
    let entries = denied[0]["result"]["entries"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["rpc"].as_str().unwrap().ends_with("/Reboot")),
        "{denied}"
    );
    let bad_since = ctl(cfgp, &["audit", "--since", "yesterday"]);
    assert!(!bad_since.status.success() && text(&bad_since).contains("RFC 3339"));
}

#[test]
fn errors_name_the_problem_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.yaml");
    let o = ctl(Some(&missing), &["version"]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("loading the client configuration") && t.contains("nope.yaml"),
        "{t}"
    );
    let o = ctl(None, &["apply-config", "--insecure", "-f", "x.yaml"]);
    assert!(!o.status.success());
}
