//! What a service is, where services come from (the `ServiceConfig` document) and in which
//! order they start.

use super::ServiceError;
use basalt_config::Config;
use basalt_config::image_ref::ImageReference;
use basalt_config::schema::{NetworkMode, PullPolicy, RestartPolicy, Service};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The name of the container runtime's system service; container services depend on it.
pub const CONTAINERD: &str = "containerd";

/// What a service runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runnable {
    /// A program on the system image, by absolute path.
    Program(String),
    /// An OCI image run as a container through containerd.
    Container(Box<ContainerSpec>),
}

/// A named volume on DATA mounted into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume's name (its directory under the volumes directory).
    pub name: String,
    /// Where it is mounted in the container.
    pub mount_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// How a container service runs, beyond what every service has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The fully qualified image reference (`docker.io/library/nginx:latest`).
    pub image: String,
    /// The registry host the image comes from.
    pub registry: String,
    /// Pull before every start, or only when missing.
    pub pull_always: bool,
    /// A network namespace of its own (loopback only) instead of the host's.
    pub isolated_network: bool,
    /// Named volumes.
    pub volumes: Vec<Volume>,
    /// Host device nodes it may use.
    pub devices: Vec<String>,
    /// The root file system is read-only.
    pub read_only_root: bool,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores.
    pub cpu_millis: Option<u64>,
    /// Capabilities added to the default set (without `CAP_`).
    pub capabilities: Vec<String>,
    /// Every capability and device, no masked paths.
    pub privileged: bool,
}

/// When a service is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Whatever the exit status.
    Always,
    /// After a non-zero exit or a signal.
    OnFailure,
    /// Never.
    Never,
}

/// One supervised program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Unique id.
    pub name: String,
    /// The program or container it runs.
    pub run: Runnable,
    /// Its arguments (for a container: replacing the image's command).
    pub args: Vec<String>,
    /// Extra environment variables (on top of a fixed PATH).
    pub env: BTreeMap<String, String>,
    /// Services that must be healthy before this one starts.
    pub depends_on: Vec<String>,
    /// Restart policy.
    pub restart: Restart,
}

impl ServiceSpec {
    /// The program's path or the container's image, for messages.
    pub fn target(&self) -> &str {
        match &self.run {
            Runnable::Program(p) => p,
            Runnable::Container(c) => &c.image,
        }
    }

    /// The container part, when it is a container service.
    pub fn container(&self) -> Option<&ContainerSpec> {
        match &self.run {
            Runnable::Container(c) => Some(c),
            Runnable::Program(_) => None,
        }
    }
}

/// Timing of the supervisor, the same for every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Delay before the first restart; doubled for each consecutive failure.
    pub backoff_base: Duration,
    /// The longest delay between restarts.
    pub backoff_max: Duration,
    /// Consecutive restarts after which a service that keeps exiting is marked failed.
    pub restart_limit: u32,
    /// A run this long resets the count of consecutive failures.
    pub reset_after: Duration,
    /// A service is healthy (and its dependents start) once it has run this long.
    pub healthy_after: Duration,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            restart_limit: 5,
            reset_after: Duration::from_secs(60),
            healthy_after: Duration::from_millis(500),
            stop_timeout: Duration::from_secs(10),
        }
    }
}

impl Tuning {
    /// The delay before restart number `n` (1-based) of a run of failures.
    pub fn backoff(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }
}

/// The container runtime as [`from_config`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeService<'a> {
    /// The [`CONTAINERD`] system service.
    pub spec: &'a ServiceSpec,
    /// Run it even without container services (its store holds images to manage).
    pub holds_images: bool,
}

/// The services to supervise for a decoded configuration: its `ServiceConfig` document's
/// (none when it has none) and, when the node has a container runtime and one of them is a
/// container or the runtime holds images, the runtime (the [`CONTAINERD`] system service),
/// which every container service then depends on. Checked as a whole: valid programs and
/// images, known dependencies, no cycle. Without a runtime, container services are kept
/// (their start fails with a message that says why) and the others run.
pub fn from_config(
    config: &Config,
    runtime: Option<RuntimeService<'_>>,
) -> Result<Vec<ServiceSpec>, ServiceError> {
    let mut specs = match &config.services {
        Some(services) => services
            .services
            .iter()
            .cloned()
            .map(service_spec)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    if let Some(RuntimeService {
        spec: runtime,
        holds_images,
    }) = runtime
        && (holds_images || specs.iter().any(|s| s.container().is_some()))
    {
        for s in specs.iter_mut().filter(|s| s.container().is_some()) {
            s.depends_on.insert(0, runtime.name.clone());
        }
        specs.insert(0, runtime.clone());
    }
    start_order(&specs)?;
    Ok(specs)
}

fn service_spec(s: Service) -> Result<ServiceSpec, ServiceError> {
    let invalid = |message: String| ServiceError::Invalid {
        name: s.name.clone(),
        message,
    };
    let run = match (&s.command, &s.image) {
        (Some(c), None) => Runnable::Program(c.clone()),
        (None, Some(image)) => {
            Runnable::Container(Box::new(container_spec(&s, image).map_err(invalid)?))
        }
        _ => {
            return Err(invalid(
                "exactly one of command and image must be set".into(),
            ));
        }
    };
    Ok(ServiceSpec {
        name: s.name,
        run,
        args: s.args,
        env: s.env,
        depends_on: s.depends_on,
        restart: match s.restart {
            RestartPolicy::Always => Restart::Always,
            RestartPolicy::OnFailure => Restart::OnFailure,
            RestartPolicy::Never => Restart::Never,
        },
    })
}

fn container_spec(s: &Service, image: &str) -> Result<ContainerSpec, String> {
    let reference = ImageReference::parse(image)?;
    let memory_bytes = s
        .memory
        .as_deref()
        .map(basalt_config::schema::parse_memory)
        .transpose()?;
    let cpu_millis = s
        .cpu
        .as_deref()
        .map(basalt_config::schema::parse_cpu)
        .transpose()?;
    Ok(ContainerSpec {
        image: reference.normalized(),
        registry: reference.registry,
        pull_always: s.pull_policy == PullPolicy::Always,
        isolated_network: s.network == NetworkMode::Isolated,
        volumes: s
            .volumes
            .iter()
            .map(|v| Volume {
                name: v.name.clone(),
                mount_path: v.mount_path.clone(),
                read_only: v.read_only,
            })
            .collect(),
        devices: s.devices.clone(),
        read_only_root: s.read_only_root_filesystem,
        memory_bytes,
        cpu_millis,
        capabilities: s
            .capabilities
            .iter()
            .map(|c| c.strip_prefix("CAP_").unwrap_or(c).to_string())
            .collect(),
        privileged: s.privileged,
    })
}

/// The service names in an order where every service comes after its dependencies (ties by
/// name); refuses duplicate names, relative programs, unknown dependencies and cycles.
pub fn start_order(specs: &[ServiceSpec]) -> Result<Vec<String>, ServiceError> {
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in specs {
        if let Runnable::Program(command) = &s.run
            && !command.starts_with('/')
        {
            return Err(ServiceError::Invalid {
                name: s.name.clone(),
                message: format!("command {command:?} is not an absolute path"),
            });
        }
        if deps
            .insert(&s.name, s.depends_on.iter().map(String::as_str).collect())
            .is_some()
        {
            return Err(ServiceError::Invalid {
                name: s.name.clone(),
                message: "defined twice".into(),
            });
        }
    }
    for s in specs {
        for d in &s.depends_on {
            if !deps.contains_key(d.as_str()) {
                return Err(ServiceError::Invalid {
                    name: s.name.clone(),
                    message: format!("depends on unknown service {d:?}"),
                });
            }
        }
    }
    let mut order = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    while done.len() < deps.len() {
        let ready: Vec<&str> = deps
            .iter()
            .filter(|(n, d)| !done.contains(*n) && d.iter().all(|x| done.contains(x)))
            .map(|(n, _)| *n)
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = deps
                .keys()
                .filter(|n| !done.contains(*n))
                .copied()
                .collect();
            return Err(ServiceError::Invalid {
                name: stuck[0].to_string(),
                message: format!("dependency cycle among {}", stuck.join(", ")),
            });
        }
        for n in ready {
            done.insert(n);
            order.push(n.to_string());
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            run: Runnable::Program("/bin/true".into()),
            args: vec![],
            env: BTreeMap::new(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            restart: Restart::Always,
        }
    }

    #[test]
    fn order_follows_dependencies_and_refuses_cycles() {
        let specs = [
            spec("web", &["db", "cache"]),
            spec("db", &[]),
            spec("cache", &["db"]),
        ];
        assert_eq!(start_order(&specs).unwrap(), ["db", "cache", "web"]);
        let cyclic = [spec("a", &["b"]), spec("b", &["a"]), spec("c", &[])];
        let e = start_order(&cyclic).unwrap_err().to_string();
        assert!(e.contains("dependency cycle among a, b"), "{e}");
        let unknown = [spec("a", &["zz"])];
        let e = start_order(&unknown).unwrap_err().to_string();
        assert!(e.contains("unknown service \"zz\""), "{e}");
    }

    const MACHINE: &str = "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: n1\n";

    fn with_services(services: &str) -> Config {
        Config::from_yaml(&format!(
            "{MACHINE}---\napiVersion: basalt.dev/v1alpha1\nkind: ServiceConfig\nservices:\n{services}"
        ))
        .unwrap()
    }

    #[test]
    fn reads_the_service_config_document() {
        let config = with_services(
            "  - name: web\n    command: /bin/sh\n    args: [-c, 'echo hi']\n    \
             restart: onFailure\n    dependsOn: [db]\n  - name: db\n    command: /bin/sleep\n    \
             args: ['100']\n",
        );
        let specs = from_config(&config, None).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].restart, Restart::OnFailure);
        assert_eq!(specs[0].depends_on, ["db"]);
        let none = Config::from_yaml(MACHINE).unwrap();
        assert!(from_config(&none, None).unwrap().is_empty());
        let image = with_services(
            "  - name: x\n    image: nginx:1\n    memory: 64Mi\n    cpu: 250m\n    dependsOn: [y]\n  \
             - name: y\n    command: /bin/sleep\n",
        );
        let specs = from_config(&image, None).unwrap();
        let c = specs[0].container().unwrap();
        assert_eq!(c.image, "docker.io/library/nginx:1");
        assert_eq!((c.memory_bytes, c.cpu_millis), (Some(64 << 20), Some(250)));
        assert_eq!(specs[0].depends_on, ["y"]);
        let runtime = spec(CONTAINERD, &[]);
        let with = |holds_images| {
            Some(RuntimeService {
                spec: &runtime,
                holds_images,
            })
        };
        let specs = from_config(&image, with(false)).unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [CONTAINERD, "x", "y"]);
        assert_eq!(specs[1].depends_on, [CONTAINERD, "y"]);
        assert_eq!(specs[2].depends_on, Vec::<String>::new());
        // Programs only: the runtime runs while it holds images, not otherwise.
        assert_eq!(from_config(&config, with(false)).unwrap().len(), 2);
        let names: Vec<String> = from_config(&none, with(true))
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, [CONTAINERD]);
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let t = Tuning {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            ..Tuning::default()
        };
        let ms: Vec<u128> = (1..=5).map(|n| t.backoff(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        assert_eq!(t.backoff(200), Duration::from_millis(500));
    }
}
