//! Every systemd-boot transition, on a mounted-directory ESP and on FAT16/FAT32 volumes
//! inside image files (the FAT32 one at an offset, as a partition of a disk image).
//!
//! `simulate_boot` plays systemd-boot: it boots the entry `inspect` selects and renames it
//! the way systemd-boot 252 does (`+3` → `+2-1`, ...).

use std::fs::File;
use std::path::Path;

use basalt_bootloader::systemd_boot::{
    DirEsp, EntryFileName, EntrySet, EspFs, FatEsp, FatType, InactiveSlot, LoaderConfig, SlotEntry,
    SystemdBoot, format_fat, install_entry_set,
};
use basalt_bootloader::{Bootloader, BootloaderError, Slot};

const MIB: u64 = 1024 * 1024;

/// Runs `check` against a fresh ESP of every kind.
fn on_every_esp(check: impl Fn(&mut dyn FnMut() -> Box<dyn EspFs>, &str)) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("esp");
    std::fs::create_dir(&root).unwrap();
    let mut make_dir = || Box::new(DirEsp::new(&root)) as Box<dyn EspFs>;
    check(&mut make_dir, "directory");

    let fat16 = dir.path().join("fat16.img");
    File::create(&fat16).unwrap().set_len(16 * MIB).unwrap();
    format_fat(&fat16, 0, 16 * MIB, Some(FatType::Fat16), "ESP").unwrap();
    let mut make_fat16 = || Box::new(FatEsp::open_whole(&fat16).unwrap()) as Box<dyn EspFs>;
    check(&mut make_fat16, "FAT16 image");

    let disk = dir.path().join("disk.img");
    File::create(&disk).unwrap().set_len(50 * MIB).unwrap();
    format_fat(&disk, MIB, 40 * MIB, Some(FatType::Fat32), "ESP").unwrap();
    let mut make_fat32 = || Box::new(FatEsp::open(&disk, MIB, 40 * MIB).unwrap()) as Box<dyn EspFs>;
    check(&mut make_fat32, "FAT32 partition");
}

fn backend(
    make: &mut dyn FnMut() -> Box<dyn EspFs>,
    booted: Option<Slot>,
) -> SystemdBoot<Box<dyn EspFs>> {
    SystemdBoot::new(make(), booted)
}

/// Fresh image: kernels for both slots, A active, B `Fallback` or `Empty`.
fn install(make: &mut dyn FnMut() -> Box<dyn EspFs>, inactive: InactiveSlot) {
    let mut esp = make();
    for slot in ["a", "b"] {
        esp.write_file_atomic(&format!("basalt/{slot}/vmlinuz"), b"kernel")
            .unwrap();
        esp.write_file_atomic(&format!("basalt/{slot}/initrd.img"), b"initrd")
            .unwrap();
    }
    let set = EntrySet {
        active: Slot::A,
        a: SlotEntry::standard(Slot::A, "Basalt OS 1.0", "aa", "console=ttyS0"),
        b: SlotEntry::standard(Slot::B, "Basalt OS 1.0", "bb", "console=ttyS0"),
        inactive,
        loader: LoaderConfig::default(),
    };
    install_entry_set(&mut esp, &set).unwrap();
}

fn entry_names(make: &mut dyn FnMut() -> Box<dyn EspFs>) -> Vec<String> {
    let mut names: Vec<String> = make()
        .list_dir("loader/entries")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

/// Plays systemd-boot: picks the entry it would boot and bumps its counter. Returns the slot.
fn simulate_boot(make: &mut dyn FnMut() -> Box<dyn EspFs>) -> Option<Slot> {
    let state = SystemdBoot::new(make(), None).inspect().unwrap();
    let entry = state.next_entry()?.clone();
    if let Some(counter) = entry.counter {
        let name = EntryFileName::parse(&entry.file_name).unwrap();
        let next = EntryFileName {
            stem: name.stem,
            counter: Some(counter.after_attempt()),
        };
        make()
            .rename(
                &format!("loader/entries/{}", entry.file_name),
                &format!("loader/entries/{}", next.to_file_name()),
            )
            .unwrap();
    }
    entry.slot
}

fn refused(result: Result<impl std::fmt::Debug, BootloaderError>) -> String {
    match result {
        Err(BootloaderError::Refused(message)) => message,
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[test]
fn fresh_install_boots_the_active_slot() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Empty);
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0.conf"],
            "{kind}"
        );
        let conf = String::from_utf8(make().read_file("loader/loader.conf").unwrap()).unwrap();
        assert!(
            conf.contains("default basalt-*\ntimeout 0\neditor no\n"),
            "{kind}: {conf}"
        );

        let status = backend(make, None).status().unwrap();
        assert_eq!(status.next_boot(), Some(Slot::A), "{kind}");
        assert_eq!(status.order, [Slot::A, Slot::B], "{kind}");
        assert!(status.slots[0].bootable && status.slots[0].tries_left.is_none());
        assert!(!status.slots[1].bootable && status.slots[1].tries_left == Some(0));
        assert!(!status.committed, "{kind}: booted unknown");

        let status = backend(make, Some(Slot::A)).status().unwrap();
        assert!(status.committed, "{kind}");
        assert_eq!((status.trial, status.last_failed), (None, None), "{kind}");
    });
}

#[test]
fn upgrade_trial_and_commit() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        let mut boot = backend(make, Some(Slot::A));
        boot.prepare_update(Slot::B).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0.conf"],
            "{kind}"
        );
        assert_eq!(boot.status().unwrap().next_boot(), Some(Slot::A));

        // The upgrade writes the new kernel and entry content, then activates.
        make()
            .write_file_atomic("basalt/b/vmlinuz", b"kernel 2")
            .unwrap();
        let entry = SlotEntry::standard(Slot::B, "Basalt OS 2.0", "b2", "console=ttyS0");
        boot.write_entry(Slot::B, &entry).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0.conf"],
            "{kind}"
        );
        boot.activate(Slot::B, 3).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+3.conf"],
            "{kind}"
        );
        let text =
            String::from_utf8(make().read_file("loader/entries/basalt-b+3.conf").unwrap()).unwrap();
        assert!(
            text.contains("title Basalt OS 2.0 (slot B)\nsort-key basalt\nversion 3\n"),
            "{kind}: {text}"
        );
        let status = boot.status().unwrap();
        assert_eq!(status.order, [Slot::B, Slot::A], "{kind}");
        assert_eq!(status.slots[1].tries_left, Some(3));
        assert_eq!(status.trial, Some(Slot::B));

        assert_eq!(simulate_boot(make), Some(Slot::B), "{kind}");
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+2-1.conf"],
            "{kind}"
        );
        let mut boot = backend(make, Some(Slot::B));
        let status = boot.status().unwrap();
        assert!(!status.committed, "{kind}: on trial");
        assert_eq!(
            (status.trial, status.next_boot()),
            (Some(Slot::B), Some(Slot::B))
        );

        boot.mark_good(Slot::B).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b.conf"],
            "{kind}"
        );
        let status = boot.status().unwrap();
        assert!(status.committed, "{kind}");
        assert_eq!(status.order, [Slot::B, Slot::A], "{kind}");
        assert_eq!(status.trial, None, "{kind}");
        assert_eq!(simulate_boot(make), Some(Slot::B), "{kind}");
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b.conf"],
            "{kind}"
        );
    });
}

#[test]
fn failed_trial_falls_back_after_its_tries() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        backend(make, Some(Slot::A)).activate(Slot::B, 3).unwrap();
        for expected in [
            "basalt-b+2-1.conf",
            "basalt-b+1-2.conf",
            "basalt-b+0-3.conf",
        ] {
            assert_eq!(simulate_boot(make), Some(Slot::B), "{kind}");
            assert!(entry_names(make).contains(&expected.to_string()), "{kind}");
        }
        // B is now bad and sorted last: systemd-boot picks A, whose entry has no counter.
        assert_eq!(simulate_boot(make), Some(Slot::A), "{kind}");
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0-3.conf"],
            "{kind}"
        );
        let mut boot = backend(make, Some(Slot::A));
        let status = boot.status().unwrap();
        assert_eq!(status.next_boot(), Some(Slot::A), "{kind}");
        assert_eq!(status.order, [Slot::A, Slot::B], "{kind}");
        assert!(!status.slots[1].bootable, "{kind}");
        assert_eq!(status.last_failed, Some(Slot::B), "{kind}");
        assert!(status.committed, "{kind}");
        boot.mark_good(Slot::A).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0-3.conf"],
            "{kind}"
        );
        // A rollback to the failed slot is refused.
        assert!(refused(boot.rollback()).contains("slot B"), "{kind}");
    });
}

#[test]
fn last_try_boot_is_committed_by_mark_good() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        backend(make, Some(Slot::A)).activate(Slot::B, 1).unwrap();
        assert_eq!(simulate_boot(make), Some(Slot::B), "{kind}");
        // systemd-boot renamed the entry to +0-1 before starting the kernel.
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0-1.conf"],
            "{kind}"
        );
        let mut boot = backend(make, Some(Slot::B));
        let status = boot.status().unwrap();
        assert_eq!(status.slots[1].tries_left, Some(0), "{kind}");
        assert_eq!(
            status.next_boot(),
            Some(Slot::A),
            "{kind}: unless committed"
        );
        assert_eq!(
            (status.trial, status.last_failed),
            (Some(Slot::B), None),
            "{kind}"
        );
        boot.mark_good(Slot::B).unwrap();
        let status = boot.status().unwrap();
        assert_eq!(status.next_boot(), Some(Slot::B), "{kind}");
        assert!(status.committed, "{kind}");
    });
}

#[test]
fn mark_bad_during_trial_and_rollback() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        backend(make, Some(Slot::A)).activate(Slot::B, 3).unwrap();
        simulate_boot(make);
        let mut boot = backend(make, Some(Slot::B));
        boot.mark_bad(Slot::B).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0-1.conf"],
            "{kind}"
        );
        assert_eq!(boot.status().unwrap().next_boot(), Some(Slot::A), "{kind}");

        // Committed B, then a manual rollback to A.
        backend(make, Some(Slot::A)).activate(Slot::B, 3).unwrap();
        simulate_boot(make);
        let mut boot = backend(make, Some(Slot::B));
        boot.mark_good(Slot::B).unwrap();
        assert_eq!(boot.rollback().unwrap(), Slot::A, "{kind}");
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0.conf"],
            "{kind}"
        );
        let status = boot.status().unwrap();
        assert_eq!(status.next_boot(), Some(Slot::A), "{kind}");
        assert_eq!(
            status.last_failed, None,
            "{kind}: B was rolled back, not failed"
        );
        assert_eq!(simulate_boot(make), Some(Slot::A), "{kind}");
    });
}

#[test]
fn refusals() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Empty);
        let mut boot = backend(make, Some(Slot::A));
        assert!(
            refused(boot.prepare_update(Slot::A)).contains("running"),
            "{kind}"
        );
        assert!(
            refused(boot.activate(Slot::B, 0)).contains("at least one"),
            "{kind}"
        );
        assert!(
            refused(boot.mark_good(Slot::B)).contains("booted from slot A"),
            "{kind}"
        );
        assert!(
            refused(boot.rollback()).contains("slot B"),
            "{kind}: B is empty"
        );

        make().delete("basalt/b/vmlinuz").unwrap();
        let message = refused(boot.activate(Slot::B, 3));
        assert!(message.contains("/basalt/b/vmlinuz"), "{kind}: {message}");

        make().delete("loader/entries/basalt-b+0.conf").unwrap();
        let message = refused(boot.activate(Slot::B, 3));
        assert!(message.contains("no loader entry"), "{kind}: {message}");
        // Nothing to disable is fine.
        boot.prepare_update(Slot::B).unwrap();
        boot.mark_bad(Slot::B).unwrap();
        assert_eq!(entry_names(make), ["basalt-a.conf"], "{kind}");
    });
}

#[test]
fn duplicates_from_an_interrupted_operation_are_resolved() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        // As if a crash left an old blessed B entry next to the activated one.
        let text = make().read_file("loader/entries/basalt-b.conf").unwrap();
        let newer = String::from_utf8(text)
            .unwrap()
            .replace("version 1", "version 5");
        make()
            .write_file_atomic("loader/entries/basalt-b+3.conf", newer.as_bytes())
            .unwrap();
        let mut boot = backend(make, Some(Slot::A));
        let state = boot.inspect().unwrap();
        assert_eq!(
            state.next_entry().unwrap().file_name,
            "basalt-b+3.conf",
            "{kind}"
        );
        assert_eq!(
            boot.status().unwrap().slots[1].tries_left,
            Some(3),
            "{kind}"
        );
        boot.mark_bad(Slot::B).unwrap();
        assert_eq!(
            entry_names(make),
            ["basalt-a.conf", "basalt-b+0.conf"],
            "{kind}"
        );
    });
}

#[test]
fn default_glob_and_foreign_entries() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        let mut esp = make();
        esp.write_file_atomic("vmlinuz-debian", b"k").unwrap();
        esp.write_file_atomic(
            "loader/entries/zz-debian.conf",
            b"title Debian\nlinux /vmlinuz-debian\n",
        )
        .unwrap();
        // Entries with a sort-key sort before those without: Basalt's come first.
        let boot = backend(make, None);
        let state = boot.inspect().unwrap();
        let files: Vec<_> = state.entries.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(
            files,
            ["basalt-a.conf", "basalt-b.conf", "zz-debian.conf"],
            "{kind}"
        );

        // Why Basalt never writes a glob naming one slot: a bad entry still matches it.
        make()
            .write_file_atomic("loader/loader.conf", b"default basalt-b*\n")
            .unwrap();
        make()
            .rename(
                "loader/entries/basalt-b.conf",
                "loader/entries/basalt-b+0-3.conf",
            )
            .unwrap();
        let state = boot.inspect().unwrap();
        assert_eq!(
            state.next_entry().unwrap().file_name,
            "basalt-b+0-3.conf",
            "{kind}"
        );
        // (BootStatus cannot express "boots a bad entry": its order starts with B, which
        // next_boot() skips as not bootable.)
        assert_eq!(boot.status().unwrap().order[0], Slot::B, "{kind}");
        make()
            .write_file_atomic("loader/loader.conf", b"default zz-*\n")
            .unwrap();
        assert_eq!(
            boot.inspect().unwrap().next_entry().unwrap().slot,
            None,
            "{kind}"
        );
        make().delete("loader/loader.conf").unwrap();
        assert_eq!(boot.status().unwrap().next_boot(), Some(Slot::A), "{kind}");
    });
}

#[test]
fn entry_without_kernel_is_skipped() {
    on_every_esp(|make, kind| {
        install(make, InactiveSlot::Fallback);
        make().delete("basalt/a/vmlinuz").unwrap();
        let status = backend(make, None).status().unwrap();
        assert!(!status.slots[0].bootable, "{kind}");
        assert_eq!(status.order, [Slot::B], "{kind}");
        assert_eq!(status.next_boot(), Some(Slot::B), "{kind}");
    });
}

#[test]
fn storage_errors_name_the_esp() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("not-fat.img");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();
    let err = FatEsp::open(&image, 0, 4096).unwrap_err().to_string();
    assert!(
        err.contains("mount") && err.contains("not-fat.img"),
        "{err}"
    );
    assert!(
        FatEsp::open(&image, 0, 8192).is_err(),
        "range beyond the file"
    );

    let missing = DirEsp::new(Path::new("/nonexistent/esp"));
    let err = SystemdBoot::new(missing, None)
        .activate(Slot::A, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no loader entry"), "{err}");
}
