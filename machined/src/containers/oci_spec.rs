//! The OCI runtime specification (runtime-spec 1.x `config.json`) of a container service,
//! built from its [`ContainerSpec`], its image's configuration and the host facts resolved
//! beforehand (device nodes, volume directories). Pure: the same inputs give the same spec.
//!
//! Defaults follow containerd's own (`oci.WithDefaultSpec`): the usual pseudo file systems,
//! namespaces for pid, ipc, uts and mount (and network when isolated), a small capability
//! set, `noNewPrivileges`, masked and read-only kernel paths, and a cgroup that denies every
//! device except those runc always allows and those the service lists. A privileged
//! container gets every capability and device and no masked paths. Limits: no seccomp
//! profile and no user namespaces yet; users by name are refused (a numeric `uid[:gid]`
//! is required), as resolving them would mean reading the image's `/etc/passwd`.

use super::image::ImageConfig;
use crate::services::spec::ContainerSpec;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The capabilities every container has (containerd's default set).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `PATH` when the image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// CFS period of a CPU limit, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];
const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A host device node a container may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Its path (the same inside the container).
    pub path: String,
    /// `c` (character) or `b` (block).
    pub kind: char,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// What the host provides to one container, resolved before the spec is built.
#[derive(Debug, Clone, Default)]
pub struct HostParts {
    /// The devices the service lists.
    pub devices: Vec<DeviceNode>,
    /// Volume name → its directory on DATA.
    pub volume_dirs: BTreeMap<String, PathBuf>,
    /// Host files bind-mounted read-only (host path, container path), e.g. resolv.conf with
    /// host networking.
    pub files: Vec<(PathBuf, String)>,
    /// The cgroup (path) the container runs in.
    pub cgroup: String,
}

/// Why a spec cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The image names its user by name.
    #[error("the image's user {0:?} is a name; only numeric uid[:gid] users are supported")]
    UserName(String),
    /// Nothing to run.
    #[error("the image has no entry point or command, and the service gives no args")]
    NothingToRun,
    /// A volume the service mounts was not resolved.
    #[error("volume {0:?} has no directory")]
    Volume(String),
}

fn user(image_user: &str) -> Result<(u32, u32), SpecError> {
    if image_user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = image_user.split_once(':').unwrap_or((image_user, ""));
    let uid: u32 = u
        .parse()
        .map_err(|_| SpecError::UserName(image_user.into()))?;
    let gid: u32 = if g.is_empty() {
        0
    } else {
        g.parse()
            .map_err(|_| SpecError::UserName(image_user.into()))?
    };
    Ok((uid, gid))
}

/// The process's environment: the image's, then the service's (which wins), `PATH` added
/// when neither sets it.
fn environment(image: &ImageConfig, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = image
        .env
        .iter()
        .filter(|e| {
            let name = e.split_once('=').map_or(e.as_str(), |(n, _)| n);
            !env.contains_key(name)
        })
        .cloned()
        .collect();
    out.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.into());
    }
    out
}

fn mounts(c: &ContainerSpec, host: &HostParts) -> Result<Vec<Value>, SpecError> {
    let sys_options = if c.privileged {
        json!(["nosuid", "noexec", "nodev"])
    } else {
        json!(["nosuid", "noexec", "nodev", "ro"])
    };
    let mut out = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    for (source, destination) in &host.files {
        out.push(json!({"destination": destination, "type": "bind", "source": source, "options": ["rbind", "ro"]}));
    }
    for v in &c.volumes {
        let dir = host
            .volume_dirs
            .get(&v.name)
            .ok_or_else(|| SpecError::Volume(v.name.clone()))?;
        let mode = if v.read_only { "ro" } else { "rw" };
        out.push(json!({"destination": v.mount_path, "type": "bind", "source": dir, "options": ["rbind", mode]}));
    }
    Ok(out)
}

fn capabilities(c: &ContainerSpec) -> Vec<String> {
    let names: Vec<&str> = if c.privileged {
        basalt_config::validate::CAPABILITIES.to_vec()
    } else {
        let mut v = DEFAULT_CAPABILITIES.to_vec();
        v.extend(c.capabilities.iter().map(String::as_str));
        v
    };
    let mut out: Vec<String> = names.iter().map(|n| format!("CAP_{n}")).collect();
    out.sort();
    out.dedup();
    out
}

fn linux_section(name: &str, c: &ContainerSpec, host: &HostParts) -> Value {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if c.isolated_network {
        namespaces.push(json!({"type": "network"}));
    }
    let mut device_rules = if c.privileged {
        vec![json!({"allow": true, "access": "rwm"})]
    } else {
        vec![json!({"allow": false, "access": "rwm"})]
    };
    device_rules.extend(host.devices.iter().map(|d| {
        json!({"allow": true, "type": d.kind.to_string(), "major": d.major, "minor": d.minor, "access": "rwm"})
    }));
    let devices: Vec<Value> = host
        .devices
        .iter()
        .map(|d| {
            json!({"path": d.path, "type": d.kind.to_string(), "major": d.major, "minor": d.minor,
                   "fileMode": d.mode, "uid": d.uid, "gid": d.gid})
        })
        .collect();
    let mut resources = json!({"devices": device_rules});
    if let Some(limit) = c.memory_bytes {
        resources["memory"] = json!({"limit": limit, "swap": limit});
    }
    if let Some(millis) = c.cpu_millis {
        resources["cpu"] = json!({"quota": millis * CPU_PERIOD_US / 1000, "period": CPU_PERIOD_US});
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "devices": devices,
        "cgroupsPath": host.cgroup,
    });
    if !c.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
    }
    let _ = name;
    linux
}

/// The runtime spec of service `name`.
pub fn runtime_spec(
    name: &str,
    c: &ContainerSpec,
    args: &[String],
    env: &BTreeMap<String, String>,
    image: &ImageConfig,
    host: &HostParts,
) -> Result<Value, SpecError> {
    let mut command = image.entrypoint.clone();
    if args.is_empty() {
        command.extend(image.cmd.iter().cloned());
    } else {
        command.extend(args.iter().cloned());
    }
    if command.is_empty() {
        return Err(SpecError::NothingToRun);
    }
    let (uid, gid) = user(&image.user)?;
    let caps = capabilities(c);
    let cwd = if image.working_dir.is_empty() {
        "/"
    } else {
        image.working_dir.as_str()
    };
    Ok(json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": command,
            "env": environment(image, env),
            "cwd": cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": !c.privileged,
        },
        "root": {"path": "rootfs", "readonly": c.read_only_root},
        "hostname": name,
        "mounts": mounts(c, host)?,
        "linux": linux_section(name, c, host),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::spec::Volume;

    fn container() -> ContainerSpec {
        ContainerSpec {
            image: "r/web:1".into(),
            registry: "r".into(),
            pull_always: false,
            isolated_network: false,
            volumes: vec![Volume {
                name: "data".into(),
                mount_path: "/data".into(),
                read_only: true,
            }],
            devices: vec!["/dev/i2c-1".into()],
            read_only_root: true,
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
            capabilities: vec!["NET_ADMIN".into()],
            privileged: false,
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/httpd".into()],
            cmd: vec!["-f".into()],
            env: vec!["PATH=/bin".into(), "MODE=image".into()],
            user: "1000:1000".into(),
            ..ImageConfig::default()
        }
    }

    fn host() -> HostParts {
        HostParts {
            devices: vec![DeviceNode {
                path: "/dev/i2c-1".into(),
                kind: 'c',
                major: 89,
                minor: 1,
                mode: 0o660,
                uid: 0,
                gid: 0,
            }],
            volume_dirs: BTreeMap::from([(
                "data".to_string(),
                PathBuf::from("/var/lib/basalt-data/volumes/data"),
            )]),
            files: vec![],
            cgroup: "/basalt/web".into(),
        }
    }

    #[test]
    fn spec_carries_limits_devices_volumes_and_the_merged_process() {
        let env = BTreeMap::from([("MODE".to_string(), "service".to_string())]);
        let s = runtime_spec("web", &container(), &["-v".into()], &env, &image(), &host()).unwrap();
        assert_eq!(s["process"]["args"], json!(["/bin/httpd", "-v"]));
        assert_eq!(s["process"]["env"], json!(["PATH=/bin", "MODE=service"]));
        assert_eq!(s["process"]["user"], json!({"uid": 1000, "gid": 1000}));
        assert_eq!(s["root"]["readonly"], json!(true));
        assert_eq!(
            s["linux"]["resources"]["memory"]["limit"],
            json!(64u64 << 20)
        );
        assert_eq!(
            s["linux"]["resources"]["cpu"],
            json!({"quota": 50_000, "period": 100_000})
        );
        assert_eq!(
            s["linux"]["resources"]["devices"][0],
            json!({"allow": false, "access": "rwm"})
        );
        assert_eq!(s["linux"]["resources"]["devices"][1]["major"], json!(89));
        assert_eq!(s["linux"]["devices"][0]["path"], json!("/dev/i2c-1"));
        let caps = s["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")) && !caps.contains(&json!("CAP_SYS_ADMIN")));
        let data = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(data["options"], json!(["rbind", "ro"]));
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(
            !ns.contains(&json!({"type": "network"})),
            "host network by default"
        );
    }

    #[test]
    fn privileged_isolated_and_refusals() {
        let mut c = container();
        c.privileged = true;
        c.isolated_network = true;
        let s = runtime_spec("web", &c, &[], &BTreeMap::new(), &image(), &host()).unwrap();
        assert_eq!(s["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert!(
            s["process"]["capabilities"]["bounding"]
                .as_array()
                .unwrap()
                .contains(&json!("CAP_SYS_ADMIN"))
        );
        assert_eq!(
            s["linux"]["resources"]["devices"][0],
            json!({"allow": true, "access": "rwm"})
        );
        assert!(s["linux"].get("maskedPaths").is_none());
        assert!(
            s["linux"]["namespaces"]
                .as_array()
                .unwrap()
                .contains(&json!({"type": "network"}))
        );
        let named = ImageConfig {
            user: "nobody".into(),
            ..image()
        };
        let e = runtime_spec("web", &c, &[], &BTreeMap::new(), &named, &host()).unwrap_err();
        assert!(e.to_string().contains("\"nobody\" is a name"), "{e}");
        let empty = ImageConfig::default();
        let e = runtime_spec("web", &c, &[], &BTreeMap::new(), &empty, &host()).unwrap_err();
        assert!(matches!(e, SpecError::NothingToRun));
    }
}
