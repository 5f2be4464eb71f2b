//! Integration tests of Basalt OS.
//!
//! Tests under `tests/tests/` boot images built by `basalt-image` under QEMU (TCG) and talk
//! to the node's API with `basaltctl` through QEMU's user-network port forwarding. This
//! library holds the shared harness:
//!
//! - [`node_machined`]: the static machined for a node (`scripts/build-node`), once per run;
//! - [`build_image`]: a board's disk image around it, into the test's temp folder, without
//!   the container runtime ([`build_image_with_containers`] for the image that tests it);
//! - [`node_machined_for`]: the same for another architecture (x86_64 nodes);
//! - [`UefiFirmware`]: per-test copies of the UEFI firmware (QEMU's pflash wants its own
//!   writable vars store, and on arm64 both images padded to 64 MiB);
//! - [`Qemu`]: a booted machine whose console is captured (and saved to a log file), killed
//!   when dropped — also when an assertion fails; QEMU virt with U-Boot, UEFI boards, and
//!   the Raspberry Pi machines (U-Boot from the SD card's BOOT partition);
//! - [`basaltctl`]: the CLI built by the same `cargo test --workspace` run;
//! - [`free_port`]: a free TCP port on 127.0.0.1 for a host forward;
//! - [`loop_device`]: loop devices over disk image files, detached when dropped;
//! - [`rig`]: a configured node of `qemu-arm64` (U-Boot) or a UEFI board (`qemu-x86_64`,
//!   `arm64-uefi`) on one disk file, power-cycled by relaunching QEMU; with the shared check
//!   that a node fell back to slot A by itself;
//! - [`slot_tools`]: bad slots, signed bundles of them, and bytes flipped in a slot on disk
//!   (the same slot shape on U-Boot and UEFI boards);
//! - [`bad_updates`]: the bad-update scenario (tests c and f(ii)) for any rig board;
//! - [`containers`]: the pinned containerd, a local OCI registry (`docker-registry`, with
//!   TLS from a test CA), OCI image layouts of our own and `skopeo` to push them.

pub mod bad_updates;
pub mod containers;
pub mod image_cache;
pub mod loop_device;
pub mod rig;
pub mod slot_tools;

use basalt_boards::{Board, PartitionRole};
use basalt_image::compose::{BuildOutput, BuildRequest};
use basalt_image::inputs::{DebCache, KernelSource};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian's U-Boot for QEMU's arm64 `virt` machine.
pub const UBOOT_QEMU_ARM64: &str = "/usr/lib/u-boot/qemu_arm64/u-boot.bin";

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Panics with a clear message unless QEMU for aarch64 and Debian's U-Boot are installed.
pub fn require_qemu_arm64() {
    let ok = Command::new("qemu-system-aarch64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "qemu-system-aarch64 is not installed: run scripts/setup-host"
    );
    assert!(
        Path::new(UBOOT_QEMU_ARM64).exists(),
        "{UBOOT_QEMU_ARM64} is missing (package u-boot-qemu): run scripts/setup-host"
    );
}

/// The static aarch64 machined, built by `scripts/build-node aarch64` (once per process;
/// incremental after the first build).
pub fn node_machined() -> PathBuf {
    node_machined_for("aarch64")
}

/// The cargo profile of the node binaries the tests boot (`scripts/build-node --profile`):
/// release code without LTO, so that a cold build is cheaper.
pub const NODE_PROFILE: &str = "node-test";

/// The static machined for `arch` (`aarch64` or `x86_64`), built by `scripts/build-node`
/// with [`NODE_PROFILE`] (once per process and architecture).
pub fn node_machined_for(arch: &str) -> PathBuf {
    node_machined_built(arch, NODE_PROFILE)
}

/// The static machined for `arch` built with the cargo `profile` (`release` is what a
/// board's image ships; benchmarks measure it), once per process, architecture and profile.
pub fn node_machined_built(arch: &str, profile: &str) -> PathBuf {
    static BUILT: Mutex<Vec<((String, String), PathBuf)>> = Mutex::new(Vec::new());
    assert!(
        matches!(arch, "aarch64" | "x86_64"),
        "no node build for architecture {arch}"
    );
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = (arch.to_string(), profile.to_string());
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let root = repo();
    let start = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("scripts/build-node"))
        .args(["--profile", profile, arch])
        .current_dir(&root)
        .output()
        .expect("bash runs scripts/build-node");
    assert!(
        out.status.success(),
        "scripts/build-node --profile {profile} {arch} failed (run scripts/setup-host for the cross toolchain):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "scripts/build-node --profile {profile} {arch}: {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let path = match profile {
        "release" => root.join(format!("target/node/{arch}/machined")),
        _ => root.join(format!("target/node/{profile}/{arch}/machined")),
    };
    built.push((key, path.clone()));
    path
}

/// A built image and the folder it lives in.
pub struct Fixture {
    /// The folder (console logs go here too).
    pub dir: PathBuf,
    /// What basalt-image produced.
    pub output: BuildOutput,
}

/// Size of the A/B slots in the images the tests boot. A slot's content is about 130 MB;
/// an upgrade writes and reads back the whole slot, so the boards' 512 MiB would make every
/// upgrade under TCG spend most of its time on empty space. The layout code is the same.
pub const TEST_SLOT_MIB: u64 = 192;

/// `board` with its A/B slots at [`TEST_SLOT_MIB`] (slots already smaller stay as they are).
pub fn with_test_slots(mut board: Board) -> Board {
    for p in &mut board.disk.partitions {
        if matches!(p.label, PartitionRole::SystemA | PartitionRole::SystemB) {
            p.size_mib = p.size_mib.min(TEST_SLOT_MIB);
        }
    }
    board
}

/// Builds `board` with [`TEST_SLOT_MIB`] slots at `version` into `dir`, without the
/// container runtime in its root (only the image that tests containers carries it:
/// [`build_image_with_containers`]); see [`build_image_as_shipped`].
pub fn build_image(
    dir: &Path,
    board: Board,
    version: &str,
    machined: &Path,
    signing_key: Option<PathBuf>,
) -> Fixture {
    let board = with_test_slots(board);
    build_fixture(dir, board, version, machined, signing_key, false)
}

/// As [`build_image`], with the container runtime (containerd, runc and their libraries,
/// `basalt_image::compose::extension`) in the root filesystem, unless the board turns it
/// off (`[extensions] containers = false`).
pub fn build_image_with_containers(
    dir: &Path,
    board: Board,
    version: &str,
    machined: &Path,
    signing_key: Option<PathBuf>,
) -> Fixture {
    let board = with_test_slots(board);
    build_fixture(dir, board, version, machined, signing_key, true)
}

/// Builds `board` as its board file says at `version` into `dir` (replacing a previous
/// run's; tests pass a folder under `CARGO_TARGET_TMPDIR`), with `machined` as the node's
/// init: the board's slot sizes, and its extensions (the container runtime unless the board
/// turns it off), as a release of the board ships. `signing_key` signs the update bundle.
/// Built once per run for the same inputs ([`image_cache`]).
pub fn build_image_as_shipped(
    dir: &Path,
    board: Board,
    version: &str,
    machined: &Path,
    signing_key: Option<PathBuf>,
) -> Fixture {
    build_fixture(dir, board, version, machined, signing_key, true)
}

/// Builds `board` at `version` into `dir` through the [`image_cache`]; `containers` asks
/// for the container runtime in the root filesystem.
fn build_fixture(
    dir: &Path,
    board: Board,
    version: &str,
    machined: &Path,
    signing_key: Option<PathBuf>,
    containers: bool,
) -> Fixture {
    let dir = dir.to_path_buf();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("remove the previous run's images");
    }
    std::fs::create_dir_all(&dir).unwrap();
    let cache = DebCache::from_repo(&repo()).expect("inputs.lock: run scripts/setup-host");
    let start = Instant::now();
    let board_name = board.name.clone();
    let output = image_cache::build_cached(
        &repo(),
        &BuildRequest {
            board,
            version: version.into(),
            out: dir.join("image"),
            machined: machined.to_path_buf(),
            kernel: KernelSource::Package,
            cache,
            epoch: 1_700_000_000,
            signing_key,
            containers,
        },
    );
    eprintln!(
        "{}: {board_name} {version} built (or taken from target/test-images) in {:.0} s",
        dir.display(),
        start.elapsed().as_secs_f64()
    );
    Fixture { dir, output }
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// How a wait ended.
#[derive(Debug)]
pub enum Ending {
    /// The condition held after this long.
    Condition(Duration),
    /// QEMU exited first.
    Exited(std::process::ExitStatus, Duration),
}

/// A QEMU machine, killed when dropped.
pub struct Qemu {
    child: Child,
    console: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// Writable copies of a UEFI board's pflash images for one machine.
#[derive(Debug, Clone)]
pub struct UefiFirmware {
    /// The code image (read-only to QEMU).
    pub code: PathBuf,
    /// The variable store (writable, starts as the board's template or empty).
    pub vars: PathBuf,
}

impl UefiFirmware {
    /// Prepares the firmware of `board` (its `[qemu] pflash_code` / `pflash_vars`) in `dir`:
    /// on `virt` (arm64) QEMU wants both flashes exactly 64 MiB, so the code is padded and
    /// the vars store is an empty 64 MiB file; on x86_64 the OVMF vars template is copied.
    /// Panics naming the missing package.
    pub fn prepare(board: &Board, dir: &Path) -> UefiFirmware {
        let q = board
            .qemu
            .as_ref()
            .unwrap_or_else(|| panic!("board {} has no [qemu] section", board.name));
        let code_src = PathBuf::from(
            q.pflash_code
                .as_deref()
                .unwrap_or_else(|| panic!("board {} has no pflash_code", board.name)),
        );
        assert!(
            code_src.exists(),
            "{} is missing (packages qemu-efi-aarch64 / ovmf): run scripts/setup-host",
            code_src.display()
        );
        std::fs::create_dir_all(dir).unwrap();
        let code = dir.join("uefi-code.fd");
        let vars = dir.join("uefi-vars.fd");
        std::fs::copy(&code_src, &code).expect("copy the UEFI code image");
        match q.pflash_vars.as_deref() {
            Some(template) => {
                std::fs::copy(template, &vars).expect("copy the UEFI vars template");
            }
            None => {
                const FLASH: u64 = 64 << 20;
                File::options()
                    .write(true)
                    .open(&code)
                    .and_then(|f| f.set_len(FLASH))
                    .expect("pad the UEFI code image");
                File::create(&vars)
                    .and_then(|f| f.set_len(FLASH))
                    .expect("create the UEFI vars store");
            }
        }
        UefiFirmware { code, vars }
    }
}

impl Qemu {
    /// Boots `disk` on a UEFI board (`arm64-uefi`: `virt`; `qemu-x86_64`: `q35`) from
    /// `firmware` as pflash, through systemd-boot on the disk's ESP; the disk and, with
    /// `api_port`, a virtio network (QEMU's user network, 127.0.0.1:`api_port` forwarded to
    /// the node's port 50000) are PCI devices, the disk first in the boot order. The
    /// console (first serial port) goes to `log` as well.
    pub fn boot_uefi(
        board: &Board,
        firmware: &UefiFirmware,
        disk: &Path,
        log: &Path,
        api_port: Option<u16>,
    ) -> Qemu {
        let q = board
            .qemu
            .as_ref()
            .unwrap_or_else(|| panic!("board {} has no [qemu] section", board.name));
        let mut cmd = Command::new(&q.binary);
        cmd.args(["-M", &q.machine]);
        if let Some(cpu) = &q.cpu {
            cmd.args(["-cpu", cpu]);
        }
        cmd.args(["-m", &q.memory_mib.to_string(), "-smp", "1"])
            .args(["-nographic", "-accel", "tcg", "-no-reboot"])
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                firmware.code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                firmware.vars.display()
            ))
            .arg("-drive")
            .arg(format!("if=none,file={},format=raw,id=d", disk.display()))
            .args(["-device", "virtio-blk-pci,drive=d,bootindex=0"]);
        match api_port {
            Some(port) => {
                cmd.arg("-netdev")
                    .arg(format!("user,id=n,hostfwd=tcp:127.0.0.1:{port}-:50000"))
                    .args(["-device", "virtio-net-pci,netdev=n,romfile="]);
            }
            None => {
                cmd.args(["-nic", "none"]);
            }
        }
        Self::spawn(cmd, log)
    }

    /// Boots `disk` as the qemu-arm64 board boots: Debian's U-Boot from `-bios`, the disk
    /// on virtio-mmio; with `api_port`, a virtio network on QEMU's user network (DHCP)
    /// with 127.0.0.1:`api_port` forwarded to the node's API port 50000. The console goes
    /// to `log` as well.
    pub fn boot_arm64(disk: &Path, log: &Path, api_port: Option<u16>) -> Qemu {
        Self::boot_arm64_forwarding(disk, log, api_port, &[])
    }

    /// [`Qemu::boot_arm64`] with more ports forwarded: each `(host, guest)` pair makes
    /// 127.0.0.1:`host` reach the node's TCP port `guest` (only with `api_port`).
    pub fn boot_arm64_forwarding(
        disk: &Path,
        log: &Path,
        api_port: Option<u16>,
        forwards: &[(u16, u16)],
    ) -> Qemu {
        let mut cmd = Command::new("qemu-system-aarch64");
        cmd.args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a72",
            "-m",
            "1024",
            "-smp",
            "1",
        ])
        .args([
            "-nographic",
            "-accel",
            "tcg",
            "-no-reboot",
            "-bios",
            UBOOT_QEMU_ARM64,
        ])
        .arg("-drive")
        .arg(format!("if=none,file={},format=raw,id=d", disk.display()))
        .args(["-device", "virtio-blk-device,drive=d"]);
        match api_port {
            Some(port) => {
                cmd.arg("-netdev")
                    .arg(format!(
                        "user,id=n,hostfwd=tcp:127.0.0.1:{port}-:50000{}",
                        forwards
                            .iter()
                            .map(|(h, g)| format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"))
                            .collect::<String>()
                    ))
                    .args(["-device", "virtio-net-device,netdev=n"]);
            }
            None => {
                cmd.args(["-nic", "none"]);
            }
        }
        Self::spawn(cmd, log)
    }

    /// Boots the SD card image `sd` on a Raspberry Pi board's QEMU machine (`rpi3`:
    /// `raspi3b`): QEMU has no Pi GPU firmware, so the board's `[qemu] kernel_from_boot`
    /// (U-Boot) and `dtb_from_boot` are copied out of the card's BOOT partition (number 1)
    /// into `dir` and given as `-kernel` and `-dtb`, as the firmware would load them. The
    /// card must be a power of two in size ([`slot_tools::sd_card_copy`]). The serial port
    /// `[qemu] console_serial` is the console captured (and saved to `log`); the ports
    /// before it go to `log` + `.serialN` (raspi3b: port 0 is the PL011, which gets only
    /// U-Boot's first banner lines; port 1 the mini-UART, U-Boot's and the kernel's console).
    /// No network: QEMU's raspi3b has no NIC it can forward to.
    pub fn boot_raspi(board: &Board, sd: &Path, dir: &Path, log: &Path) -> Qemu {
        let q = board
            .qemu
            .as_ref()
            .unwrap_or_else(|| panic!("board {} has no [qemu] section", board.name));
        let len = std::fs::metadata(sd)
            .unwrap_or_else(|e| panic!("{}: {e}", sd.display()))
            .len();
        assert!(
            len.is_power_of_two(),
            "{}: QEMU's SD card needs a power-of-two size, not {len} bytes",
            sd.display()
        );
        let boot = slot_tools::open_fat(sd, slot_tools::PartitionRef::Number(1));
        let from_boot = |name: &Option<String>, what: &str| {
            let name = name
                .as_deref()
                .unwrap_or_else(|| panic!("board {} has no [qemu] {what}", board.name));
            let mut data = Vec::new();
            boot.root_dir()
                .open_file(name)
                .and_then(|mut f| f.read_to_end(&mut data))
                .unwrap_or_else(|e| panic!("{name} on BOOT of {}: {e}", sd.display()));
            let out = dir.join(name);
            std::fs::write(&out, data).unwrap();
            out
        };
        let kernel = from_boot(&q.kernel_from_boot, "kernel_from_boot");
        let dtb = from_boot(&q.dtb_from_boot, "dtb_from_boot");
        drop(boot);
        let mut cmd = Command::new(&q.binary);
        cmd.args(["-M", &q.machine, "-m", &q.memory_mib.to_string()])
            .args(["-display", "none", "-monitor", "none"])
            .args(["-accel", "tcg", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-dtb")
            .arg(&dtb)
            .arg("-drive")
            .arg(format!("if=sd,format=raw,file={}", sd.display()));
        for port in 0..q.console_serial {
            cmd.arg("-serial")
                .arg(format!("file:{}.serial{port}", log.display()));
        }
        cmd.args(["-serial", "stdio"]);
        Self::spawn(cmd, log)
    }

    fn spawn(mut cmd: Command, log: &Path) -> Qemu {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("QEMU starts");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let console = Arc::new(Mutex::new(String::new()));
        let shared = console.clone();
        let mut log = File::create(log).expect("console log file");
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let _ = log.write_all(&buf[..n]);
                        shared
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        });
        Qemu {
            child,
            console,
            reader: Some(reader),
        }
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("waiting for QEMU").is_none()
    }

    /// Waits until `done(console)` holds or QEMU exits; `None` on timeout.
    pub fn wait(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> Option<Ending> {
        let start = Instant::now();
        loop {
            if done(&self.console()) {
                return Some(Ending::Condition(start.elapsed()));
            }
            if let Some(status) = self.child.try_wait().expect("waiting for QEMU") {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return Some(Ending::Exited(status, start.elapsed()));
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for `needle` on the console; panics with the console on timeout or exit.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Duration {
        match self.wait(timeout, |c| c.contains(needle)) {
            Some(Ending::Condition(took)) => took,
            other => panic!(
                "{needle:?} not on the console ({other:?} after {timeout:?}):\n{}",
                self.console()
            ),
        }
    }

    /// Waits for QEMU to exit (e.g. after a power-off); panics on timeout.
    pub fn expect_exit(&mut self, timeout: Duration) {
        match self.wait(timeout, |_| false) {
            Some(Ending::Exited(..)) => {}
            other => panic!(
                "QEMU did not exit within {timeout:?} ({other:?}):\n{}",
                self.console()
            ),
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Byte offset of `needle` in `haystack` at or after `from`.
pub fn find_from(haystack: &str, needle: &str, from: usize) -> Option<usize> {
    haystack[from..].find(needle).map(|i| from + i)
}

/// The `basaltctl` binary of this workspace's debug build (built by `cargo test
/// --workspace`, which builds every package's binaries for its integration tests).
pub fn basaltctl() -> PathBuf {
    workspace_binary("basaltctl")
}

/// A binary `name` of this workspace's debug build (`basaltctl`, `basalt-flash`, …).
pub fn workspace_binary(name: &str) -> PathBuf {
    let bin = repo().join("target/debug").join(name);
    let bin = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("debug").join(name))
        .filter(|p| p.exists())
        .unwrap_or(bin);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build --workspace` first)",
        bin.display()
    );
    bin
}

/// Runs basaltctl with `args` (and the client configuration `config`, if any), one
/// connection attempt with a 10 s timeout.
pub fn ctl(config: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(basaltctl());
    cmd.args(["--retries", "1", "--connect-timeout", "10"])
        .args(args)
        .env_remove("BASALT_TOKEN");
    match config {
        Some(c) => cmd.env("BASALTCONFIG", c),
        None => cmd.env_remove("BASALTCONFIG"),
    };
    cmd.output().expect("basaltctl runs")
}

/// Exit status, stdout and stderr of `o`, for messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The stdout of `o`, which must have succeeded.
pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", output_text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The maintenance-mode certificate fingerprint machined printed on `console`.
pub fn maintenance_fingerprint(console: &str) -> String {
    console
        .split("fingerprint: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no fingerprint on the console:\n{console}"))
        .to_string()
}

/// `basaltctl -n ENDPOINT apply-config --insecure --fingerprint FP -f MACHINE_YAML`: a
/// configuration applied to a node in maintenance mode, its certificate pinned.
pub fn apply_config_insecure(endpoint: &str, fingerprint: &str, machine_yaml: &str) -> Output {
    ctl(
        None,
        &[
            "-n",
            endpoint,
            "apply-config",
            "--insecure",
            "--fingerprint",
            fingerprint,
            "-f",
            machine_yaml,
        ],
    )
}

/// Files of a node's generated configuration.
pub struct NodeConfig {
    /// The machine configuration to apply.
    pub machine_yaml: PathBuf,
    /// basaltctl's client configuration (operator certificate, endpoint).
    pub client_yaml: PathBuf,
}

/// `basaltctl gen secrets` (server certificate for 127.0.0.1) and `gen config` for
/// `machine_id` at `endpoint`, into `dir/secrets` and `dir/cfg` (replacing earlier ones).
pub fn gen_node_config(dir: &Path, machine_id: &str, endpoint: &str) -> NodeConfig {
    let secrets = dir.join("secrets");
    let cfg = dir.join("cfg");
    let _ = std::fs::remove_dir_all(&secrets);
    let _ = std::fs::remove_dir_all(&cfg);
    let path = |p: &Path| p.to_str().expect("UTF-8 path").to_string();
    ok(ctl(
        None,
        &[
            "gen",
            "secrets",
            "--out",
            &path(&secrets),
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
            &path(&secrets),
            "--machine-id",
            machine_id,
            "--endpoint",
            endpoint,
            "--out",
            &path(&cfg),
        ],
    ));
    NodeConfig {
        machine_yaml: cfg.join("machine.yaml"),
        client_yaml: cfg.join("basaltctl.yaml"),
    }
}
