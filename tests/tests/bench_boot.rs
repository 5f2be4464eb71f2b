//! Boot and upgrade measurements under QEMU (TCG) for `docs/PERFORMANCE.md` (issue 6, item
//! 5). Not tests: every function is `#[ignore]`d and run by `scripts/bench-boot`, which
//! prints the Markdown rows they emit (lines starting with `| `).
//!
//! Per board, one power-on of a fresh image, split by console lines: firmware (power-on to
//! the kernel's `Linux version`), kernel (to machined's first `[basalt]` line), machined
//! (to `API listening on`), network (to `network up:`, the DHCP lease); then, after
//! configuring the node, machined's resident memory (Processes RPC, pid 1). On qemu-arm64
//! also an A → B upgrade of the 512 MiB slot: the time `basaltctl upgrade` takes (plan,
//! push of what slot A lacks, chunk-verified write, fsync, read-back) and reboot → "slot B
//! committed"; then the same slot size back into A with everything sent (`--send-all`).
//!
//! Times are wall-clock of the host, polled every 100 ms, so each is ±0.1 s; TCG is several
//! times slower than a real board, and the host's load shows in every number.

use basalt_boards::Board;
use basalt_image::bundle::{generate_signing_key, verifying_key_base64};
use basalt_tests::{
    Fixture, Qemu, UefiFirmware, apply_config_insecure, build_image_as_shipped, ctl, free_port,
    gen_node_config, maintenance_fingerprint, node_machined_built, ok, output_text,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const STAGE_TIMEOUT: Duration = Duration::from_secs(240);

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// Waits for the boot stages; prints one row; returns the QEMU.
fn measure_boot(board: &str, mut qemu: Qemu) -> Qemu {
    let mut split = Vec::new();
    for needle in [
        "Linux version",
        "[basalt]",
        "API listening on",
        "network up:",
    ] {
        split.push(qemu.expect(needle, STAGE_TIMEOUT).as_secs_f64());
    }
    let api: f64 = split[..3].iter().sum();
    println!(
        "| {board} | {:.1} | {:.1} | {:.1} | {api:.1} | {:.1} |",
        split[0], split[1], split[2], split[3]
    );
    qemu
}

/// Maintenance → configured (with an UpdateConfig trusting `key`); returns the client config.
fn configure(dir: &Path, qemu: &Qemu, endpoint: &str, key: &Path) -> PathBuf {
    let fingerprint = maintenance_fingerprint(&qemu.console());
    let cfg = gen_node_config(dir, "bench-node", endpoint);
    let signing = basalt_image::bundle::load_signing_key(key).expect("signing key");
    let mut config = std::fs::read_to_string(&cfg.machine_yaml).unwrap();
    config.push_str(&format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: UpdateConfig\nchannel: http://10.0.2.2/\ntrustedSigningKeys:\n  - {}\n",
        verifying_key_base64(&signing.verifying_key())
    ));
    std::fs::write(&cfg.machine_yaml, config).unwrap();
    ok(apply_config_insecure(
        endpoint,
        &fingerprint,
        &s(&cfg.machine_yaml),
    ));
    cfg.client_yaml
}

/// machined's resident memory on the node, MiB.
fn machined_rss(client: &Path) -> f64 {
    let out = ok(ctl(Some(client), &["-o", "json", "processes"]));
    let doc: serde_json::Value = serde_json::from_str(&out).expect("processes JSON");
    let pid1 = doc[0]["result"]["processes"]
        .as_array()
        .expect("a process list")
        .iter()
        .find(|p| p["pid"] == 1)
        .expect("pid 1")
        .clone();
    pid1["resident_bytes"].as_f64().expect("resident_bytes") / 1_048_576.0
}

fn images(root: &Path, board: &str, arch: &str, versions: &[&str]) -> (PathBuf, Vec<Fixture>) {
    std::fs::create_dir_all(root).unwrap();
    let key = root.join("signing.pem");
    let _ = std::fs::remove_file(&key);
    generate_signing_key(&key).unwrap();
    let machined = node_machined_built(arch, "release");
    let fixtures = versions
        .iter()
        .map(|v| {
            build_image_as_shipped(
                &root.join(v),
                Board::load(board).unwrap(),
                v,
                &machined,
                Some(key.clone()),
            )
        })
        .collect();
    (key, fixtures)
}

#[test]
#[ignore = "benchmark: run by scripts/bench-boot"]
fn bench_qemu_arm64_boot_and_upgrade() {
    basalt_tests::require_qemu_arm64();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-boot-arm64");
    let (key, fx) = images(&root, "qemu-arm64", "aarch64", &["1.0.0", "2.0.0"]);
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let disk = &fx[0].output.disk_image;
    let qemu = Qemu::boot_arm64(disk, &root.join("boot-1.console.log"), Some(port));
    let mut qemu = measure_boot("qemu-arm64", qemu);
    let client = configure(&root, &qemu, &endpoint, &key);
    println!(
        "| qemu-arm64 machined RSS | {:.1} MiB |",
        machined_rss(&client)
    );

    let bundle = |f: &Fixture| f.output.disk_image.with_file_name("slot.bundle");
    let mib = std::fs::metadata(bundle(&fx[1])).unwrap().len() as f64 / 1_048_576.0;
    // 1.0.0 → 2.0.0: only the chunks slot A lacks are sent (UpgradePlan)
    let start = Instant::now();
    let o = ctl(Some(&client), &["upgrade", "--bundle", &s(&bundle(&fx[1]))]);
    let write = start.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", output_text(&o));
    let out = String::from_utf8_lossy(&o.stderr).into_owned();
    let sent = out
        .lines()
        .find_map(|l| l.split("upgrade: sending ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
        / 1_048_576.0;
    qemu.expect_exit(Duration::from_secs(120));
    let reboot = Instant::now();
    let mut qemu = Qemu::boot_arm64(disk, &root.join("boot-2.console.log"), Some(port));
    qemu.expect("slot B committed", Duration::from_secs(600));
    println!(
        "| qemu-arm64 upgrade of a {mib:.0} MiB slot, {sent:.0} MiB sent (the rest in the booted slot) | push + write + verify {write:.1} s; power-on → slot B committed {:.1} s |",
        reboot.elapsed().as_secs_f64()
    );
    // the same size back into A with the whole payload sent (--send-all), staged
    let start = Instant::now();
    ok(ctl(
        Some(&client),
        &[
            "upgrade",
            "--bundle",
            &s(&bundle(&fx[0])),
            "--allow-downgrade",
            "--stage",
            "--send-all",
        ],
    ));
    let write = start.elapsed().as_secs_f64();
    println!(
        "| qemu-arm64 upgrade of a {mib:.0} MiB slot, all sent (`--send-all`) | push + write + verify {write:.1} s ({:.1} MiB/s) |",
        mib / write
    );
    ok(ctl(Some(&client), &["shutdown"]));
    qemu.expect_exit(Duration::from_secs(60));
}

#[test]
#[ignore = "benchmark: run by scripts/bench-boot"]
fn bench_qemu_x86_64_boot() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-boot-x86_64");
    let (key, fx) = images(&root, "qemu-x86_64", "x86_64", &["1.0.0"]);
    let board = Board::load("qemu-x86_64").unwrap();
    let firmware = UefiFirmware::prepare(&board, &root.join("firmware"));
    let port = free_port();
    let qemu = Qemu::boot_uefi(
        &board,
        &firmware,
        &fx[0].output.disk_image,
        &root.join("boot-1.console.log"),
        Some(port),
    );
    let qemu = measure_boot("qemu-x86_64", qemu);
    let client = configure(&root, &qemu, &format!("127.0.0.1:{port}"), &key);
    println!(
        "| qemu-x86_64 machined RSS | {:.1} MiB |",
        machined_rss(&client)
    );
}
