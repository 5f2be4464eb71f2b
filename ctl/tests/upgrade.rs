//! `basaltctl upgrade` against a dev-mode machined with slot files: a real signed bundle
//! (basalt-image's writer, a key from its key generation) pushed through a TCP proxy that
//! cuts the connection once (the upload resumes where the node is), a bundle signed by an
//! untrusted key (refused, nothing written), and `--url` served by a tiny HTTP server with
//! Range support that drops the connection once; and machined killed mid-upload,
//! restarted on the same STATE, resuming from its last checkpoint.
//!
//! machined's binary is taken from the same target directory (`cargo test -p machined -p
//! basaltctl` builds it; `cargo build -p machined` otherwise).

use basalt_image::bundle::{BundleMeta, BundleWriter, generate_signing_key, verifying_key_base64};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

const MIB: usize = 1 << 20;

fn machined_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("machined");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p machined, same target dir)",
        bin.display()
    );
    bin
}

struct Machined {
    child: Child,
    addr: String,
    fingerprint: String,
    log: Arc<Mutex<String>>,
}

impl Machined {
    fn start(state: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(machined_bin())
            .args(["--dev", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = tx.send(line);
            }
        });
        let mut fingerprint = String::new();
        loop {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("machined did not start:\n{}", log.lock().unwrap());
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
                    log,
                };
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
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
    text(&o)
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn build_bundle(
    dir: &Path,
    img: &[u8],
    version: &str,
    key: &basalt_image::bundle::SigningKey,
    name: &str,
) -> PathBuf {
    let src = dir.join(format!("{name}.img"));
    std::fs::write(&src, img).unwrap();
    let out = dir.join(format!("{name}.bundle"));
    let meta = BundleMeta::new("qemu-arm64", version, "aarch64", 1_700_000_000, [7; 32]);
    BundleWriter::write(&src, &meta, key, &out).unwrap();
    out
}

/// A TCP proxy to `upstream`; the first connection is cut (both ways) once the client sent
/// `cut_after` bytes.
fn cutting_proxy(upstream: String, cut_after: u64) -> (String, Arc<Mutex<u32>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let cuts = Arc::new(Mutex::new(0u32));
    let c2 = cuts.clone();
    std::thread::spawn(move || {
        for (i, conn) in l.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            let server = TcpStream::connect(&upstream).unwrap();
            let limit = (i == 0).then_some(cut_after);
            let (c_read, s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (s_read, c_write) = (server, client);
            let cuts = c2.clone();
            let both = (c_read.try_clone().unwrap(), s_write.try_clone().unwrap());
            std::thread::spawn(move || {
                let (mut r, mut w) = (c_read, s_write);
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0u64;
                loop {
                    let n = match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if limit.is_some_and(|l| total + n as u64 > l) {
                        *cuts.lock().unwrap() += 1;
                        let _ = both.0.shutdown(Shutdown::Both);
                        let _ = both.1.shutdown(Shutdown::Both);
                        return;
                    }
                    total += n as u64;
                    if w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = w.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut r, mut w) = (s_read, c_write);
                let _ = std::io::copy(&mut r, &mut w);
                let _ = w.shutdown(Shutdown::Write);
            });
        }
    });
    (addr, cuts)
}

/// A one-file HTTP/1.1 server with `Range: bytes=A-B` / `bytes=A-` support; the first
/// response longer than `drop_after` is cut after `drop_after` body bytes. Returns its URL and the requested start offsets.
fn http_server(data: Vec<u8>, drop_after: usize) -> (String, Arc<Mutex<Vec<u64>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/qemu-arm64-1.2.0.bundle", l.local_addr().unwrap());
    let starts = Arc::new(Mutex::new(Vec::new()));
    let s2 = starts.clone();
    std::thread::spawn(move || {
        let mut dropped = false;
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if conn.read(&mut byte).unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let range = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("range: bytes=")
                    .map(|r| r.trim().to_string())
            });
            let len = data.len();
            // `bytes=A-B` (B inclusive) or `bytes=A-`.
            let (from, to) = match range.as_deref().and_then(|r| r.split_once('-')) {
                Some((a, b)) => (
                    a.parse::<usize>().unwrap_or(0).min(len),
                    b.parse::<usize>().map(|b| b + 1).unwrap_or(len).min(len),
                ),
                None => (0, len),
            };
            s2.lock().unwrap().push(from as u64);
            let status = if range.is_some() {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{len}\r\n",
                    to - 1
                )
            } else {
                "HTTP/1.1 200 OK\r\n".to_string()
            };
            let _ = conn.write_all(
                format!(
                    "{status}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    to - from
                )
                .as_bytes(),
            );
            // The first response longer than `drop_after` is cut there.
            let end = if !dropped && to - from > drop_after {
                dropped = true;
                from + drop_after
            } else {
                to
            };
            let _ = conn.write_all(&data[from..end]);
            let _ = conn.shutdown(Shutdown::Both);
        }
    });
    (url, starts)
}

struct Env {
    dir: tempfile::TempDir,
    node: Machined,
    client: PathBuf,
    key: basalt_image::bundle::SigningKey,
}

impl Env {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn slot(&self, name: &str) -> PathBuf {
        self.d().join(format!("slot-{name}.img"))
    }

    fn start_node(d: &Path) -> Machined {
        let s = |p: PathBuf| p.to_str().unwrap().to_string();
        Machined::start(
            &d.join("state"),
            &[
                "--dev-slot-a",
                &s(d.join("slot-a.img")),
                "--dev-slot-b",
                &s(d.join("slot-b.img")),
                "--dev-slot-size",
                &(8 * MIB).to_string(),
                "--dev-board",
                "qemu-arm64",
                "--dev-version",
                "1.0.0",
            ],
        )
    }

    /// A dev node with slot files, configured to trust one generated signing key.
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = |p: &Path| p.to_str().unwrap().to_string();
        let node = Env::start_node(d);
        assert_eq!(
            std::fs::metadata(d.join("slot-b.img")).unwrap().len(),
            8 * MIB as u64
        );
        let secrets = d.join("secrets");
        let cfg = d.join("cfg");
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
            ],
        ));
        let key = generate_signing_key(&d.join("signing.pem")).unwrap();
        let machine_yaml = cfg.join("machine.yaml");
        let mut config = std::fs::read_to_string(&machine_yaml).unwrap();
        config.push_str(&format!(
            "---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: http://127.0.0.1/\ntrustedSigningKeys:\n  - {}\n",
            verifying_key_base64(&key.verifying_key())
        ));
        std::fs::write(&machine_yaml, config).unwrap();
        ok(ctl(
            None,
            &[
                "-n",
                &node.addr,
                "apply-config",
                "--insecure",
                "--fingerprint",
                &node.fingerprint,
                "-f",
                &s(&machine_yaml),
            ],
        ));
        Env {
            node,
            client: cfg.join("basaltctl.yaml"),
            key,
            dir,
        }
    }
}

#[test]
fn upgrade_push_with_resume_wrong_key_and_url_with_drop() {
    let env = Env::new();
    let d = env.d();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (slot_a, slot_b) = (env.slot("a"), env.slot("b"));
    let node = &env.node;
    let key = &env.key;
    let other = generate_signing_key(&d.join("other.pem")).unwrap();
    let cfgp = Some(env.client.as_path());

    let img = image(6 * MIB + 12345, 1);
    let good = build_bundle(d, &img, "1.1.0", key, "good");
    let wrong = build_bundle(d, &img, "1.1.0", &other, "wrong");

    // A bundle signed by an untrusted key: refused, nothing written, no progress.
    let o = ctl(cfgp, &["upgrade", "--bundle", &s(&wrong)]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("untrusted key"), "{}", text(&o));
    assert!(
        std::fs::read(&slot_b).unwrap().iter().all(|b| *b == 0),
        "slot B was written"
    );
    assert!(!d.join("state/upgrade/progress.json").exists());
    let boot = ok(ctl(cfgp, &["boot-status"]));
    assert!(boot.contains("booted A next A"), "{boot}");

    // The good bundle through a proxy that cuts the connection after 3 MiB: basaltctl
    // retries, asks where the node is, and resumes there.
    let (proxy, cuts) = cutting_proxy(node.addr.clone(), 3 * MIB as u64);
    let out = ok(ctl(cfgp, &["-n", &proxy, "upgrade", "--bundle", &s(&good)]));
    assert_eq!(*cuts.lock().unwrap(), 1, "{out}");
    assert!(out.contains("resuming at offset"), "{out}");
    assert!(
        out.contains("upgraded: slot B now holds qemu-arm64 1.1.0"),
        "{out}"
    );
    assert!(out.contains("rebooting into it"), "{out}");
    let log = node.log();
    assert!(
        log.contains("upgrade: resuming slot B at payload offset"),
        "{log}"
    );
    assert!(
        log.contains("read back: matches the signed slot_sha256"),
        "{log}"
    );
    let written = std::fs::read(&slot_b).unwrap();
    assert_eq!(&written[..img.len()], &img[..]);
    assert!(std::fs::read(&slot_a).unwrap().iter().all(|b| *b == 0));
    let boot = ok(ctl(cfgp, &["boot-status"]));
    assert!(
        boot.contains("next B") && boot.contains("trial B"),
        "{boot}"
    );
    let actions = std::fs::read_to_string(d.join("state/host-actions.jsonl")).unwrap();
    assert!(actions.contains("reboot"), "{actions}");
    assert!(!d.join("state/upgrade/progress.json").exists());

    // The node fetches a newer bundle by URL; the server drops the first response after
    // 2 MiB and the node resumes with a Range request.
    let img2 = image(5 * MIB + 777, 2);
    let b2 = build_bundle(d, &img2, "1.2.0", key, "v2");
    let (url, starts) = http_server(std::fs::read(&b2).unwrap(), 2 * MIB);
    let out = ok(ctl(
        cfgp,
        &["upgrade", "--url", &url, "--stage", "--tries", "2"],
    ));
    assert!(
        out.contains("upgraded: slot B now holds qemu-arm64 1.2.0"),
        "{out}"
    );
    assert!(out.contains("staged until the next reboot"), "{out}");
    let starts = starts.lock().unwrap().clone();
    // The 64 KiB header probe, the payload request cut after 2 MiB, its resumption.
    assert!(
        starts.len() >= 3 && starts[0] == 0 && starts[2] > starts[1] + MIB as u64,
        "{starts:?}"
    );
    assert_eq!(&std::fs::read(&slot_b).unwrap()[..img2.len()], &img2[..]);
    let boot = ok(ctl(cfgp, &["boot-status"]));
    assert!(
        boot.contains("slot B: bootable true tries left 2"),
        "{boot}"
    );

    // The audit trail has a secret-free summary of each upgrade call.
    let audit = ok(ctl(
        cfgp,
        &[
            "audit",
            "--rpc",
            "/basalt.machine.v1.MachineService/Upgrade",
        ],
    ));
    // The untrusted bundle was refused by its plan, before any payload was sent.
    assert!(!audit.contains("untrusted key"), "{audit}");
    let plans = ok(ctl(
        cfgp,
        &[
            "audit",
            "--rpc",
            "/basalt.machine.v1.MachineService/UpgradePlan",
        ],
    ));
    assert!(plans.contains("untrusted key"), "{plans}");
    // The cut call ("stream interrupted", or "receiving" when the dropped connection
    // cancelled it first) and the resumed one.
    assert!(
        audit.matches("bundle qemu-arm64 1.1.0 slot B").count() >= 2,
        "{audit}"
    );
    assert!(
        audit.contains("installed: bundle qemu-arm64 1.1.0 slot B"),
        "{audit}"
    );
    let audit = ok(ctl(
        cfgp,
        &[
            "audit",
            "--rpc",
            "/basalt.machine.v1.MachineService/UpgradeFromUrl",
        ],
    ));
    assert!(
        audit.contains("installed qemu-arm64 1.2.0 in slot B"),
        "{audit}"
    );

    // A downgrade is refused without --allow-downgrade.
    let old = build_bundle(d, &img, "0.9.0", key, "old");
    let o = ctl(cfgp, &["upgrade", "--bundle", &s(&old)]);
    assert!(
        !o.status.success() && text(&o).contains("not newer"),
        "{}",
        text(&o)
    );
}

/// A rollback to the never-written slot B is refused. The node's booted slot A holds part
/// of the new image: `basaltctl upgrade` sends only the chunks it lacks (UpgradePlan), the
/// node copies the others from slot A and installs exactly the signed image; `--send-all`
/// sends everything.
#[test]
fn upgrade_sends_only_the_chunks_the_booted_slot_lacks() {
    let env = Env::new();
    let d = env.d();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let cfgp = Some(env.client.as_path());
    // slot B was never written: a rollback to it is refused
    let o = ctl(cfgp, &["rollback"]);
    assert!(
        !o.status.success()
            && text(&o).contains("slot B")
            && text(&o).contains("holds no system image"),
        "{}",
        text(&o)
    );
    // slot A ("booted"): 4 MiB of content, then zeros up to its 8 MiB
    let booted = image(4 * MIB, 7);
    let mut a = std::fs::OpenOptions::new()
        .write(true)
        .open(env.slot("a"))
        .unwrap();
    a.write_all(&booted).unwrap();
    drop(a);
    // the new image: booted chunks 0 and 1, two new chunks, two zero chunks and a short
    // zero tail (all five in slot A)
    let mut img = booted[..2 * MIB].to_vec();
    img.extend(image(2 * MIB, 8));
    img.extend(vec![0u8; 2 * MIB + 100]);
    let bundle = build_bundle(d, &img, "1.1.0", &env.key, "delta");
    let out = ok(ctl(cfgp, &["upgrade", "--bundle", &s(&bundle)]));
    let header_len = std::fs::metadata(&bundle).unwrap().len() - img.len() as u64;
    assert!(out.contains("booted slot holds 5 of the 7 chunks"), "{out}");
    let sent = header_len + 2 * MIB as u64;
    assert!(
        out.contains(&format!("sending {sent} of the bundle's")),
        "{out}"
    );
    assert!(out.contains("slot B now holds qemu-arm64 1.1.0"), "{out}");
    let log = env.node.log();
    assert!(
        log.contains("5 chunks are copied from the booted slot A"),
        "{log}"
    );
    assert_eq!(
        &std::fs::read(env.slot("b")).unwrap()[..img.len()],
        &img[..]
    );

    // --send-all: the whole payload goes over the wire, same result
    let img2 = {
        let mut i = img.clone();
        i[5] ^= 1;
        i
    };
    let bundle2 = build_bundle(d, &img2, "1.2.0", &env.key, "all");
    let out = ok(ctl(
        cfgp,
        &["upgrade", "--send-all", "--bundle", &s(&bundle2)],
    ));
    let len2 = std::fs::metadata(&bundle2).unwrap().len();
    assert!(out.contains(&format!("sending {len2} of")), "{out}");
    assert_eq!(
        &std::fs::read(env.slot("b")).unwrap()[..img2.len()],
        &img2[..]
    );
}

/// A TCP proxy that forwards the first `stall_after` client bytes and then stops reading
/// (the upload hangs, as on a dead link).
fn stalling_proxy(upstream: String, stall_after: u64) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_read, mut c_write) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut total = 0u64;
                loop {
                    let want = ((stall_after - total) as usize).min(buf.len());
                    if want == 0 {
                        std::thread::sleep(Duration::from_secs(3600));
                        return;
                    }
                    let n = match c_read.read(&mut buf[..want]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    total += n as u64;
                    if s_write.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_read, &mut c_write);
            });
        }
    });
    addr
}

/// machined is killed (SIGKILL, like a power cut of the daemon) in the middle of an upload,
/// restarted on the same STATE and slot files, and the upload resumes from the progress it
/// had recorded: nothing before it is sent again.
#[test]
fn upload_resumes_after_machined_is_killed() {
    let mut env = Env::new();
    let d = env.d().to_path_buf();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let img = image(7 * MIB + 4321, 3);
    let bundle = build_bundle(&d, &img, "1.1.0", &env.key, "cut");
    let proxy = stalling_proxy(env.node.addr.clone(), (5 * MIB + MIB / 2) as u64);
    let mut upload = Command::new(env!("CARGO_BIN_EXE_basaltctl"))
        .args([
            "--retries",
            "0",
            "-n",
            &proxy,
            "upgrade",
            "--attempts",
            "1",
            "--bundle",
        ])
        .arg(&bundle)
        .env("BASALTCONFIG", &env.client)
        .env_remove("BASALT_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The node checkpoints every 4 MiB: wait for the 4 MiB record, then kill it.
    let progress = d.join("state/upgrade/progress.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&progress).unwrap_or_default();
        if text.contains(&format!("\"verified\": {}", 4 * MIB)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 4 MiB checkpoint: {text:?}\n{}",
            env.node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = env.node.child.kill();
    let _ = env.node.child.wait();
    let _ = upload.kill();
    let _ = upload.wait();
    env.node = Env::start_node(&d);
    // `env.node` is a fresh machined on the same state (configured: mutual TLS).
    let cfgp = Some(env.client.as_path());
    let out = ok(ctl(
        cfgp,
        &[
            "-n",
            &env.node.addr,
            "upgrade",
            "--bundle",
            &s(&bundle),
            "--stage",
        ],
    ));
    let header_len =
        u32::from_le_bytes(std::fs::read(&bundle).unwrap()[12..16].try_into().unwrap()) as usize;
    assert!(
        out.contains(&format!("resuming at offset {} ", header_len + 4 * MIB)),
        "{out}"
    );
    assert!(
        out.contains(&format!("({} bytes written of", img.len() - 4 * MIB)),
        "{out}"
    );
    assert_eq!(
        &std::fs::read(env.slot("b")).unwrap()[..img.len()],
        &img[..]
    );
}
