//! A slot's kernel and initramfs on the ESP: systemd-boot loads kernels only from the ESP
//! (or an XBOOTLDR partition), never from the slot partitions, so each slot has a folder
//! `basalt/<a|b>/` on the ESP with a copy of its kernel (`vmlinuz`) and initramfs
//! (`initrd.img`), and its loader entry points there.
//!
//! The slot itself (a FAT partition, the same as on U-Boot boards) stays the source of
//! truth: it carries the kernel, the initramfs, `basalt/slot.env` (`basalt_roothash=`),
//! `basalt/cmdline` (console and kernel arguments of the release) and `basalt/version`.
//! [`install_slot_boot`] reads those from a freshly written slot and installs them for
//! systemd-boot:
//!
//! 1. refuse the booted slot and a slot whose entry is not marked bad: the files of a
//!    bootable entry are never replaced (`prepare_update` marks the target bad first);
//! 2. kernel, then initramfs: each an atomic replace on the ESP ([`EspFs::write_file_atomic`]:
//!    temp file, fsync, rename, fsync of the directory on a mounted ESP);
//! 3. the entry content ([`SystemdBoot::write_entry`]: keeps the bad counter in the file
//!    name and removes leftover entries of that slot).
//!
//! A power cut at any point leaves the slot's entry bad (systemd-boot sorts it last), so the
//! running slot keeps booting; the next upgrade rewrites everything. `activate` then renames
//! the entry to `+N` and gives it the highest priority.

use super::esp::EspFs;
use super::install::SlotEntry;
use super::{SystemdBoot, SystemdBootError};
use crate::slot::Slot;

/// The slot's env file with the verity root hash (`basalt_roothash=<hex>`).
pub const SLOT_ENV: &str = "basalt/slot.env";
/// The slot's kernel arguments besides `basalt.slot=` and `basalt.roothash=` (one line).
pub const SLOT_CMDLINE: &str = "basalt/cmdline";
/// The slot's release version (one line).
pub const SLOT_VERSION: &str = "basalt/version";
/// The initramfs inside a slot.
pub const SLOT_INITRD: &str = "initrd.img";

/// Where a slot's kernel lives inside the slot partition (the board's `kernel.slot_file`)
/// and how its entry is titled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBootFiles {
    /// The kernel's path in the slot, e.g. `vmlinuz` or `Image`.
    pub kernel: String,
    /// The initramfs's path in the slot.
    pub initrd: String,
    /// The OS name in entry titles, e.g. "Basalt OS".
    pub os_name: String,
}

impl SlotBootFiles {
    /// The usual layout: `kernel` and [`SLOT_INITRD`], titled "Basalt OS".
    pub fn new(kernel: &str) -> Self {
        SlotBootFiles {
            kernel: kernel.to_string(),
            initrd: SLOT_INITRD.to_string(),
            os_name: "Basalt OS".to_string(),
        }
    }
}

/// `basalt_roothash` from a slot env file's `key=value` lines.
pub fn slot_env_root_hash(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("basalt_roothash="))
        .map(|v| v.trim().to_string())
        .next_back()
        .filter(|v| !v.is_empty())
}

/// The loader entry of `slot` for a slot whose files are on `source`.
pub fn slot_entry_from<S: EspFs + ?Sized>(
    slot: Slot,
    source: &S,
    files: &SlotBootFiles,
) -> Result<SlotEntry, SystemdBootError> {
    let text = |path: &str| -> Result<String, SystemdBootError> {
        Ok(String::from_utf8_lossy(&source.read_file(path)?)
            .trim()
            .to_string())
    };
    let env = text(SLOT_ENV)?;
    let roothash = slot_env_root_hash(&env).ok_or_else(|| {
        SystemdBootError::InvalidEntry(format!(
            "{SLOT_ENV} on {} has no basalt_roothash",
            source.describe()
        ))
    })?;
    let cmdline = match text(SLOT_CMDLINE) {
        Ok(c) => c,
        Err(SystemdBootError::Esp(e)) if e.is_not_found() => String::new(),
        Err(e) => return Err(e),
    };
    let version = match text(SLOT_VERSION) {
        Ok(v) if !v.is_empty() => format!(" {v}"),
        Ok(_) => String::new(),
        Err(SystemdBootError::Esp(e)) if e.is_not_found() => String::new(),
        Err(e) => return Err(e),
    };
    let os_name = format!("{}{version}", files.os_name);
    Ok(SlotEntry::standard(slot, &os_name, &roothash, &cmdline))
}

/// Copies `slot`'s kernel and initramfs from `source` (the slot's FAT) to the paths its
/// entry names on the ESP and writes the entry (still marked bad); see the module docs.
/// Returns the entry written.
pub fn install_slot_boot<E: EspFs, S: EspFs + ?Sized>(
    boot: &mut SystemdBoot<E>,
    slot: Slot,
    source: &S,
    files: &SlotBootFiles,
) -> Result<SlotEntry, SystemdBootError> {
    if boot.booted == Some(slot) {
        return Err(boot.refused(format!(
            "slot {slot} is the running system; its kernel on {} is not replaced",
            boot.esp.describe()
        )));
    }
    let entry = slot_entry_from(slot, source, files)?;
    let state = boot.inspect()?;
    if let Some(current) = state.slot_entry(slot)
        && !current.is_bad()
    {
        return Err(boot.refused(format!(
            "slot {slot}'s entry {} on {} is bootable; take the slot out of the boot order \
             (prepare_update) before replacing its kernel",
            current.file_name,
            boot.esp.describe()
        )));
    }
    let initrd = entry.initrd.first().cloned().ok_or_else(|| {
        SystemdBootError::InvalidEntry(format!("entry of slot {slot} has no initrd"))
    })?;
    for (from, to) in [(&files.kernel, &entry.linux), (&files.initrd, &initrd)] {
        let data = source.read_file(from)?;
        boot.esp.write_file_atomic(to, &data)?;
    }
    boot.write_entry(slot, &entry)?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Bootloader;
    use crate::systemd_boot::install::{EntrySet, InactiveSlot, LoaderConfig, install_entry_set};
    use crate::systemd_boot::{DirEsp, FatEsp, format_fat};

    const HASH: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const NEW_HASH: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    /// A slot FAT image as basalt-image writes it.
    fn slot_image(dir: &std::path::Path, kernel: &[u8], hash: &str) -> std::path::PathBuf {
        let path = dir.join("slot.img");
        let size = 8 << 20;
        std::fs::File::create(&path).unwrap().set_len(size).unwrap();
        format_fat(&path, 0, size, None, "SYSTEM").unwrap();
        let mut fat = FatEsp::open(&path, 0, size).unwrap();
        fat.write_file_atomic("Image", kernel).unwrap();
        fat.write_file_atomic("initrd.img", b"initramfs v2")
            .unwrap();
        fat.write_file_atomic(SLOT_ENV, format!("basalt_roothash={hash}\n").as_bytes())
            .unwrap();
        fat.write_file_atomic(SLOT_CMDLINE, b"console=ttyAMA0,115200 panic=10\n")
            .unwrap();
        fat.write_file_atomic(SLOT_VERSION, b"2.0.0\n").unwrap();
        path
    }

    /// A fresh ESP as basalt-image writes it: A blessed, B empty (bad).
    fn fresh_esp(dir: &std::path::Path) -> DirEsp {
        let mut esp = DirEsp::new(dir);
        esp.write_file_atomic("basalt/a/vmlinuz", b"kernel v1")
            .unwrap();
        esp.write_file_atomic("basalt/a/initrd.img", b"initramfs v1")
            .unwrap();
        let set = EntrySet {
            active: Slot::A,
            a: SlotEntry::standard(Slot::A, "Basalt OS 1.0.0", HASH, "console=ttyAMA0"),
            b: SlotEntry::standard(Slot::B, "Basalt OS", HASH, "console=ttyAMA0"),
            inactive: InactiveSlot::Empty,
            loader: LoaderConfig::default(),
        };
        install_entry_set(&mut esp, &set).unwrap();
        esp
    }

    #[test]
    fn upgrade_installs_kernel_then_trial_commit_and_rollback() {
        let esp_dir = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        let slot = FatEsp::open_whole(slot_image(slot_dir.path(), b"kernel v2", NEW_HASH))
            .unwrap()
            .with_label("SYSTEM-B");
        let mut boot = SystemdBoot::new(fresh_esp(esp_dir.path()), Some(Slot::A));
        let files = SlotBootFiles::new("Image");

        boot.prepare_update(Slot::B).unwrap();
        let entry = install_slot_boot(&mut boot, Slot::B, &slot, &files).unwrap();
        assert_eq!(entry.title, "Basalt OS 2.0.0 (slot B)");
        let esp = boot.esp();
        assert_eq!(esp.read_file("basalt/b/vmlinuz").unwrap(), b"kernel v2");
        assert_eq!(
            esp.read_file("basalt/b/initrd.img").unwrap(),
            b"initramfs v2"
        );
        // still bad until activated: A boots next
        let state = boot.inspect().unwrap();
        assert_eq!(state.next_entry().unwrap().slot, Some(Slot::A));
        let b = state.slot_entry(Slot::B).unwrap();
        assert!(b.is_bad() && b.loadable, "{b:?}");
        let text = String::from_utf8(
            boot.esp()
                .read_file(&format!("loader/entries/{}", b.file_name))
                .unwrap(),
        )
        .unwrap();
        assert!(
            text.contains(&format!(
                "options basalt.slot=B basalt.roothash={NEW_HASH} console=ttyAMA0,115200 panic=10\n"
            )),
            "{text}"
        );

        boot.activate(Slot::B, 3).unwrap();
        let state = boot.inspect().unwrap();
        let next = state.next_entry().unwrap();
        assert_eq!(next.file_name, "basalt-b+3.conf");
        // the running kernel's files were not touched
        assert_eq!(
            boot.esp().read_file("basalt/a/vmlinuz").unwrap(),
            b"kernel v1"
        );

        // systemd-boot booted B once (+3 -> +2-1); machined on B commits it
        boot.into_inner()
            .rename(
                "loader/entries/basalt-b+3.conf",
                "loader/entries/basalt-b+2-1.conf",
            )
            .unwrap();
        let mut on_b = SystemdBoot::new(DirEsp::new(esp_dir.path()), Some(Slot::B));
        assert!(!on_b.status().unwrap().committed);
        on_b.mark_good(Slot::B).unwrap();
        let status = on_b.status().unwrap();
        assert!(status.committed, "{status:?}");
        assert_eq!(status.order.first(), Some(&Slot::B));

        // the booted slot's kernel is never replaced
        let e = install_slot_boot(&mut on_b, Slot::B, &slot, &files).unwrap_err();
        assert!(e.to_string().contains("running system"), "{e}");
        // nor a bootable fallback's without prepare_update
        let e = install_slot_boot(&mut on_b, Slot::A, &slot, &files).unwrap_err();
        assert!(e.to_string().contains("prepare_update"), "{e}");

        // rollback returns to A, whose files are still there
        assert_eq!(on_b.rollback().unwrap(), Slot::A);
        let state = on_b.inspect().unwrap();
        assert_eq!(state.next_entry().unwrap().slot, Some(Slot::A));
    }

    #[test]
    fn a_cut_before_activate_keeps_the_running_slot() {
        let esp_dir = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        let slot = FatEsp::open_whole(slot_image(slot_dir.path(), b"kernel v2", NEW_HASH)).unwrap();
        let mut boot = SystemdBoot::new(fresh_esp(esp_dir.path()), Some(Slot::A));
        boot.prepare_update(Slot::B).unwrap();
        install_slot_boot(&mut boot, Slot::B, &slot, &SlotBootFiles::new("Image")).unwrap();
        // the node lost power here: no activate
        let after = SystemdBoot::new(DirEsp::new(esp_dir.path()), None);
        let state = after.inspect().unwrap();
        assert_eq!(state.next_entry().unwrap().slot, Some(Slot::A));
        assert!(state.slot_entry(Slot::B).unwrap().is_bad(), "{state:?}");
        // no temporary files are left next to the kernels
        let names: Vec<String> = after
            .esp()
            .list_dir("basalt/b")
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn a_slot_without_root_hash_or_kernel_is_named() {
        let esp_dir = tempfile::tempdir().unwrap();
        let slot_dir = tempfile::tempdir().unwrap();
        let path = slot_image(slot_dir.path(), b"k", NEW_HASH);
        let mut fat = FatEsp::open_whole(&path).unwrap().with_label("SYSTEM-B");
        fat.write_file_atomic(SLOT_ENV, b"# nothing\n").unwrap();
        let mut boot = SystemdBoot::new(fresh_esp(esp_dir.path()), Some(Slot::A));
        boot.prepare_update(Slot::B).unwrap();
        let e = install_slot_boot(&mut boot, Slot::B, &fat, &SlotBootFiles::new("Image"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("basalt_roothash") && e.contains("SYSTEM-B"),
            "{e}"
        );
        let fat = FatEsp::open_whole(slot_image(slot_dir.path(), b"k", NEW_HASH)).unwrap();
        let e = install_slot_boot(&mut boot, Slot::B, &fat, &SlotBootFiles::new("vmlinuz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("vmlinuz"), "{e}");
    }
}
