//! The node's API under QEMU: the qemu-arm64 image boots, machined (PID 1) gets an address
//! by DHCP on QEMU's user network and serves its API, reached from the host through a
//! port forward with `basaltctl` (issue 6, test a).
//!
//! `maintenance_then_configured_then_persistent`:
//! 1. first boot: no configuration → maintenance mode; the console shows the certificate
//!    fingerprint, the DHCP lease and "slot A is committed";
//! 2. `basaltctl apply-config --insecure` with a wrong fingerprint is refused; with the
//!    right one the configuration is stored and the API switches to mutual TLS;
//! 3. with the operator's client certificate: `version` names the machine, `boot-status`
//!    shows slot A booted and committed; the maintenance fingerprint no longer matches;
//! 4. `basaltctl shutdown`: the node powers off (QEMU exits by itself);
//! 5. second boot of the same disk: configured from STATE straight away (no maintenance
//!    mode), `version` over mutual TLS works.
//!
//! Every QEMU is killed when its guard drops, also when an assertion fails. Needs what
//! `qemu_early_boot` needs, plus basaltctl from the same `cargo test --workspace` build.

use basalt_boards::Board;
use basalt_tests::{
    Qemu, build_image, ctl, free_port, gen_node_config, maintenance_fingerprint, node_machined, ok,
    output_text, require_qemu_arm64,
};
use std::path::Path;
use std::time::Duration;

/// Boot to the API line, with DHCP (QEMU TCG; typically ~40 s).
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

#[test]
fn maintenance_then_configured_then_persistent() {
    require_qemu_arm64();
    let board = Board::load("qemu-arm64").unwrap();
    let fx = build_image(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-node-api/v1"),
        board,
        "1.0.0",
        &node_machined(),
        None,
    );
    let port = free_port();
    let endpoint = format!("127.0.0.1:{port}");

    // 1. first boot: maintenance mode
    let mut qemu = Qemu::boot_arm64(
        &fx.output.disk_image,
        &fx.dir.join("first-boot.console.log"),
        Some(port),
    );
    qemu.expect("API listening on", BOOT_TIMEOUT);
    qemu.expect("network up: eth0 10.0.2.15/24", Duration::from_secs(60));
    let console = qemu.console();
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
    let machine_yaml = s(&node_config.machine_yaml);
    let client = node_config.client_yaml;
    let wrong = format!(
        "{}{}",
        &fingerprint[..63],
        if fingerprint.ends_with('0') { "1" } else { "0" }
    );
    let o = ctl(
        None,
        &[
            "-n",
            &endpoint,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &wrong,
            "-f",
            &machine_yaml,
        ],
    );
    assert!(
        !o.status.success() && output_text(&o).contains("fingerprint"),
        "{}",
        output_text(&o)
    );
    let applied = ok(ctl(
        None,
        &[
            "-n",
            &endpoint,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &fingerprint,
            "-f",
            &machine_yaml,
        ],
    ));
    assert!(applied.contains("mutual TLS"), "{applied}");

    // 3. mutual TLS from now on
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(version.contains("machine qemu-node-1"), "{version}");
    let boot = ok(ctl(Some(&client), &["boot-status"]));
    assert!(boot.starts_with("booted A next A"), "{boot}");
    assert!(boot.contains("committed true"), "{boot}");
    // maintenance is over: the node now presents its configured certificate
    let o = ctl(
        None,
        &[
            "-n",
            &endpoint,
            "apply-config",
            "--insecure",
            "--fingerprint",
            &fingerprint,
            "-f",
            &machine_yaml,
        ],
    );
    assert!(
        !o.status.success(),
        "maintenance must be over: {}",
        output_text(&o)
    );

    // 4. orderly power-off
    let off = ok(ctl(Some(&client), &["shutdown"]));
    assert!(
        !off.contains("recorded"),
        "a node acts, it does not record: {off}"
    );
    qemu.expect_exit(Duration::from_secs(60));
    drop(qemu);

    // 5. the configuration survived on STATE
    let mut qemu = Qemu::boot_arm64(
        &fx.output.disk_image,
        &fx.dir.join("second-boot.console.log"),
        Some(port),
    );
    qemu.expect("API listening on", BOOT_TIMEOUT);
    qemu.expect("network up:", Duration::from_secs(60));
    let console = qemu.console();
    assert!(console.contains("(mutual TLS)"), "{console}");
    assert!(!console.contains("maintenance mode"), "{console}");
    let version = ok(ctl(Some(&client), &["version"]));
    assert!(version.contains("machine qemu-node-1"), "{version}");
}
