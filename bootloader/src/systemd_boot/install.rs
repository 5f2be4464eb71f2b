//! Writing Basalt's loader entries and `loader.conf`: the content of one slot's entry
//! ([`SlotEntry`]) and a fresh entry set for a new image ([`install_entry_set`]).

use super::SystemdBootError;
use super::entry::{BootCounter, ENTRIES_DIR, EntryFileName, LOADER_CONF, SORT_KEY};
use super::esp::EspFs;
use crate::slot::Slot;

/// `loader/loader.conf` as Basalt writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// The `default` glob. Keep it matching *both* slots (`basalt-*`): a glob naming one
    /// slot would keep booting it after its tries ran out (see [`super::entry`]).
    pub default: String,
    /// Menu timeout in seconds (0: no menu unless a key is held).
    pub timeout: u32,
    /// Whether the kernel command line may be edited at the boot menu.
    pub editor: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            default: "basalt-*".to_string(),
            timeout: 0,
            editor: false,
        }
    }
}

impl LoaderConfig {
    /// The file content.
    pub fn render(&self) -> Result<String, SystemdBootError> {
        check_value("default", &self.default)?;
        Ok(format!(
            "# Managed by basalt-bootloader: Basalt orders its entries by sort-key + version.\n\
             default {}\ntimeout {}\neditor {}\n",
            self.default,
            self.timeout,
            if self.editor { "yes" } else { "no" }
        ))
    }
}

/// The content of one slot's loader entry (Basalt adds `sort-key` and `version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotEntry {
    /// Menu title, e.g. "Basalt OS 1.2 (slot A)".
    pub title: String,
    /// Kernel path on the ESP, e.g. `/basalt/a/vmlinuz`.
    pub linux: String,
    /// Initramfs paths on the ESP.
    pub initrd: Vec<String>,
    /// Device tree path on the ESP, if the firmware's is not used.
    pub devicetree: Option<String>,
    /// Kernel command line. `basalt.slot=<slot>` is added when missing.
    pub options: String,
}

impl SlotEntry {
    /// The conventional entry of `slot`: kernel `/basalt/<a|b>/vmlinuz`, initramfs
    /// `/basalt/<a|b>/initrd.img`, options `basalt.slot=<A|B> basalt.roothash=<hex> <extra>`.
    pub fn standard(slot: Slot, os_name: &str, roothash: &str, extra_options: &str) -> Self {
        let dir = format!("/basalt/{}", slot.letter().to_ascii_lowercase());
        let options = format!("basalt.slot={slot} basalt.roothash={roothash} {extra_options}");
        SlotEntry {
            title: format!("{os_name} (slot {slot})"),
            linux: format!("{dir}/vmlinuz"),
            initrd: vec![format!("{dir}/initrd.img")],
            devicetree: None,
            options: options.trim_end().to_string(),
        }
    }

    /// The entry file content for `slot` with ordering priority `priority` (the `version`).
    pub fn render(&self, slot: Slot, priority: u64) -> Result<String, SystemdBootError> {
        check_value("title", &self.title)?;
        check_value("linux", &self.linux)?;
        check_value("options", &self.options)?;
        let slot_arg = format!("basalt.slot={slot}");
        let mut options = self.options.trim().to_string();
        for word in options.split_whitespace() {
            if word.starts_with("basalt.slot=") && word != slot_arg {
                return Err(SystemdBootError::InvalidEntry(format!(
                    "options of slot {slot} contain {word}"
                )));
            }
        }
        if !options.split_whitespace().any(|w| w == slot_arg) {
            options = format!("{slot_arg} {options}").trim_end().to_string();
        }
        let mut text = format!(
            "# Basalt OS slot {slot}. Managed by basalt-bootloader: the file name carries the\n\
             # boot counter, `version` orders the slots (highest first).\n\
             title {}\nsort-key {SORT_KEY}\nversion {priority}\nlinux {}\n",
            self.title, self.linux
        );
        for initrd in &self.initrd {
            check_value("initrd", initrd)?;
            text.push_str(&format!("initrd {initrd}\n"));
        }
        if let Some(dtb) = &self.devicetree {
            check_value("devicetree", dtb)?;
            text.push_str(&format!("devicetree {dtb}\n"));
        }
        text.push_str(&format!("options {options}\n"));
        Ok(text)
    }
}

fn check_value(key: &str, value: &str) -> Result<(), SystemdBootError> {
    if value.trim().is_empty() || value.chars().any(char::is_control) {
        return Err(SystemdBootError::InvalidEntry(format!(
            "{key} {value:?} must be one non-empty line"
        )));
    }
    Ok(())
}

/// What the fresh entry set does with the slot that is not active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InactiveSlot {
    /// The image holds a system in both slots: the inactive one is a blessed fallback.
    Fallback,
    /// The inactive slot is empty: its entry is written bad (`+0`) until an upgrade
    /// activates it.
    Empty,
}

/// A fresh entry set for a new image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySet {
    /// The slot that boots first.
    pub active: Slot,
    /// Entry of slot A.
    pub a: SlotEntry,
    /// Entry of slot B.
    pub b: SlotEntry,
    /// What to do with the other slot.
    pub inactive: InactiveSlot,
    /// `loader.conf`.
    pub loader: LoaderConfig,
}

/// Writes `loader/loader.conf` and both slots' entries, removing any other Basalt entries:
/// the active slot blessed with priority 2, the other with priority 1, blessed or bad.
pub fn install_entry_set<E: EspFs>(esp: &mut E, set: &EntrySet) -> Result<(), SystemdBootError> {
    let loader = set.loader.render()?;
    let rendered = [
        (Slot::A, set.a.render(Slot::A, priority(set, Slot::A))?),
        (Slot::B, set.b.render(Slot::B, priority(set, Slot::B))?),
    ];
    match esp.list_dir(ENTRIES_DIR) {
        Ok(entries) => {
            for entry in entries.into_iter().filter(|e| !e.is_dir) {
                if EntryFileName::parse(&entry.name)
                    .and_then(|n| n.slot())
                    .is_some()
                {
                    esp.delete(&format!("{ENTRIES_DIR}/{}", entry.name))?;
                }
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    for (slot, text) in rendered {
        let counter =
            (slot != set.active && set.inactive == InactiveSlot::Empty).then_some(BootCounter {
                left: 0,
                done: None,
            });
        let name = EntryFileName::for_slot(slot, counter).to_file_name();
        esp.write_file_atomic(&format!("{ENTRIES_DIR}/{name}"), text.as_bytes())?;
    }
    esp.write_file_atomic(LOADER_CONF, loader.as_bytes())?;
    Ok(())
}

fn priority(set: &EntrySet, slot: Slot) -> u64 {
    if slot == set.active { 2 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_entry_renders() {
        let entry = SlotEntry::standard(Slot::B, "Basalt OS", "ab12", "console=ttyS0");
        let text = entry.render(Slot::B, 7).unwrap();
        assert!(text.contains("\ntitle Basalt OS (slot B)\nsort-key basalt\nversion 7\n"));
        assert!(text.contains("linux /basalt/b/vmlinuz\ninitrd /basalt/b/initrd.img\n"));
        assert!(text.ends_with("options basalt.slot=B basalt.roothash=ab12 console=ttyS0\n"));
    }

    #[test]
    fn slot_argument_is_added_or_checked() {
        let mut entry = SlotEntry::standard(Slot::A, "Basalt OS", "00", "");
        entry.options = "quiet".to_string();
        assert!(
            entry
                .render(Slot::A, 1)
                .unwrap()
                .contains("options basalt.slot=A quiet\n")
        );
        entry.options = "basalt.slot=B".to_string();
        assert!(entry.render(Slot::A, 1).is_err());
        entry.options = "a\nb".to_string();
        assert!(entry.render(Slot::A, 1).is_err());
    }
}
