//! The node's operations that span several parts: reconciling the supervised services
//! with an applied configuration, stopping them before a power action, and Reset.

use crate::node::{Node, NodeError};

impl Node {
    /// The services to supervise for `config`: its `ServiceConfig` and, when it has a
    /// container service and the node a container runtime, containerd (whose configuration
    /// and registry files are written here).
    pub fn service_specs(
        &self,
        config: &basalt_config::Config,
    ) -> Result<Vec<crate::services::ServiceSpec>, crate::services::ServiceError> {
        let runtime = match &self.containers {
            Some(rt) => {
                let registries = config
                    .services
                    .as_ref()
                    .map(|s| s.registries.as_slice())
                    .unwrap_or_default();
                rt.paths()
                    .prepare()
                    .and_then(|()| rt.set_registries(registries))
                    .map_err(|e| crate::services::ServiceError::Config(e.to_string()))?;
                Some((
                    rt.paths().service(registries),
                    rt.paths().holds_images_or_imports(),
                ))
            }
            None => None,
        };
        let runtime =
            runtime.as_ref().map(
                |(spec, holds_images)| crate::services::spec::RuntimeService {
                    spec,
                    holds_images: *holds_images,
                },
            );
        crate::services::spec::from_config(config, runtime)
    }

    /// Makes the supervised services match the `ServiceConfig` of `config` (an applied
    /// configuration); a problem is logged and published, the running services stay as
    /// they are.
    pub async fn reconcile_services(&self, config: &basalt_config::Config) {
        let result = match self.service_specs(config) {
            Ok(specs) => self.services.reconcile(specs).await,
            Err(e) => Err(e),
        };
        let message = match result {
            Ok((stopped, started)) if stopped.is_empty() && started.is_empty() => return,
            Ok((stopped, started)) => format!(
                "services reconciled: stopped [{}], started [{}]",
                stopped.join(", "),
                started.join(", ")
            ),
            Err(e) => format!("services not changed: {e}"),
        };
        crate::console(&self.state_dir, &message);
        self.events
            .publish(crate::events::EventKind::Config, "services", message);
    }

    /// The services the node is healthy only with: those the applied configuration marks
    /// `critical`, and containerd while it is supervised.
    pub fn critical_services(&self) -> Vec<crate::node_boot::CriticalService> {
        use crate::services::spec::CONTAINERD;
        let mut names: Vec<String> = self
            .applied
            .latest()
            .map(|a| {
                a.config
                    .services
                    .iter()
                    .flat_map(|s| s.services.iter())
                    .filter(|s| s.critical)
                    .map(|s| s.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        if self.services.status(CONTAINERD).is_ok() {
            names.insert(0, CONTAINERD.to_string());
        }
        names
            .into_iter()
            .map(|name| match self.services.status(&name) {
                Ok(s) => crate::node_boot::CriticalService {
                    running: s.state == crate::services::ServiceState::Running && s.healthy,
                    waiting_for_runtime: s.waiting_for_runtime,
                    detail: if s.message.is_empty() {
                        s.state.name().to_string()
                    } else {
                        format!("{}: {}", s.state.name(), s.message)
                    },
                    name,
                },
                Err(_) => crate::node_boot::CriticalService {
                    name,
                    running: false,
                    waiting_for_runtime: false,
                    detail: "not supervised".into(),
                },
            })
            .collect()
    }

    /// Stops every service in reverse dependency order before a reboot or power-off. With
    /// `force` a service that does not stop is left behind silently; without it, it is
    /// logged (the power action goes on either way: it was asked for).
    pub async fn stop_services(&self, force: bool) {
        let stuck = self.services.shutdown().await;
        if !stuck.is_empty() && !force {
            crate::console(
                &self.state_dir,
                &format!("services did not stop in time: {}", stuck.join(", ")),
            );
        }
    }
}

/// What a reset wipes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetRequest {
    /// Wipe STATE (configuration, secrets, audit log, upgrade progress).
    pub wipe_state: bool,
    /// Wipe DATA.
    pub wipe_data: bool,
    /// Power off afterwards instead of rebooting.
    pub shutdown: bool,
}

impl Node {
    /// Resets the node: publishes the event, stops the services, wipes DATA and/or STATE
    /// through [`crate::host::HostActions`], then reboots (or powers off). Returns a summary.
    pub async fn reset(&self, r: ResetRequest) -> Result<String, NodeError> {
        let parts: Vec<&str> = [(r.wipe_state, "STATE"), (r.wipe_data, "DATA")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, p)| *p)
            .collect();
        if parts.is_empty() {
            return Err(NodeError::InvalidRequest(
                "reset: wipe_state and/or wipe_data must be set".into(),
            ));
        }
        let then = if r.shutdown {
            "powering off"
        } else {
            "rebooting"
        };
        let mut message = format!("wiping {}, then {then}", parts.join(" and "));
        if self.host.is_simulated() {
            message.push_str(
                " (dev mode: the state directory stands in for STATE; power action recorded)",
            );
        }
        self.events.publish(
            crate::events::EventKind::Power,
            "node",
            format!("reset: {message}"),
        );
        crate::console(&self.state_dir, &format!("reset: {message}"));
        self.stop_services(true).await;
        // DATA first: STATE holds the audit log and the configuration, the last things a
        // half-done reset should lose.
        for part in parts.iter().rev() {
            self.host.wipe(part)?;
        }
        if r.shutdown {
            self.host.shutdown()?;
        } else {
            self.host.reboot()?;
        }
        Ok(message)
    }
}
