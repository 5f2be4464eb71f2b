//! containerd as a system service of machined: where its binaries, state and socket live,
//! the configuration machined writes for it, the service that runs it, and the registry CAs
//! it trusts.
//!
//! containerd 1.7 pulls through its transfer service, which resolves registries with its
//! defaults only (HTTPS, the process's trust roots; no `hosts.toml`, no plain HTTP, no
//! mirrors). Registry CAs therefore reach it as trust roots of the process: PEM files in a
//! directory named by `SSL_CERT_DIR` (read by Go beside the system bundle), and a digest of
//! them in its environment, so that a changed CA set restarts it.
//!
//! On a node, the binaries come from the system image's container extension
//! (`/usr/bin/containerd`), the content store and snapshots live on DATA (they survive A/B
//! upgrades and reboots) and the runtime state under `/run`. In dev mode everything lives
//! under machined's state directory and the binaries come from a directory given on the
//! command line.

use crate::services::process::SERVICE_PATH;
use crate::services::spec::{CONTAINERD, Restart, Runnable, ServiceSpec};
use crate::state::{StateError, write_atomic};
use basalt_config::schema::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Kernel modules containers need beyond the built-ins of Debian's kernels (namespaces,
/// cgroup v2 and seccomp are built in): the overlay file system of the snapshotter.
pub const KERNEL_MODULES: &[&str] = &["overlay"];

/// containerd's content store blobs under its root (containerd's own on-disk layout).
const CONTENT_BLOBS_DIR: &str = "io.containerd.content.v1.content/blobs/sha256";

/// Where the container extension puts containerd on a node.
pub const NODE_BIN_DIR: &str = "/usr/bin";

/// Everything containerd and the container runtime need on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimePaths {
    /// The directory of `containerd` and `containerd-shim-runc-v2`.
    pub bin_dir: PathBuf,
    /// Content store, snapshots, metadata (persistent).
    pub root: PathBuf,
    /// Runtime state (tasks, shims' sockets).
    pub state: PathBuf,
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The configuration machined writes.
    pub config_file: PathBuf,
    /// The registry CAs containerd trusts beside the system's (`SSL_CERT_DIR`).
    pub ca_dir: PathBuf,
    /// The containers' output FIFOs.
    pub io_dir: PathBuf,
    /// Named volumes (persistent).
    pub volumes_dir: PathBuf,
    /// Image archives staged while they are imported (persistent: an import resumes after
    /// a reboot).
    pub imports_dir: PathBuf,
    /// Containers are confined without pivot_root: on a node machined runs from the
    /// initramfs, whose root (rootfs) cannot be pivoted away, so runc uses chroot in the
    /// container's mount namespace instead (as Docker does on a ramdisk root).
    pub no_pivot_root: bool,
}

impl RuntimePaths {
    /// On a node: binaries from the system image, persistent data on DATA, the rest under
    /// `/run`. `None` when the image has no container extension.
    pub fn on_node(data_dir: &Path) -> Option<Self> {
        let bin_dir = PathBuf::from(NODE_BIN_DIR);
        if !bin_dir.join("containerd").is_file() {
            return None;
        }
        let run = PathBuf::from("/run/containerd");
        Some(Self {
            bin_dir,
            root: data_dir.join("containerd"),
            state: run.clone(),
            socket: run.join("containerd.sock"),
            config_file: PathBuf::from("/run/basalt/containerd/config.toml"),
            ca_dir: PathBuf::from("/run/basalt/containerd/registry-cas"),
            io_dir: PathBuf::from("/run/basalt/containerd/io"),
            volumes_dir: data_dir.join("volumes"),
            imports_dir: data_dir.join("image-imports"),
            no_pivot_root: true,
        })
    }

    /// In dev mode: everything under `state_dir/containerd`, binaries from `bin_dir`.
    pub fn dev(state_dir: &Path, bin_dir: &Path) -> Self {
        let base = state_dir.join("containerd");
        Self {
            bin_dir: bin_dir.to_path_buf(),
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("containerd.sock"),
            config_file: base.join("config.toml"),
            ca_dir: base.join("registry-cas"),
            io_dir: base.join("io"),
            volumes_dir: base.join("volumes"),
            imports_dir: base.join("imports"),
            no_pivot_root: false,
        }
    }

    /// containerd's configuration: Basalt's paths, the plugins a node does not use
    /// disabled (CRI: machined is the only client), no TCP listener.
    pub fn config_toml(&self) -> String {
        let q = |p: &Path| toml_string(&p.display().to_string());
        format!(
            "# Written by machined at every start; changes here are lost.\n\
             version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.tracing.processor.v1.otlp\", \
             \"io.containerd.internal.v1.tracing\"]\n\
             \n[grpc]\n  address = {socket}\n\
             \n[ttrpc]\n  address = {ttrpc}\n\
             \n[plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
            root = q(&self.root),
            state = q(&self.state),
            socket = q(&self.socket),
            ttrpc = q(&self.socket.with_extension("sock.ttrpc")),
            opt = q(&self.root.join("opt")),
        )
    }

    /// Whether containerd's content store holds any blob (images, or the remains of a
    /// pull).
    pub fn has_stored_content(&self) -> bool {
        std::fs::read_dir(self.root.join(CONTENT_BLOBS_DIR))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false)
    }

    /// Whether containerd must run even without container services: its store holds
    /// content (to be listed, removed and collected) or an image archive is staged for
    /// import.
    pub fn holds_images_or_imports(&self) -> bool {
        self.has_stored_content() || self.import_staging().holds_any()
    }

    /// Where image archives are staged.
    pub fn import_staging(&self) -> super::staging::ImportStaging {
        super::staging::ImportStaging::new(self.imports_dir.clone())
    }

    /// Creates the directories and writes the configuration (atomically).
    pub fn prepare(&self) -> Result<(), StateError> {
        for dir in [
            &self.root,
            &self.state,
            &self.ca_dir,
            &self.io_dir,
            &self.volumes_dir,
        ] {
            crate::state::create_private_dir(dir)?;
        }
        if let Some(parent) = self.config_file.parent() {
            crate::state::create_private_dir(parent)?;
        }
        write_atomic(&self.config_file, self.config_toml().as_bytes())
    }

    /// The system service that runs containerd, trusting the registry CAs of `registries`
    /// (written into the CA directory by [`write_registry_cas`]) besides the system's.
    pub fn service(&self, registries: &[Registry]) -> ServiceSpec {
        ServiceSpec {
            name: CONTAINERD.into(),
            run: Runnable::Program(self.bin_dir.join("containerd").display().to_string()),
            args: vec!["--config".into(), self.config_file.display().to_string()],
            env: BTreeMap::from([
                (
                    "PATH".to_string(),
                    format!("{}:{SERVICE_PATH}", self.bin_dir.display()),
                ),
                (
                    "SSL_CERT_DIR".to_string(),
                    self.ca_dir.display().to_string(),
                ),
                (
                    "BASALT_REGISTRY_CAS".to_string(),
                    registry_cas_digest(registries),
                ),
            ]),
            depends_on: vec![],
            restart: Restart::Always,
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The CA file of a registry in the CA directory (`host:port` with `:` kept; `/` cannot
/// occur in a validated host).
fn ca_file_name(host: &str) -> String {
    format!("{}.pem", host.replace(['[', ']'], ""))
}

/// A digest of the registry CAs: part of containerd's service definition, so that a changed
/// CA set restarts containerd (Go reads its trust roots once per process).
pub fn registry_cas_digest(registries: &[Registry]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Only CAs count: credentials are given per pull and need no restart.
    for r in registries.iter().filter(|r| !r.ca.is_empty()) {
        h.update(r.host.as_bytes());
        h.update([0]);
        h.update(r.ca.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Rewrites the CA directory from `registries`: one PEM file per registry; files of
/// registries no longer listed are removed (their CA must not stay trusted).
pub fn write_registry_cas(dir: &Path, registries: &[Registry]) -> Result<(), StateError> {
    crate::state::create_private_dir(dir)?;
    let registries: Vec<&Registry> = registries.iter().filter(|r| !r.ca.is_empty()).collect();
    let wanted: Vec<String> = registries.iter().map(|r| ca_file_name(&r.host)).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|source| StateError {
                    path: entry.path(),
                    source,
                })?;
            }
        }
    }
    for (r, name) in registries.iter().zip(&wanted) {
        write_atomic(&dir.join(name), r.ca.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_dirs_follow_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let a = Registry {
            host: "a:5000".into(),
            ca: "CA-A".into(),
            auth: None,
        };
        let b = Registry {
            host: "b".into(),
            ca: "CA-B".into(),
            auth: None,
        };
        write_registry_cas(dir.path(), &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a:5000.pem")).unwrap(),
            "CA-A"
        );
        write_registry_cas(dir.path(), std::slice::from_ref(&a)).unwrap();
        assert!(!dir.path().join("b.pem").exists());
        let paths = RuntimePaths::dev(Path::new("/s"), Path::new("/bin"));
        let one = paths.service(std::slice::from_ref(&a));
        assert_eq!(one.env["SSL_CERT_DIR"], "/s/containerd/registry-cas");
        assert_ne!(
            one,
            paths.service(&[a.clone(), b]),
            "a changed CA set changes the service"
        );
        let login = Registry {
            host: "c".into(),
            ca: String::new(),
            auth: Some(basalt_config::schema::RegistryAuth {
                username: "u".into(),
                password: "p".into(),
            }),
        };
        assert_eq!(
            one,
            paths.service(&[a.clone(), login.clone()]),
            "credentials do not restart containerd"
        );
        write_registry_cas(dir.path(), &[a, login]).unwrap();
        assert!(
            !dir.path().join("c.pem").exists(),
            "no CA file without a CA"
        );
        let cfg = RuntimePaths::dev(Path::new("/s"), Path::new("/bin")).config_toml();
        assert!(
            cfg.contains("root = \"/s/containerd/root\"")
                && cfg.contains("address = \"/s/containerd/containerd.sock\""),
            "{cfg}"
        );
    }
}
