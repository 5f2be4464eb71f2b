//! basaltctl's service, log, event, kernel log and reset commands against a real dev-mode
//! machined: a configuration with services applied in maintenance mode starts them, then
//! `services`, `service NAME restart|stop`, `logs NAME [--tail N] [-f]`, `events`,
//! `dmesg --tail N` and `reset` (refused without confirmation, done with --yes).
//!
//! machined's binary is taken from the same target directory (`cargo test -p machined -p
//! basaltctl` builds it; `cargo build -p machined` otherwise).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn machined_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("machined");
    assert!(
        bin.exists(),
        "{} is missing: cargo build -p machined",
        bin.display()
    );
    bin
}

/// A dev-mode machined in maintenance mode, killed on drop.
struct Machined {
    child: Child,
    addr: String,
    fingerprint: String,
    state: PathBuf,
}

impl Machined {
    fn start(state: &Path) -> Self {
        let mut child = Command::new(machined_bin())
            .args([
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--service-backoff-ms",
                "100",
            ])
            .arg("--state-dir")
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
        let mut fingerprint = String::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("machined did not start");
            };
            if let Some(fp) = line.split("fingerprint: ").nth(1) {
                fingerprint = fp.trim().to_string();
            }
            if let Some(rest) = line.split("API listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap().to_string();
                return Self {
                    child,
                    addr,
                    fingerprint,
                    state: state.to_path_buf(),
                };
            }
        }
    }
}

impl Drop for Machined {
    fn drop(&mut self) {
        // SIGTERM first so that machined stops its services, then make sure it is gone.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl_cmd(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basaltctl"));
    cmd.args(["--retries", "1", "--connect-timeout", "5"])
        .args(args)
        .env_remove("BASALT_TOKEN")
        .env("BASALTCONFIG", config);
    cmd
}

fn ctl(config: &Path, args: &[&str]) -> Output {
    ctl_cmd(config, args).output().unwrap()
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

const SERVICES: &str = r#"
---
apiVersion: basalt.dev/v1alpha1
kind: ServiceConfig
services:
  - name: db
    command: /bin/sh
    args: ["-c", "echo db up; echo $DB_MODE; exec sleep 120"]
    env:
      DB_MODE: primary
  - name: web
    command: /bin/sh
    args: ["-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
    dependsOn: [db]
"#;

/// A node configured with `SERVICES` through basaltctl; returns it and the client config.
fn configured(d: &Path) -> (Machined, PathBuf) {
    let node = Machined::start(&d.join("state"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let none = Path::new("/nonexistent");
    let (secrets, cfg) = (d.join("secrets"), d.join("cfg"));
    ok(ctl(
        none,
        &[
            "gen",
            "secrets",
            "--out",
            &s(&secrets),
            "--san",
            "127.0.0.1",
        ],
    ));
    ok(ctl(
        none,
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
        ],
    ));
    let machine = cfg.join("machine.yaml");
    let mut yaml = std::fs::read_to_string(&machine).unwrap();
    yaml.push_str(SERVICES);
    std::fs::write(&machine, yaml).unwrap();
    let applied = ok(ctl(
        none,
        &[
            "-n",
            &node.addr,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &node.fingerprint,
            "-f",
            &s(&machine),
        ],
    ));
    assert!(applied.contains("mutual TLS"), "{applied}");
    (node, cfg.join("basaltctl.yaml"))
}

fn wait_for(config: &Path, args: &[&str], want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ok(ctl(config, args));
        if out.contains(want) {
            return out;
        }
        assert!(Instant::now() < deadline, "never {want:?}:\n{out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn services_logs_events_dmesg_and_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (node, config) = configured(dir.path());
    let c = config.as_path();
    // Both services come up, web after db.
    let table = wait_for(c, &["services"], "web ");
    let table = if table.lines().filter(|l| l.contains(" running ")).count() == 2 {
        table
    } else {
        std::thread::sleep(Duration::from_millis(500));
        ok(ctl(c, &["services"]))
    };
    assert!(table.starts_with("SERVICE"), "{table}");
    for svc in ["db", "web"] {
        let line = table.lines().find(|l| l.starts_with(svc)).unwrap();
        assert!(line.contains(" running "), "{table}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(ctl(c, &["-o", "json", "services"]))).unwrap();
    assert_eq!(json[0]["result"]["services"][0]["id"], "db", "{json}");
    // Logs: tail, and the environment reached the service.
    let db_log = ok(ctl(c, &["logs", "db", "--tail", "3"]));
    assert!(db_log.contains("stdout primary"), "{db_log}");
    assert!(db_log.lines().count() <= 3, "{db_log}");
    // Restart and stop, as operator-level commands.
    let restarted = ok(ctl(c, &["service", "web", "restart"]));
    assert!(restarted.starts_with("web: running"), "{restarted}");
    let stopped = ok(ctl(c, &["service", "web", "stop"]));
    assert!(stopped.starts_with("web: stopped"), "{stopped}");
    let missing = ctl(c, &["service", "nope", "start"]);
    assert!(
        !missing.status.success() && text(&missing).contains("NotFound"),
        "{}",
        text(&missing)
    );
    ok(ctl(c, &["service", "web", "start"]));
    // Follow: new lines keep arriving until basaltctl is stopped.
    let mut follow = ctl_cmd(c, &["logs", "web", "-f", "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let mut ticks = 0;
    let started = Instant::now();
    while ticks < 3 {
        let line = lines
            .next()
            .expect("basaltctl logs -f keeps streaming")
            .unwrap();
        if line.contains("stdout tick") {
            ticks += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // Events: the state changes of the stop above.
    let events = ok(ctl(c, &["events"]));
    assert!(
        events
            .lines()
            .any(|l| l.contains(" service ") && l.contains("web") && l.contains("stopped")),
        "{events}"
    );
    // Kernel log, where this host lets us read it.
    if std::fs::File::open("/dev/kmsg").is_ok() {
        let dmesg = ok(ctl(c, &["dmesg", "--tail", "2"]));
        assert_eq!(dmesg.lines().count(), 2, "{dmesg}");
        assert!(dmesg.starts_with('['), "{dmesg}");
    }
    // Reset: refused unless confirmed.
    let mut refuse = ctl_cmd(c, &["reset", "--state"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    refuse.stdin.take().unwrap().write_all(b"no\n").unwrap();
    let refused = refuse.wait_with_output().unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("not confirmed"),
        "{}",
        text(&refused)
    );
    assert!(
        node.state.join("config/current.yaml").exists(),
        "nothing was wiped"
    );
    let none = ctl(c, &["reset", "--yes"]);
    assert!(!none.status.success(), "{}", text(&none));
    let reset = ok(ctl(c, &["reset", "--state", "--yes"]));
    assert!(reset.contains("wiping STATE, then rebooting"), "{reset}");
    assert!(!node.state.join("config/current.yaml").exists());
    let actions = std::fs::read_to_string(node.state.join("host-actions.jsonl")).unwrap();
    assert!(
        actions.contains(r#""action":"wipe","partition":"STATE""#),
        "{actions}"
    );
}
