//! Every transition of the Raspberry Pi tryboot backend (`basalt_bootloader::tryboot`),
//! which shares the ESP layer of the systemd-boot module: on a directory BOOT partition
//! and on a FAT image, with a fake device tree for the tryboot flag.
//!
//! `simulate_reboot` plays the Pi firmware: a tryboot reboot starts `[tryboot]` once and
//! sets the flag; any other reboot starts `[all]`.

use std::fs::File;
use std::path::{Path, PathBuf};

use basalt_bootloader::systemd_boot::{DirEsp, EspFs, FatEsp, format_fat};
use basalt_bootloader::tryboot::{
    AUTOBOOT_TXT, Autoboot, RebootMode, SlotPartitions, Tryboot, TrybootError, install_autoboot,
    read_tryboot_flag,
};
use basalt_bootloader::{Bootloader, BootloaderError, Slot};

const PARTS: SlotPartitions = SlotPartitions { a: 2, b: 3 };

struct Pi {
    _dir: tempfile::TempDir,
    device_tree: PathBuf,
    make: Box<dyn Fn() -> Box<dyn EspFs>>,
    kind: &'static str,
}

impl Pi {
    /// A backend as machined would create it at boot: booted slot from the device tree.
    fn boot(&self) -> Tryboot<Box<dyn EspFs>> {
        Tryboot::new((self.make)(), PARTS, None, Some(&self.device_tree)).unwrap()
    }

    fn autoboot(&self) -> Autoboot {
        let bytes = (self.make)().read_file(AUTOBOOT_TXT).unwrap();
        Autoboot::parse(&String::from_utf8(bytes).unwrap()).unwrap()
    }

    /// The firmware: reboots in `mode`, setting the device-tree flag; returns the slot started.
    fn simulate_reboot(&self, mode: RebootMode) -> Slot {
        let autoboot = self.autoboot();
        let flag = self.device_tree.join("chosen/bootloader/tryboot");
        std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
        let tryboot = mode == RebootMode::Tryboot;
        std::fs::write(&flag, u32::from(tryboot).to_be_bytes()).unwrap();
        let partition = if tryboot {
            autoboot.tryboot_partition
        } else {
            autoboot.boot_partition
        };
        PARTS.slot(partition).unwrap()
    }
}

fn every_pi(check: impl Fn(&Pi)) {
    for kind in ["directory", "FAT image"] {
        let dir = tempfile::tempdir().unwrap();
        let device_tree = dir.path().join("device-tree");
        std::fs::create_dir(&device_tree).unwrap();
        let make: Box<dyn Fn() -> Box<dyn EspFs>> = if kind == "directory" {
            let root = dir.path().join("boot");
            std::fs::create_dir(&root).unwrap();
            Box::new(move || Box::new(DirEsp::with_label(&root, "BOOT partition")))
        } else {
            let image = dir.path().join("boot.img");
            File::create(&image).unwrap().set_len(8 << 20).unwrap();
            format_fat(&image, 0, 8 << 20, None, "BOOT").unwrap();
            Box::new(move || Box::new(FatEsp::open_whole(&image).unwrap().with_label("BOOT")))
        };
        install_autoboot(&mut make(), PARTS, Slot::A, false).unwrap();
        let pi = Pi {
            _dir: dir,
            device_tree,
            make,
            kind,
        };
        assert_eq!(pi.simulate_reboot(RebootMode::Normal), Slot::A);
        check(&pi);
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, BootloaderError>) -> String {
    match result {
        Err(BootloaderError::Refused(message)) => message,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn fresh_install_boots_the_committed_slot_only() {
    every_pi(|pi| {
        let text = String::from_utf8((pi.make)().read_file(AUTOBOOT_TXT).unwrap()).unwrap();
        assert_eq!(
            text,
            "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=2\n"
        );
        let status = pi.boot().status().unwrap();
        assert_eq!(status.booted, Some(Slot::A), "{}", pi.kind);
        assert!(status.committed);
        assert_eq!(status.order, [Slot::A]);
        assert!(!status.slots[1].bootable);
        assert_eq!(status.next_boot(), Some(Slot::A));
    });
}

#[test]
fn update_trial_commit() {
    every_pi(|pi| {
        let kind = pi.kind;
        let mut pi_os = pi.boot();
        pi_os.prepare_update(Slot::B).unwrap();
        pi_os.activate(Slot::B, 3).unwrap();
        assert_eq!(pi_os.required_reboot(), RebootMode::Tryboot, "{kind}");
        assert_eq!(
            pi.autoboot(),
            Autoboot {
                boot_partition: 2,
                tryboot_partition: 3
            }
        );
        let status = pi_os.status().unwrap();
        assert_eq!(
            (status.order.clone(), status.trial),
            (vec![Slot::B, Slot::A], Some(Slot::B))
        );
        assert_eq!(
            status.slots[1].tries_left,
            Some(1),
            "{kind}: tryboot is one-shot"
        );

        assert_eq!(
            pi.simulate_reboot(pi_os.required_reboot()),
            Slot::B,
            "{kind}"
        );
        let mut trial = pi.boot();
        assert!(trial.tryboot_active());
        let status = trial.status().unwrap();
        assert_eq!(status.booted, Some(Slot::B), "{kind}");
        assert!(!status.committed, "{kind}");
        assert_eq!(
            status.slots[1].tries_left,
            Some(0),
            "{kind}: the one try is used"
        );
        assert_eq!(
            status.next_boot(),
            Some(Slot::A),
            "{kind}: not committed yet"
        );

        trial.mark_good(Slot::B).unwrap();
        assert_eq!(
            pi.autoboot(),
            Autoboot {
                boot_partition: 3,
                tryboot_partition: 2
            }
        );
        assert_eq!(trial.required_reboot(), RebootMode::Normal);
        assert_eq!(pi.simulate_reboot(RebootMode::Normal), Slot::B, "{kind}");
        let status = pi.boot().status().unwrap();
        assert!(status.committed, "{kind}");
        assert_eq!(
            status.order,
            [Slot::B, Slot::A],
            "{kind}: A stays the rollback target"
        );
        assert_eq!(status.trial, None);
    });
}

#[test]
fn failed_trial_returns_to_the_committed_slot() {
    every_pi(|pi| {
        let mut os = pi.boot();
        os.activate(Slot::B, 1).unwrap();
        assert_eq!(pi.simulate_reboot(os.required_reboot()), Slot::B);
        // The trial hangs; the watchdog resets with a normal reboot.
        assert_eq!(
            pi.simulate_reboot(RebootMode::Normal),
            Slot::A,
            "{}",
            pi.kind
        );
        let status = pi.boot().status().unwrap();
        assert!(status.committed && status.booted == Some(Slot::A));
        assert_eq!(status.last_failed, None, "tryboot cannot tell");
    });
}

#[test]
fn health_check_failure_marks_the_trial_bad() {
    every_pi(|pi| {
        let mut os = pi.boot();
        os.activate(Slot::B, 3).unwrap();
        pi.simulate_reboot(os.required_reboot());
        let mut trial = pi.boot();
        trial.mark_bad(Slot::B).unwrap();
        assert_eq!(
            pi.autoboot(),
            Autoboot {
                boot_partition: 2,
                tryboot_partition: 2
            }
        );
        assert_eq!(trial.status().unwrap().order, [Slot::A], "{}", pi.kind);
        assert_eq!(pi.simulate_reboot(trial.required_reboot()), Slot::A);
    });
}

#[test]
fn rollback_during_a_trial_and_from_a_committed_slot() {
    every_pi(|pi| {
        let kind = pi.kind;
        let mut os = pi.boot();
        os.activate(Slot::B, 3).unwrap();
        pi.simulate_reboot(os.required_reboot());
        let mut trial = pi.boot();
        assert_eq!(trial.rollback().unwrap(), Slot::A, "{kind}");
        assert_eq!(
            pi.simulate_reboot(trial.required_reboot()),
            Slot::A,
            "{kind}"
        );

        // Commit B, then roll back to A: A is tried once, then committed by mark_good.
        let mut os = pi.boot();
        os.activate(Slot::B, 3).unwrap();
        pi.simulate_reboot(os.required_reboot());
        pi.boot().mark_good(Slot::B).unwrap();
        pi.simulate_reboot(RebootMode::Normal);
        let mut committed_b = pi.boot();
        assert_eq!(committed_b.rollback().unwrap(), Slot::A, "{kind}");
        assert_eq!(committed_b.required_reboot(), RebootMode::Tryboot);
        assert_eq!(committed_b.status().unwrap().next_boot(), Some(Slot::A));
        assert_eq!(pi.simulate_reboot(RebootMode::Tryboot), Slot::A, "{kind}");
        pi.boot().mark_good(Slot::A).unwrap();
        assert_eq!(
            pi.autoboot(),
            Autoboot {
                boot_partition: 2,
                tryboot_partition: 3
            }
        );
    });
}

#[test]
fn refusals() {
    every_pi(|pi| {
        let mut os = pi.boot();
        assert!(refused(os.prepare_update(Slot::A)).contains("running"));
        assert!(refused(os.mark_bad(Slot::A)).contains("committed"));
        assert!(refused(os.activate(Slot::B, 0)).contains("at least one"));
        assert!(refused(os.mark_good(Slot::B)).contains("booted from slot A"));
        assert!(
            refused(os.rollback()).contains("does not enable"),
            "{}",
            pi.kind
        );
        // Offline (booted unknown): the committed slot still cannot be prepared.
        let mut offline = Tryboot::new((pi.make)(), PARTS, None, None).unwrap();
        assert!(refused(offline.prepare_update(Slot::A)).contains("committed"));
        assert!(refused(offline.mark_good(Slot::B)).contains("neither committed"));
        // Activating the committed slot needs no tryboot.
        offline.activate(Slot::A, 3).unwrap();
        assert_eq!(offline.required_reboot(), RebootMode::Normal);
        // prepare_update disables an enabled other slot and cancels a pending tryboot.
        offline.activate(Slot::B, 3).unwrap();
        offline.prepare_update(Slot::B).unwrap();
        assert_eq!(offline.required_reboot(), RebootMode::Normal);
        assert_eq!(pi.autoboot().tryboot_partition, 2);
    });
}

#[test]
fn broken_storage_and_device_tree() {
    let dir = tempfile::tempdir().unwrap();
    let esp_root = dir.path().join("boot");
    std::fs::create_dir(&esp_root).unwrap();
    let mut esp = DirEsp::with_label(&esp_root, "BOOT partition");
    esp.write_file_atomic(AUTOBOOT_TXT, b"[all]\ntryboot_a_b=1\nboot_partition=7\n")
        .unwrap();
    let backend = Tryboot::new(esp, PARTS, Some(Slot::A), None).unwrap();
    match backend.status() {
        Err(BootloaderError::Storage { backend, source }) => {
            assert!(
                backend.contains("autoboot.txt on BOOT partition"),
                "{backend}"
            );
            assert!(source.to_string().contains("boot_partition=7"), "{source}");
        }
        other => panic!("{other:?}"),
    }

    let dt = dir.path().join("dt");
    assert!(!read_tryboot_flag(&dt).unwrap(), "no flag: not a tryboot");
    std::fs::create_dir_all(dt.join("chosen/bootloader")).unwrap();
    std::fs::write(dt.join("chosen/bootloader/tryboot"), [0, 0, 0, 1]).unwrap();
    assert!(read_tryboot_flag(&dt).unwrap());
    std::fs::write(dt.join("chosen/bootloader/tryboot"), [1]).unwrap();
    assert!(matches!(
        read_tryboot_flag(Path::new(&dt)),
        Err(TrybootError::BadFlag { len: 1, .. })
    ));
}
