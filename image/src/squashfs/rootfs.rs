//! The tree of a slot's root filesystem (`rootfs.squashfs`), as far as kernel inputs go:
//!
//! ```text
//! lib/modules/<release>/<path>.ko     every module that is not early (uncompressed)
//! lib/modules/<release>/modules.dep   generated from the index (all modules, early ones
//! lib/modules/<release>/modules.alias   included: they are loaded already when these are
//! lib/modules/<release>/modules.softdep read)
//! lib/modules/<release>/modules.{builtin,builtin.modinfo,order}   copied when present
//! lib/firmware/<dest>                 the board's Linux firmware
//! ```
//!
//! The early modules live only in the initramfs (see [`crate::initramfs`]). Further content
//! (machined's own files, overlays) is added by the caller to the returned tree.

use super::{SquashTree, SquashfsError};
use crate::inputs::{ModuleIndex, PlacedFile, ResolvedModules};
use std::collections::BTreeSet;

/// The kernel part of a slot's root: modules that are not early, module index files and
/// Linux firmware.
pub fn slot_rootfs(
    index: &ModuleIndex,
    early: &ResolvedModules,
    firmware: &[PlacedFile],
) -> Result<SquashTree, SquashfsError> {
    let mut tree = SquashTree::new();
    let base = format!("lib/modules/{}", index.release());
    tree.add_dir(&base, 0o755)?;
    let early: BTreeSet<&str> = early.modules.iter().map(|m| m.name.as_str()).collect();
    for m in index.modules() {
        if early.contains(m.name.as_str()) {
            continue;
        }
        let dest = format!("{base}/{}", m.installed_path());
        let src = index.root().join(&m.path);
        if m.installed_path() == m.path {
            tree.add_file_from(&dest, 0o644, &src)?;
        } else {
            tree.add_decompressed_from(&dest, 0o644, &src)?;
        }
    }
    tree.add_file(
        &format!("{base}/modules.dep"),
        0o644,
        index.modules_dep().into_bytes(),
    )?;
    tree.add_file(
        &format!("{base}/modules.alias"),
        0o644,
        index.modules_alias().into_bytes(),
    )?;
    tree.add_file(
        &format!("{base}/modules.softdep"),
        0o644,
        index.modules_softdep().into_bytes(),
    )?;
    for name in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        let src = index.root().join(name);
        if src.is_file() {
            tree.add_file_from(&format!("{base}/{name}"), 0o644, &src)?;
        }
    }
    for f in firmware {
        tree.add_file_from(&format!("lib/firmware/{}", f.dest), 0o644, &f.source)?;
    }
    Ok(tree)
}
