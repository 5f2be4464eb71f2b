//! Reading a modules directory: finding module files, their `.modinfo`, `modules.dep`,
//! and module files compressed with xz, zstd or gzip.

use super::modules::{ModuleInfo, ModulesError, normalize_name};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;

/// File name endings of kernel modules.
pub const MODULE_SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

pub(crate) fn module_from_modinfo(rel: &str, info: &[(String, String)]) -> ModuleInfo {
    let file_stem = rel
        .rsplit('/')
        .next()
        .and_then(|f| MODULE_SUFFIXES.iter().find_map(|s| f.strip_suffix(s)))
        .unwrap_or(rel);
    let mut m = ModuleInfo {
        name: normalize_name(file_stem),
        path: rel.to_string(),
        depends: Vec::new(),
        softdep_pre: Vec::new(),
        softdep_post: Vec::new(),
        aliases: Vec::new(),
    };
    for (k, v) in info {
        match k.as_str() {
            "name" if !v.is_empty() => m.name = normalize_name(v),
            "depends" => m
                .depends
                .extend(v.split(',').filter(|d| !d.is_empty()).map(normalize_name)),
            "alias" => m.aliases.push(v.clone()),
            "softdep" => {
                let mut target: Option<&mut Vec<String>> = None;
                for tok in v.split_whitespace() {
                    match tok {
                        "pre:" => target = Some(&mut m.softdep_pre),
                        "post:" => target = Some(&mut m.softdep_post),
                        name => {
                            if let Some(t) = target.as_mut() {
                                t.push(name.to_string());
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    m
}

/// Replaces each module's dependencies with the ones `modules.dep` lists (its lines name
/// paths; a module is matched by path, the dependencies by file name). A line lists the
/// transitive dependencies last-loaded first (kmod prepends them while parsing), so they
/// are stored reversed, in load order.
pub(crate) fn apply_modules_dep(text: &str, modules: &mut BTreeMap<String, ModuleInfo>) {
    let by_path: BTreeMap<String, String> = modules
        .values()
        .map(|m| (m.installed_path().to_string(), m.name.clone()))
        .chain(modules.values().map(|m| (m.path.clone(), m.name.clone())))
        .collect();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let Some(name) = by_path.get(path.trim()) else {
            continue;
        };
        let deps: Vec<String> = deps
            .split_whitespace()
            .filter_map(|d| d.rsplit('/').next())
            .map(|f| {
                let stem = MODULE_SUFFIXES
                    .iter()
                    .find_map(|s| f.strip_suffix(s))
                    .unwrap_or(f);
                normalize_name(stem)
            })
            .rev()
            .collect();
        if let Some(m) = modules.get_mut(name) {
            m.depends = deps;
        }
    }
}

pub(crate) fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ModulesError> {
    let io_err = |path: &Path, source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| io_err(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if MODULE_SUFFIXES.iter().any(|s| name.ends_with(s))
                && let Ok(rel) = path.strip_prefix(root)
            {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    Ok(())
}

pub(crate) fn read_text(path: &Path) -> Result<String, ModulesError> {
    fs::read_to_string(path).map_err(|source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a file, decompressing `.xz`, `.zst` and `.gz` by its suffix.
pub fn read_maybe_compressed(path: &Path) -> Result<Vec<u8>, ModulesError> {
    let io_err = |source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(io_err)?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        liblzma::read::XzDecoder::new(file).read_to_end(&mut out)
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(file).and_then(|mut d| d.read_to_end(&mut out))
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(file).read_to_end(&mut out)
    } else {
        io::BufReader::new(file).read_to_end(&mut out)
    }
    .map_err(io_err)?;
    Ok(out)
}
