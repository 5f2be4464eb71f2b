//! What a service is, where services come from (the `ServiceConfig` document) and in which
//! order they start.

use super::ServiceError;
use basalt_config::Config;
use basalt_config::schema::RestartPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

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
    /// Absolute path of the program.
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment variables (on top of a fixed PATH).
    pub env: BTreeMap<String, String>,
    /// Services that must be healthy before this one starts.
    pub depends_on: Vec<String>,
    /// Restart policy.
    pub restart: Restart,
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

/// The services of a decoded configuration's `ServiceConfig` document (none when it has
/// none), checked as a whole: valid programs, known dependencies, no cycle.
pub fn from_config(config: &Config) -> Result<Vec<ServiceSpec>, ServiceError> {
    let Some(services) = &config.services else {
        return Ok(Vec::new());
    };
    let specs = services
        .services
        .iter()
        .cloned()
        .map(|s| {
            let command = match (s.command, s.image) {
                (Some(c), None) => c,
                (None, Some(image)) => {
                    return Err(ServiceError::Invalid {
                        name: s.name,
                        message: format!(
                            "image {image}: container images are not supported yet (no container runtime on the node)"
                        ),
                    });
                }
                _ => {
                    return Err(ServiceError::Invalid {
                        name: s.name,
                        message: "exactly one of command and image must be set".into(),
                    });
                }
            };
            Ok(ServiceSpec {
                name: s.name,
                command,
                args: s.args,
                env: s.env,
                depends_on: s.depends_on,
                restart: match s.restart {
                    RestartPolicy::Always => Restart::Always,
                    RestartPolicy::OnFailure => Restart::OnFailure,
                    RestartPolicy::Never => Restart::Never,
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    start_order(&specs)?;
    Ok(specs)
}

/// The service names in an order where every service comes after its dependencies (ties by
/// name); refuses duplicate names, relative programs, unknown dependencies and cycles.
pub fn start_order(specs: &[ServiceSpec]) -> Result<Vec<String>, ServiceError> {
    let mut deps: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for s in specs {
        if !s.command.starts_with('/') {
            return Err(ServiceError::Invalid {
                name: s.name.clone(),
                message: format!("command {:?} is not an absolute path", s.command),
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
            command: "/bin/true".into(),
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
        let specs = from_config(&config).unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].restart, Restart::OnFailure);
        assert_eq!(specs[0].depends_on, ["db"]);
        let none = Config::from_yaml(MACHINE).unwrap();
        assert!(from_config(&none).unwrap().is_empty());
        let image = with_services("  - name: x\n    image: nginx:1\n");
        let e = from_config(&image).unwrap_err().to_string();
        assert!(e.contains("not supported yet"), "{e}");
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
