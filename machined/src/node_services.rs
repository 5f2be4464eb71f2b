//! The node's service operations that span several parts: reconciling the supervised
//! services with an applied configuration, and stopping them before a power action.

use crate::node::Node;

impl Node {
    /// Makes the supervised services match the `ServiceConfig` of `config` (an applied
    /// configuration); a problem is logged and published, the running services stay as
    /// they are.
    pub async fn reconcile_services(&self, config: &[u8]) {
        let text = String::from_utf8_lossy(config);
        let result = match crate::services::spec::from_config_text(&text) {
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
