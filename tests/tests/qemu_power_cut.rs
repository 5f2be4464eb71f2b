//! Power cuts during an A/B upgrade never brick a node (issue 6, test d), on qemu-arm64
//! (U-Boot) and on qemu-x86_64 (OVMF + systemd-boot).
//!
//! A configured node runs 1.0.0 from slot A; the signed 2.0.0 and 1.0.0 bundles are pushed
//! to it alternately with the real `basaltctl upgrade` (`--allow-downgrade`), and QEMU is
//! killed with SIGKILL (a power cut: what the guest had not handed to the virtual disk is
//! lost) at a random moment of one of three windows:
//!
//! - **write**: while the slot is being streamed and written (after the header was verified
//!   and the target left the boot order);
//! - **activation**: right around the bootloader env update that activates the new slot
//!   (a random 0–400 ms after the read-back matched; the activation's one env write falls
//!   in or next to that window);
//! - **first boot**: at a random moment of the new slot's first boot (U-Boot's counter
//!   write, kernel, early boot, health check and commit);
//! - **after commit**: within a second of the new slot's commit (the rename of its loader
//!   entry or the env write on the FAT partition must already be on the disk: the kernel
//!   would otherwise write the renamed entry's cluster and size only with the inode's
//!   writeback, half a minute later).
//!
//! After every cut the node is powered on again (relaunched until a boot reaches the API,
//! at most 6 starts) and must: answer with mutual TLS (its configuration on STATE intact),
//! name the configured machine, serve its audit log, commit the booted slot, and report a
//! consistent BootStatus (`booted X next X`, committed, no trial). Which slot boots is
//! checked too: the old one after a write cut, the new one after a first-boot cut, and
//! the new one after an activation cut whose env write had completed.
//!
//! `power_cut_in_each_window` makes one cut of the first three kinds on qemu-arm64, and
//! `x86_64_power_cut_in_the_write_and_right_after_the_commit` two on qemu-x86_64 (a write
//! cut and an after-commit cut, where machined's rename of systemd-boot's entry is the
//! commit; the other windows are left to the arm64 test to keep the ~50 s x86 TCG boots
//! few):
//! the CI share. The two tests take turns (one QEMU at a time per file). The randomized
//! soak `power_cut_soak` (ignored by default) makes `BASALT_SOAK_CUTS` (default 20) cuts of
//! random kinds on qemu-arm64: run it with `scripts/soak-power-cut [N]`. The seed is printed
//! first; `BASALT_CUT_SEED=<seed>` replays a run's choices (the timing of a TCG guest still
//! varies).

use basalt_boards::Board;
use basalt_tests::image_cache::run_signing_key;
use basalt_tests::rig::{Node, arg};
use basalt_tests::{Fixture, Qemu, basaltctl, build_image, node_machined_for, ok, repo};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Held by each test: one QEMU at a time in this file (2 CI cores, two lanes).
static ONE_NODE: Mutex<()> = Mutex::new(());

fn one_node() -> MutexGuard<'static, ()> {
    ONE_NODE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Until the upgrade's header is verified, and from there to the end of a phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
/// Power-on after a cut to the API (with any resets on the way).
const RECOVERY_BUDGET: Duration = Duration::from_secs(600);
const MACHINE: &str = "power-cut-node";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    Write,
    Activation,
    FirstBoot,
    AfterCommit,
}

/// xorshift64*: small, seeded, replayable.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, max: Duration) -> Duration {
        Duration::from_millis(self.below(max.as_millis().max(1) as u64))
    }
}

fn seed() -> u64 {
    match std::env::var("BASALT_CUT_SEED") {
        Ok(s) => s.parse().expect("BASALT_CUT_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// The node with its releases and what the tests learn of its timing.
struct Rig {
    node: Node,
    qemu: Option<Qemu>,
    bundles: [(String, PathBuf); 2],
    /// Seconds of the last uncut slot write (from "verified" to "written and synced").
    write_secs: f64,
    /// Seconds of the last uncut first boot (QEMU start to the commit).
    first_boot_secs: f64,
    cuts: u32,
}

fn setup(name: &str, board: &str) -> Rig {
    let board = Board::load(board).unwrap();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let (key_file, key) = run_signing_key(&repo());
    let machined = node_machined_for(board.arch.as_str());
    let build = |dir: &str, version: &str| -> Fixture {
        build_image(
            &root.join(dir),
            board.clone(),
            version,
            &machined,
            Some(key_file.clone()),
        )
    };
    let v1 = build("v1", "1.0.0");
    let v2 = build("v2", "2.0.0");
    let bundle = |fx: &Fixture| fx.output.disk_image.with_file_name("slot.bundle");
    let mut node = Node::new(&board, &v1.output.disk_image, &root.join("node"));
    let qemu = node.configure(MACHINE, &key.verifying_key());
    let slot_mib = v1.output.plan.by_label("SYSTEM-A").unwrap().request.size as f64 / 1048576.0;
    Rig {
        node,
        qemu: Some(qemu),
        bundles: [("1.0.0".into(), bundle(&v1)), ("2.0.0".into(), bundle(&v2))],
        // until a first-boot cut measures it: a low guess, so that the first write cut
        // lands in the write (17 MiB/s was the write rate seen under TCG on a loaded machine)
        write_secs: slot_mib / 17.0 / 2.0,
        first_boot_secs: 45.0,
        cuts: 0,
    }
}

/// What the node reports after a boot: booted slot and version.
struct Booted {
    slot: char,
    version: String,
}

impl Rig {
    fn qemu(&mut self) -> &mut Qemu {
        self.qemu.as_mut().expect("a running QEMU")
    }

    /// Checks a freshly booted node: mTLS, configuration, audit log, commit, BootStatus.
    fn check_healthy(&mut self, context: &str) -> Booted {
        self.qemu()
            .expect("health checks passed: slot", Duration::from_secs(90));
        let version = ok(self.node.ctl(&["version"]));
        assert!(
            version.contains(&format!("machine {MACHINE}")),
            "{context}: configuration lost? {version}"
        );
        let v = version
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("{context}: version output {version}"))
            .to_string();
        let audit = ok(self.node.ctl(&["audit", "--limit", "5"]));
        assert!(!audit.trim().is_empty(), "{context}: empty audit log");
        let status = self.node.boot_status();
        let slot = status.chars().nth("booted ".len()).unwrap_or('?');
        assert!(
            status.starts_with(&format!("booted {slot} next {slot} order [{slot}"))
                && status.contains("committed true trial -"),
            "{context}: inconsistent boot status: {status}"
        );
        Booted { slot, version: v }
    }

    /// Waits for `needle` on the console after byte `at`; panics on timeout or exit.
    fn wait_for(&mut self, n: u32, at: usize, needle: &str) {
        let w = self.qemu().wait(PHASE_TIMEOUT, |c| {
            c.get(at..).is_some_and(|c| c.contains(needle))
        });
        assert!(
            matches!(w, Some(basalt_tests::Ending::Condition(_))),
            "cut {n}: {needle:?} not on the console ({w:?}):\n{}",
            self.qemu().console()
        );
    }

    /// Starts pushing the bundle of the version not booted now; returns the client.
    fn start_upgrade(&mut self, booted: &Booted, tag: &str) -> (Child, String) {
        let (version, path) = self
            .bundles
            .iter()
            .find(|(v, _)| *v != booted.version)
            .cloned()
            .expect("a bundle of another version");
        let log = self.node.dir.join(format!("upgrade-{tag}.log"));
        let child = Command::new(basaltctl())
            .args(["--retries", "1", "--connect-timeout", "10"])
            .args(["upgrade", "--bundle", &arg(&path), "--allow-downgrade"])
            .args(["--attempts", "1"])
            .env("BASALTCONFIG", self.node.client.as_ref().unwrap())
            .env_remove("BASALT_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::create(log.with_extension("err")).unwrap(),
            ))
            .spawn()
            .expect("basaltctl starts");
        (child, version)
    }

    /// One cut of `kind` at a moment drawn from `rng`; then power on and check.
    fn cut(&mut self, kind: Cut, rng: &mut Rng) {
        self.cuts += 1;
        let n = self.cuts;
        let tag = format!("cut{n}-{kind:?}").to_lowercase();
        let before = self.check_healthy(&format!("before cut {n}"));
        let new_slot = if before.slot == 'A' { 'B' } else { 'A' };
        let at = self.qemu().console().len();
        let (mut client, new_version) = self.start_upgrade(&before, &tag);
        let since = |c: &str, needle: &str| c[at..].contains(needle);
        let started = Instant::now();
        let mut activated = false;
        let what = match kind {
            Cut::Write => {
                self.wait_for(n, at, "verified (signed by");
                let delay = rng.millis(Duration::from_secs_f64(self.write_secs));
                std::thread::sleep(delay);
                format!("{:.1} s into the slot write", delay.as_secs_f64())
            }
            Cut::Activation => {
                self.wait_for(n, at, "read back: matches");
                let delay = rng.millis(Duration::from_millis(400));
                std::thread::sleep(delay);
                activated = since(&self.qemu().console(), "activated on trial");
                format!(
                    "{} ms after the read-back matched (activation logged: {activated})",
                    delay.as_millis()
                )
            }
            Cut::FirstBoot | Cut::AfterCommit => {
                self.wait_for(n, at, "verified (signed by");
                let t = Instant::now();
                self.wait_for(n, at, "written and synced");
                self.write_secs = t.elapsed().as_secs_f64().max(5.0);
                self.qemu().expect_exit(PHASE_TIMEOUT);
                let _ = client.wait();
                let console = self.qemu().console();
                assert!(
                    console[at..].contains("activated on trial"),
                    "cut {n}: the upgrade did not activate:\n{console}"
                );
                self.qemu = Some(self.node.launch(&format!("{tag}-first")));
                activated = true;
                if kind == Cut::AfterCommit {
                    self.wait_for(n, 0, &format!("slot {new_slot} committed"));
                    let delay = rng.millis(Duration::from_secs(1));
                    std::thread::sleep(delay);
                    format!(
                        "{} ms after the first boot of {new_slot} committed it",
                        delay.as_millis()
                    )
                } else {
                    let delay = rng.millis(Duration::from_secs_f64(self.first_boot_secs));
                    std::thread::sleep(delay);
                    format!(
                        "{:.1} s into the first boot of {new_slot}",
                        delay.as_secs_f64()
                    )
                }
            }
        };
        // the cut
        self.qemu = None;
        let _ = client.kill();
        let _ = client.wait();
        eprintln!(
            "cut {n} ({kind:?}): SIGKILL {what}; {:.0} s after the upgrade started",
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let (qemu, resets) =
            self.node
                .boot_through_resets(&format!("{tag}-after"), 6, RECOVERY_BUDGET);
        self.qemu = Some(qemu);
        let after = self.check_healthy(&format!("after cut {n} ({kind:?}, {what})"));
        let secs = t.elapsed().as_secs_f64();
        if kind == Cut::FirstBoot && resets.is_empty() {
            self.first_boot_secs = secs.clamp(20.0, 120.0);
        }
        eprintln!(
            "cut {n}: node back on slot {} ({}) after {} reset(s), {secs:.0} s",
            after.slot,
            after.version,
            resets.len()
        );
        match kind {
            Cut::Write => assert_eq!(
                (after.slot, &after.version),
                (before.slot, &before.version),
                "cut {n}: a cut during the write must leave the old slot booting"
            ),
            _ if activated => assert_eq!(
                (after.slot, &after.version),
                (new_slot, &new_version),
                "cut {n}: the activation was complete: the new slot must boot"
            ),
            _ => assert!(
                (after.slot, &after.version) == (before.slot, &before.version)
                    || (after.slot, &after.version) == (new_slot, &new_version),
                "cut {n}: booted {} {} is neither the old nor the new slot",
                after.slot,
                after.version
            ),
        }
    }
}

#[test]
fn power_cut_in_each_window() {
    let _one = one_node();
    let seed = seed();
    eprintln!("power_cut_in_each_window: seed {seed} (BASALT_CUT_SEED={seed} to replay)");
    let mut rng = Rng::new(seed);
    let mut rig = setup("qemu-power-cut", "qemu-arm64");
    for kind in [Cut::Write, Cut::Activation, Cut::FirstBoot] {
        rig.cut(kind, &mut rng);
    }
}

#[test]
fn x86_64_power_cut_in_the_write_and_right_after_the_commit() {
    let _one = one_node();
    let seed = seed();
    eprintln!("x86_64 power cuts: seed {seed} (BASALT_CUT_SEED={seed} to replay)");
    let mut rng = Rng::new(seed);
    let mut rig = setup("qemu-power-cut-x86-64", "qemu-x86_64");
    for kind in [Cut::Write, Cut::AfterCommit] {
        rig.cut(kind, &mut rng);
    }
}

#[test]
#[ignore = "the randomized soak: scripts/soak-power-cut [N]"]
fn power_cut_soak() {
    let n: u32 = std::env::var("BASALT_SOAK_CUTS")
        .ok()
        .map(|s| s.parse().expect("BASALT_SOAK_CUTS is a number"))
        .unwrap_or(20);
    let seed = seed();
    eprintln!("power_cut_soak: {n} cuts, seed {seed} (BASALT_CUT_SEED={seed} to replay)");
    let mut rng = Rng::new(seed);
    let start = Instant::now();
    let _one = one_node();
    let mut rig = setup("qemu-power-cut-soak", "qemu-arm64");
    for i in 0..n {
        let kind = [
            Cut::Write,
            Cut::Activation,
            Cut::FirstBoot,
            Cut::AfterCommit,
        ][rng.below(4) as usize];
        rig.cut(kind, &mut rng);
        eprintln!(
            "soak: {}/{n} cuts passed, {:.0} s",
            i + 1,
            start.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "soak: PASS {n} cuts, seed {seed}, {:.0} s",
        start.elapsed().as_secs_f64()
    );
}
