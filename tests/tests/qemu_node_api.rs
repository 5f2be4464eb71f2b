//! The node's API under QEMU: the qemu-arm64 image boots, machined (PID 1) gets an address
//! by DHCP on QEMU's user network and serves its API, reached from the host through a
//! port forward with `basaltctl` (issue 6, test a).
//!
//! `maintenance_then_configured_then_persistent`:
//! 0. before the first boot the disk file grows by [`GROW`] and STATE is zeroed (an image
//!    written to a larger card, a blank STATE);
//! 1. first boot: STATE is created from the root's template and DATA grown to fill the disk
//!    (console lines); no configuration → maintenance mode; the console shows the
//!    certificate fingerprint, the DHCP lease and "slot A is committed";
//! 2. `basaltctl apply-config --insecure` with a wrong fingerprint is refused; with the
//!    right one the configuration is stored and the API switches to mutual TLS;
//! 3. with the operator's client certificate: `version` names the machine, `boot-status`
//!    shows slot A booted and committed; the maintenance fingerprint no longer matches;
//! 4. `basaltctl shutdown`: the node powers off (QEMU exits by itself); the disk file is
//!    checked with reference tools: `sgdisk -v` finds no problem, `sfdisk -J` shows DATA
//!    ending at the last MiB before the backup GPT, and on read-only loop devices
//!    `dumpe2fs -h` shows DATA's and STATE's ext4 filling their partitions and `e2fsck -fn`
//!    finds them clean;
//! 5. second boot of the same disk: configured from STATE straight away (no maintenance
//!    mode, nothing created or grown again), `version` over mutual TLS works.
//!
//! Workloads ride on the same two boots (the image carries the container extension): the
//! configuration of step 2 has a container service whose aarch64 image (busybox httpd,
//! built by the test) comes from a registry on the host (Debian's docker-registry over TLS
//! with a test CA, reached at 10.0.2.2), so in step 3 the node pulls it and runs it, the
//! test reaches it through a port forward, `basaltctl logs` shows its access log and
//! `basaltctl images -o json` the image with the service using it (`image rm` of it is
//! refused); before
//! step 5 the registry is stopped, and the container runs again from the node's local
//! content store on DATA.
//!
//! Every QEMU is killed when its guard drops, also when an assertion fails. Needs what
//! `qemu_early_boot` needs, plus basaltctl from the same `cargo test --workspace` build.

use basalt_boards::Board;
use basalt_tests::containers::{HTTPD_INDEX, Registry, busybox_httpd_image, push};
use basalt_tests::loop_device::LoopDevice;
use basalt_tests::{
    Qemu, apply_config_insecure, build_image_with_containers, ctl, free_port, gen_node_config,
    maintenance_fingerprint, node_machined, ok, output_text, require_qemu_arm64,
};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// How much larger than the image the disk is on its first boot.
const GROW: u64 = 256 << 20;

/// Boot to the API line, with DHCP (QEMU TCG; typically ~40 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

fn run_text(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .expect("the tool runs (e2fsprogs, gdisk, fdisk)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd:?}: {text}");
    text
}

/// `(start, size)` in bytes of the partition named `name`, from `sfdisk -J`, and the
/// table's last usable LBA.
fn gpt_partition(disk: &Path, name: &str) -> (u64, u64, u64) {
    let json: serde_json::Value =
        serde_json::from_str(&run_text(Command::new("sfdisk").arg("-J").arg(disk))).unwrap();
    let t = &json["partitiontable"];
    let p = t["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {json}"));
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
        t["lastlba"].as_u64().unwrap(),
    )
}

/// The port the test container's httpd listens on inside the node.
const WEB_PORT: u16 = 8080;

/// The `ServiceConfig` of the test: a registry at 10.0.2.2 (the host, from QEMU's user
/// network) with its CA, and the web container from it.
fn services_yaml(registry: &Registry, image: &str) -> String {
    let ca: String = registry
        .ca_pem()
        .expect("TLS registry")
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\nregistries:\n  - host: {}\n    \
         ca: |\n{ca}services:\n  - name: web\n    image: {image}\n    memory: 64Mi\n",
        image.split('/').next().expect("a registry host")
    )
}

/// Waits until `basaltctl services -o json` shows `name` running and healthy; returns
/// how long that took.
fn wait_running(client: &Path, name: &str, within: Duration) -> Duration {
    let t0 = std::time::Instant::now();
    loop {
        let out = ctl(Some(client), &["services", "-o", "json"]);
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let service = json[0]["result"]["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == name).cloned());
        if let Some(s) = &service
            && s["state"] == "running"
            && s["healthy"] == true
        {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "{name} not running within {within:?}: {service:?}\n{}",
            output_text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the node's web container answers through the port forward.
fn wait_page(web: u16, within: Duration) {
    let t0 = std::time::Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sf", "-m", "5", &format!("http://127.0.0.1:{web}/")])
            .output()
            .expect("curl runs");
        if out.status.success() && out.stdout == HTTPD_INDEX.as_bytes() {
            return;
        }
        assert!(
            t0.elapsed() < within,
            "the container never answered on {web}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Checks that the ext4 in partition `name` fills it and is clean; returns its size.
fn ext4_fills_partition(disk: &Path, name: &str) -> u64 {
    let (start, size, _) = gpt_partition(disk, name);
    let dev = LoopDevice::partition_read_only(disk, start, size);
    let header = run_text(Command::new("dumpe2fs").arg("-h").arg(&dev.0));
    let field = |key: &str| -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in {header}"))
    };
    let fs_bytes = field("Block count:") * field("Block size:");
    assert_eq!(fs_bytes, size, "{name}: ext4 of {fs_bytes} bytes in {size}");
    run_text(Command::new("e2fsck").arg("-fn").arg(&dev.0));
    fs_bytes
}

#[test]
fn maintenance_then_configured_then_persistent() {
    require_qemu_arm64();
    let board = Board::load("qemu-arm64").unwrap();
    let fx = build_image_with_containers(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-node-api/v1"),
        board,
        "1.0.0",
        &node_machined(),
        // the run's key: the same release as the upgrade tests' first, built once
        Some(basalt_tests::image_cache::run_signing_key(&basalt_tests::repo()).0),
    );
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");
    let web = free_port();
    let forwards = [(web, WEB_PORT)];
    let registry = Registry::start(&fx.dir.join("registry"), true);
    let image = format!(
        "10.0.2.2:{}/httpd:v1",
        registry.addr().rsplit(':').next().expect("a port")
    );
    push(
        &busybox_httpd_image(&fx.dir.join("httpd-arm64"), "arm64", WEB_PORT),
        &registry.reference("httpd:v1"),
        &registry,
    );

    // 0. a larger disk with a blank STATE
    let disk = &fx.output.disk_image;
    let state = fx.output.plan.by_label("STATE").unwrap();
    let data_before = fx.output.plan.by_label("DATA").unwrap().request.size;
    let f = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.write_all_at(&vec![0u8; state.request.size as usize], state.start)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() + GROW).unwrap();
    drop(f);

    // 1. first boot: STATE created, DATA grown, maintenance mode
    let mut qemu = Qemu::boot_arm64_forwarding(
        &fx.output.disk_image,
        &fx.dir.join("first-boot.console.log"),
        Some(port),
        &forwards,
    );
    qemu.expect("API listening on", BOOT_TIMEOUT);
    qemu.expect("network up: eth0 10.0.2.15/24", Duration::from_secs(60));
    let console = qemu.console();
    for line in [
        "is blank: writing the empty ext4 from /system/lib/basalt/state.ext4",
        "STATE created: ext4 on vda4, grown online to 64.0 MiB",
        "GPT of vda moved to the disk's end",
        "(BLKPG)",
        "DATA grown: ext4 on vda5 from 256.0 MiB to",
    ] {
        assert!(console.contains(line), "{line}: {console}");
    }
    assert!(console.contains("maintenance mode"), "{console}");
    let fingerprint = maintenance_fingerprint(&console);
    assert_eq!(fingerprint.len(), 64, "{fingerprint}");
    assert!(
        console.contains("boot backend: u-boot env /boot/uboot.env"),
        "{console}"
    );
    qemu.expect("slot A is committed", Duration::from_secs(30));

    // 2. configuration through the maintenance API, pinned by fingerprint
    let node_config = gen_node_config(&fx.dir.join("ctl"), "qemu-node-1", &endpoint);
    let mut text = std::fs::read_to_string(&node_config.machine_yaml).unwrap();
    text.push_str(&services_yaml(&registry, &image));
    std::fs::write(&node_config.machine_yaml, text).unwrap();
    let machine_yaml = s(&node_config.machine_yaml);
    let client = node_config.client_yaml;
    let wrong = format!(
        "{}{}",
        &fingerprint[..63],
        if fingerprint.ends_with('0') { "1" } else { "0" }
    );
    let o = apply_config_insecure(&endpoint, &wrong, &machine_yaml);
    assert!(
        !o.status.success() && output_text(&o).contains("fingerprint"),
        "{}",
        output_text(&o)
    );
    let applied = ok(apply_config_insecure(
        &endpoint,
        &fingerprint,
        &machine_yaml,
    ));
    let applied_at = std::time::Instant::now();
    assert!(applied.contains("mutual TLS"), "{applied}");

    // 3. mutual TLS from now on
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(version.contains("machine qemu-node-1"), "{version}");
    let boot = ok(ctl(Some(&client), &["boot-status"]));
    assert!(boot.starts_with("booted A next A"), "{boot}");
    assert!(boot.contains("committed true"), "{boot}");
    // maintenance is over: the node now presents its configured certificate
    let o = apply_config_insecure(&endpoint, &fingerprint, &machine_yaml);
    assert!(
        !o.status.success(),
        "maintenance must be over: {}",
        output_text(&o)
    );

    // the container: pulled from the host's registry, running, answering, logging
    let took = wait_running(&client, "web", Duration::from_secs(300));
    wait_page(web, Duration::from_secs(60));
    eprintln!(
        "apply-config to web running {:.1} s, to answering {:.1} s (pull included, TCG)",
        took.as_secs_f64(),
        applied_at.elapsed().as_secs_f64()
    );
    wait_running(&client, "containerd", Duration::from_secs(10));
    let logs = ok(ctl(Some(&client), &["logs", "web"]));
    assert!(logs.contains("response:200"), "{logs}");
    // The node's image store through basaltctl: the image, used by web; removing it refused.
    let images: serde_json::Value =
        serde_json::from_str(&ok(ctl(Some(&client), &["images", "-o", "json"]))).unwrap();
    let listed = &images[0]["result"]["images"];
    assert_eq!(listed[0]["name"], image.as_str(), "{images:#}");
    assert_eq!(
        listed[0]["used_by"],
        serde_json::json!(["web"]),
        "{images:#}"
    );
    assert!(listed[0]["size_bytes"].as_u64() > Some(0), "{images:#}");
    let rm = ctl(Some(&client), &["image", "rm", &image]);
    assert!(
        !rm.status.success() && output_text(&rm).contains("used by service web"),
        "{}",
        output_text(&rm)
    );
    // Measured for docs/PERFORMANCE.md: the runtime's memory on the node.
    let processes = ok(ctl(Some(&client), &["processes"]));
    for line in processes.lines().filter(|l| l.contains("containerd")) {
        eprintln!("node process: {line}");
    }

    // 4. orderly power-off
    let off = ok(ctl(Some(&client), &["shutdown"]));
    assert!(
        !off.contains("recorded"),
        "a node acts, it does not record: {off}"
    );
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);
    let sgdisk = run_text(Command::new("sgdisk").arg("-v").arg(disk));
    assert!(sgdisk.contains("No problems found"), "{sgdisk}");
    let (start, size, last_lba) = gpt_partition(disk, "DATA");
    let disk_len = std::fs::metadata(disk).unwrap().len();
    assert_eq!(
        last_lba,
        disk_len / 512 - 34,
        "backup GPT at the disk's end"
    );
    assert_eq!(
        start + size,
        (last_lba + 1) / 2048 * 2048 * 512,
        "DATA to the last MiB"
    );
    assert!(size >= data_before + GROW - (1 << 20), "DATA {size} bytes");
    let data_fs = ext4_fills_partition(disk, "DATA");
    let state_fs = ext4_fills_partition(disk, "STATE");
    assert_eq!(state_fs, state.request.size);
    eprintln!("DATA ext4 {data_fs} bytes (image: {data_before}), STATE ext4 {state_fs} bytes");

    // 5. the configuration survived on STATE, the image on DATA: no registry any more
    drop(registry);
    let mut qemu = Qemu::boot_arm64_forwarding(
        &fx.output.disk_image,
        &fx.dir.join("second-boot.console.log"),
        Some(port),
        &forwards,
    );
    qemu.expect("API listening on", BOOT_TIMEOUT);
    qemu.expect("network up:", Duration::from_secs(60));
    let console = qemu.console();
    assert!(console.contains("(mutual TLS)"), "{console}");
    assert!(!console.contains("maintenance mode"), "{console}");
    for again in ["STATE created", "GPT of vda", "BLKPG", "DATA grown"] {
        assert!(
            !console.contains(again),
            "{again} on the second boot: {console}"
        );
    }
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(version.contains("machine qemu-node-1"), "{version}");
    wait_running(&client, "web", Duration::from_secs(300));
    wait_page(web, Duration::from_secs(60));
    let logs = ok(ctl(Some(&client), &["logs", "web"]));
    assert!(
        !logs.contains("pull failed"),
        "ran from the local store: {logs}"
    );
}
