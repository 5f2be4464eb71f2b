//! Kernel module index and dependency resolution, without depmod or modprobe.
//!
//! [`ModuleIndex::scan`] walks a `lib/modules/<release>` tree and reads every module's
//! `.modinfo` (name, `depends`, `softdep`, `alias`, `vermagic`). Dependencies come from
//! `modules.dep` when the tree has one (a `make modules_install` tree, a `--kernel-dir`),
//! else from each module's `depends=`, which is what depmod would have written: Debian's
//! kernel packages ship no `modules.dep` (depmod runs at install time).
//!
//! [`ModuleIndex::resolve`] turns the board's early module names into a load order: for each
//! requested module, first its `softdep pre:` modules (names or aliases such as
//! `crypto-crc32c`, which `ext4` needs for its checksums), then its dependencies, depth
//! first, then the module, then its `softdep post:` modules; each module once. Names compare
//! with `-` and `_` equal, as modprobe does. A requested module that is built into the
//! kernel (`modules.builtin`) is skipped and reported; one that does not exist is an error
//! naming all such modules and the kernel. A soft dependency that matches nothing is
//! skipped (as modprobe does) and reported. When a soft dependency's alias matches several
//! modules and some are generic implementations (`*_generic`, e.g. `crc32c_generic` for
//! `crypto-crc32c`), only those are taken: CPU-specific ones such as `crc32c-intel` (needs
//! SSE4.2) or `crct10dif-pclmul` fail with `ENODEV` on CPUs without the instructions, and
//! the early list must load everywhere. They can be loaded later from the root filesystem.
//!
//! The index can also write the `modules.dep`, `modules.alias` and `modules.softdep` files a
//! root filesystem needs for later module loading. Compressed modules (`.ko.xz`, `.ko.zst`,
//! `.ko.gz`) are read transparently; [`ModuleIndex::read_module`] returns them uncompressed
//! and [`ModuleInfo::installed_path`] names them without the suffix.

use super::elf::{self, ElfError};
use super::glob::glob_match;
pub use super::modfiles::read_maybe_compressed;
use super::modfiles::{apply_modules_dep, module_from_modinfo, read_text, walk};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

/// A problem scanning modules or resolving dependencies.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A module file is not a valid kernel module.
    #[error("module {}: {source}", path.display())]
    Elf {
        /// The module file.
        path: PathBuf,
        /// The ELF problem.
        source: ElfError,
    },
    /// Requested modules do not exist in this kernel.
    #[error("module{s} {names} not found in kernel {release} ({origin})", s = if names.len() == 1 { "" } else { "s" }, names = names.join(", "))]
    NotFound {
        /// The missing module names.
        names: Vec<String>,
        /// The kernel release.
        release: String,
        /// Where the modules came from (package file or directory).
        origin: String,
    },
    /// A module depends on a module that does not exist.
    #[error("module {module} depends on {dependency}, which is not in kernel {release} ({origin})")]
    MissingDependency {
        /// The module.
        module: String,
        /// The missing dependency.
        dependency: String,
        /// The kernel release.
        release: String,
        /// Where the modules came from.
        origin: String,
    },
    /// Dependencies form a cycle.
    #[error("module dependency cycle: {}", chain.join(" -> "))]
    Cycle {
        /// The modules of the cycle.
        chain: Vec<String>,
    },
    /// No module carries a `vermagic`, so the release cannot be found.
    #[error("cannot tell the kernel release of the modules in {}", path.display())]
    UnknownRelease {
        /// The modules directory.
        path: PathBuf,
    },
}

/// One kernel module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Normalised name (`-` → `_`), e.g. `dm_verity`.
    pub name: String,
    /// Path relative to the modules directory, as found, e.g. `kernel/drivers/md/dm-verity.ko`.
    pub path: String,
    /// Hard dependencies (normalised names).
    pub depends: Vec<String>,
    /// `softdep pre:` names or aliases.
    pub softdep_pre: Vec<String>,
    /// `softdep post:` names or aliases.
    pub softdep_post: Vec<String>,
    /// `alias=` patterns.
    pub aliases: Vec<String>,
}

impl ModuleInfo {
    /// The path without a compression suffix (`…/squashfs.ko`): where the uncompressed
    /// module goes in an initramfs or root filesystem.
    pub fn installed_path(&self) -> &str {
        for ext in [".xz", ".zst", ".gz"] {
            if let Some(p) = self.path.strip_suffix(ext) {
                return p;
            }
        }
        &self.path
    }
}

/// The modules to load early, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModules {
    /// Modules in load order (dependencies first).
    pub modules: Vec<ModuleInfo>,
    /// Requested names that are built into the kernel (nothing to load).
    pub builtin: Vec<String>,
    /// `(module, soft dependency)` pairs that matched no module (skipped).
    pub unresolved_softdeps: Vec<(String, String)>,
}

/// Normalises a module name: `-` → `_`, without `.ko`.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// The index of a `lib/modules/<release>` directory.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    root: PathBuf,
    release: String,
    origin: String,
    modules: BTreeMap<String, ModuleInfo>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Scans `root` (a `lib/modules/<release>` directory). `release` may be `None` to take
    /// it from the modules' `vermagic`; `origin` names the source in errors.
    pub fn scan(
        root: &Path,
        release: Option<&str>,
        origin: &str,
    ) -> Result<ModuleIndex, ModulesError> {
        let mut files = Vec::new();
        walk(root, root, &mut files)?;
        let mut modules = BTreeMap::new();
        let mut vermagic = None;
        for rel in files {
            let path = root.join(&rel);
            let data = read_maybe_compressed(&path)?;
            let info = elf::modinfo(&data).map_err(|source| ModulesError::Elf {
                path: path.clone(),
                source,
            })?;
            let module = module_from_modinfo(&rel, &info);
            if vermagic.is_none() {
                vermagic = info
                    .iter()
                    .find(|(k, _)| k == "vermagic")
                    .and_then(|(_, v)| v.split_whitespace().next().map(str::to_string));
            }
            // depmod prefers updates/ over the rest; otherwise the first in path order wins.
            let replace = match modules.get(&module.name) {
                None => true,
                Some(old) => {
                    let old: &ModuleInfo = old;
                    module.path.starts_with("updates/") && !old.path.starts_with("updates/")
                }
            };
            if replace {
                modules.insert(module.name.clone(), module);
            }
        }
        let release = match release {
            Some(r) => r.to_string(),
            None => vermagic.ok_or_else(|| ModulesError::UnknownRelease {
                path: root.to_path_buf(),
            })?,
        };
        let dep_file = root.join("modules.dep");
        if dep_file.is_file() {
            let text = read_text(&dep_file)?;
            apply_modules_dep(&text, &mut modules);
        }
        let builtin_file = root.join("modules.builtin");
        let builtin = if builtin_file.is_file() {
            read_text(&builtin_file)?
                .lines()
                .filter_map(|l| l.trim().rsplit('/').next())
                .filter(|n| !n.is_empty())
                .map(normalize_name)
                .collect()
        } else {
            BTreeSet::new()
        };
        Ok(ModuleIndex {
            root: root.to_path_buf(),
            release,
            origin: origin.to_string(),
            modules,
            builtin,
        })
    }

    /// The modules directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The kernel release.
    pub fn release(&self) -> &str {
        &self.release
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether there are no modules.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// A module by name (`-`/`_` equivalent).
    pub fn get(&self, name: &str) -> Option<&ModuleInfo> {
        self.modules.get(&normalize_name(name))
    }

    /// Every module, sorted by name.
    pub fn modules(&self) -> impl Iterator<Item = &ModuleInfo> {
        self.modules.values()
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The uncompressed content of a module.
    pub fn read_module(&self, module: &ModuleInfo) -> Result<Vec<u8>, ModulesError> {
        read_maybe_compressed(&self.root.join(&module.path))
    }

    /// Resolves `names` to a load order (see the module documentation).
    pub fn resolve<S: AsRef<str>>(&self, names: &[S]) -> Result<ResolvedModules, ModulesError> {
        let mut state = Walk::default();
        let mut missing = Vec::new();
        let mut builtin = Vec::new();
        for name in names {
            let n = normalize_name(name.as_ref());
            if self.modules.contains_key(&n) {
                self.visit(&n, &mut state)?;
            } else if self.builtin.contains(&n) {
                builtin.push(n);
            } else {
                missing.push(name.as_ref().to_string());
            }
        }
        if !missing.is_empty() {
            return Err(ModulesError::NotFound {
                names: missing,
                release: self.release.clone(),
                origin: self.origin.clone(),
            });
        }
        Ok(ResolvedModules {
            modules: state
                .order
                .iter()
                .filter_map(|n| self.modules.get(n).cloned())
                .collect(),
            builtin,
            unresolved_softdeps: state.unresolved,
        })
    }

    fn visit(&self, name: &str, st: &mut Walk) -> Result<(), ModulesError> {
        if st.done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = st.stack.iter().position(|n| n == name) {
            let mut chain = st.stack[pos..].to_vec();
            chain.push(name.to_string());
            return Err(ModulesError::Cycle { chain });
        }
        let Some(info) = self.modules.get(name) else {
            return Ok(());
        };
        st.stack.push(name.to_string());
        for soft in &info.softdep_pre {
            self.visit_soft(name, soft, st)?;
        }
        for dep in &info.depends {
            if self.modules.contains_key(dep) {
                self.visit(dep, st)?;
            } else if !self.builtin.contains(dep) {
                return Err(ModulesError::MissingDependency {
                    module: name.to_string(),
                    dependency: dep.clone(),
                    release: self.release.clone(),
                    origin: self.origin.clone(),
                });
            }
        }
        st.stack.pop();
        st.done.insert(name.to_string());
        st.order.push(name.to_string());
        for soft in &info.softdep_post {
            self.visit_soft(name, soft, st)?;
        }
        Ok(())
    }

    fn visit_soft(&self, module: &str, soft: &str, st: &mut Walk) -> Result<(), ModulesError> {
        let mut matches = self.lookup(soft);
        if matches.len() > 1 && matches.iter().any(|m| m.ends_with("_generic")) {
            matches.retain(|m| m.ends_with("_generic"));
        }
        if matches.is_empty() && !self.is_builtin(soft) {
            st.unresolved.push((module.to_string(), soft.to_string()));
        }
        for m in matches {
            // A soft dependency already being loaded further up is not a cycle.
            if !st.stack.contains(&m) {
                self.visit(&m, st)?;
            }
        }
        Ok(())
    }

    /// Modules matching a name or an alias (modprobe's lookup), sorted.
    pub fn lookup(&self, name_or_alias: &str) -> Vec<String> {
        let n = normalize_name(name_or_alias);
        if self.modules.contains_key(&n) {
            return vec![n];
        }
        self.modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| glob_match(a, name_or_alias)))
            .map(|m| m.name.clone())
            .collect()
    }

    /// `modules.dep` text: one line per module, `path: deps…` (transitive hard
    /// dependencies, last to be loaded first, as kmod reads it), sorted by path.
    pub fn modules_dep(&self) -> String {
        let mut lines: Vec<(String, String)> = Vec::new();
        for m in self.modules.values() {
            let mut st = Walk::default();
            let _ = self.visit_hard(&m.name, &mut st);
            let deps: Vec<&str> = st
                .order
                .iter()
                .rev()
                .filter(|n| **n != m.name)
                .filter_map(|n| self.modules.get(n).map(ModuleInfo::installed_path))
                .collect();
            let line = if deps.is_empty() {
                format!("{}:", m.installed_path())
            } else {
                format!("{}: {}", m.installed_path(), deps.join(" "))
            };
            lines.push((m.installed_path().to_string(), line));
        }
        lines.sort();
        lines.into_iter().map(|(_, l)| l + "\n").collect()
    }

    fn visit_hard(&self, name: &str, st: &mut Walk) -> Result<(), ModulesError> {
        if st.done.contains(name) || st.stack.iter().any(|n| n == name) {
            return Ok(());
        }
        let Some(info) = self.modules.get(name) else {
            return Ok(());
        };
        st.stack.push(name.to_string());
        for dep in &info.depends {
            self.visit_hard(dep, st)?;
        }
        st.stack.pop();
        st.done.insert(name.to_string());
        st.order.push(name.to_string());
        Ok(())
    }

    /// `modules.alias` text: `alias PATTERN module`, sorted by module then pattern.
    pub fn modules_alias(&self) -> String {
        let mut out = String::new();
        for m in self.modules.values() {
            let mut aliases = m.aliases.clone();
            aliases.sort();
            for a in aliases {
                out.push_str(&format!("alias {a} {}\n", m.name));
            }
        }
        out
    }

    /// `modules.softdep` text: `softdep module pre: … post: …`, sorted by module.
    pub fn modules_softdep(&self) -> String {
        let mut out = String::new();
        for m in self.modules.values() {
            if m.softdep_pre.is_empty() && m.softdep_post.is_empty() {
                continue;
            }
            out.push_str(&format!("softdep {}", m.name));
            if !m.softdep_pre.is_empty() {
                out.push_str(&format!(" pre: {}", m.softdep_pre.join(" ")));
            }
            if !m.softdep_post.is_empty() {
                out.push_str(&format!(" post: {}", m.softdep_post.join(" ")));
            }
            out.push('\n');
        }
        out
    }
}

#[derive(Default)]
struct Walk {
    done: BTreeSet<String>,
    stack: Vec<String>,
    order: Vec<String>,
    unresolved: Vec<(String, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::elf::tests::fake_module;
    use std::fs;

    fn tree(mods: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, info) in mods {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let info = format!("{info}\0vermagic=6.1.0-test SMP mod_unload\0");
            fs::write(p, fake_module(info.as_bytes())).unwrap();
        }
        fs::write(
            dir.path().join("modules.builtin"),
            "kernel/fs/nls/nls_base.ko\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn resolves_in_load_order_with_softdeps() {
        let dir = tree(&[
            (
                "kernel/fs/ext4/ext4.ko",
                "depends=jbd2,mbcache,crc16\0softdep=pre: crypto-crc32c\0name=ext4",
            ),
            ("kernel/fs/jbd2/jbd2.ko", "depends=\0name=jbd2"),
            ("kernel/fs/mbcache.ko", "depends=\0name=mbcache"),
            ("kernel/lib/crc16.ko", "depends=\0name=crc16"),
            (
                "kernel/arch/x86/crypto/crc32c-intel.ko",
                "alias=crypto-crc32c\0alias=crc32c\0name=crc32c_intel",
            ),
            (
                "kernel/crypto/crc32c_generic.ko",
                "alias=crypto-crc32c\0alias=crc32c\0name=crc32c_generic",
            ),
            (
                "kernel/drivers/md/dm-verity.ko",
                "depends=dm-mod,dm-bufio\0name=dm_verity\0softdep=pre: nothing-here",
            ),
            ("kernel/drivers/md/dm-mod.ko", "depends=\0name=dm_mod"),
            (
                "kernel/drivers/md/dm-bufio.ko.gz",
                "depends=dm-mod\0name=dm_bufio",
            ),
        ]);
        // gzip the dm-bufio module for real
        let gz = dir.path().join("kernel/drivers/md/dm-bufio.ko.gz");
        let raw = fs::read(&gz).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut enc, &raw).unwrap();
        fs::write(&gz, enc.finish().unwrap()).unwrap();

        let idx = ModuleIndex::scan(dir.path(), None, "test tree").unwrap();
        assert_eq!(idx.release(), "6.1.0-test");
        assert_eq!(idx.len(), 9);
        let r = idx
            .resolve(&["dm-verity", "ext4", "nls_base", "dm_mod"])
            .unwrap();
        let names: Vec<&str> = r.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dm_mod",
                "dm_bufio",
                "dm_verity",
                "crc32c_generic",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
        assert_eq!(r.builtin, ["nls_base"]);
        assert_eq!(
            r.unresolved_softdeps,
            [("dm_verity".to_string(), "nothing-here".to_string())]
        );
        assert_eq!(
            r.modules[1].installed_path(),
            "kernel/drivers/md/dm-bufio.ko"
        );
        assert_eq!(idx.read_module(&r.modules[1]).unwrap(), raw);

        let dep = idx.modules_dep();
        assert!(dep.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n"), "{dep}");
        assert!(dep.contains("kernel/fs/jbd2/jbd2.ko:\n"), "{dep}");
        assert!(
            idx.modules_alias()
                .contains("alias crypto-crc32c crc32c_generic\n")
        );
        assert_eq!(idx.modules_softdep().lines().count(), 2);
    }

    #[test]
    fn missing_modules_are_all_named() {
        let dir = tree(&[("kernel/a.ko", "name=a\0depends=zz")]);
        let idx = ModuleIndex::scan(dir.path(), Some("6.1.0-x"), "pkg.deb").unwrap();
        let err = idx.resolve(&["nope", "b-c"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "modules nope, b-c not found in kernel 6.1.0-x (pkg.deb)"
        );
        let err = idx.resolve(&["a"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "module a depends on zz, which is not in kernel 6.1.0-x (pkg.deb)"
        );
    }

    #[test]
    fn modules_dep_overrides_modinfo() {
        let dir = tree(&[
            ("kernel/a.ko", "name=a\0depends=b"),
            ("kernel/b.ko", "name=b"),
            ("kernel/c.ko", "name=c"),
        ]);
        fs::write(
            dir.path().join("modules.dep"),
            "kernel/a.ko: kernel/c.ko kernel/b.ko\nkernel/b.ko:\nkernel/c.ko: kernel/b.ko\n",
        )
        .unwrap();
        let idx = ModuleIndex::scan(dir.path(), None, "t").unwrap();
        let r = idx.resolve(&["a"]).unwrap();
        let names: Vec<&str> = r.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["b", "c", "a"]);
    }

    #[test]
    fn cycles_are_reported() {
        let dir = tree(&[
            ("kernel/a.ko", "name=a\0depends=b"),
            ("kernel/b.ko", "name=b\0depends=a"),
        ]);
        let idx = ModuleIndex::scan(dir.path(), None, "t").unwrap();
        let err = idx.resolve(&["a"]).unwrap_err().to_string();
        assert_eq!(err, "module dependency cycle: a -> b -> a");
    }
}
