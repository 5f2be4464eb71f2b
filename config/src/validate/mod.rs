//! Validation of a decoded [`Config`]: every error and every warning, at once.
//!
//! Decoding ([`crate::decode`]) guarantees the shape; this module checks the values. It never
//! stops at the first problem: each rule adds an [`Issue`] and moves on, so a user fixing a
//! config sees everything in one round trip.
//!
//! - An **error** makes the config unusable: machined refuses to apply it, basalt-flash refuses
//!   to write it.
//! - A **warning** is applied but probably not what was meant (no time servers, DHCP and
//!   static addresses on one interface, no API certificates so the node stays in maintenance
//!   mode, ...).
//!
//! Issue paths name the document kind, then fields and 0-based list indexes, the same way JSON
//! patch paths do: `NetworkConfig.interfaces[0].addresses[1]`, `MachineConfig.sysctls.vm.x`.
//!
//! Limits: no X.509 validation (certificate chains, expiry, key/certificate match), no
//! reachability checks, and no check against the board a config will run on; those belong to
//! the tools that have the board or the network at hand.

mod machine;
mod network;
mod rules;
mod service;
mod update;

pub use service::{CAPABILITIES, RESERVED_SERVICE_NAMES};

use std::fmt;

use serde::Serialize;

use crate::schema::Config;

/// One problem found by validation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Issue {
    /// Where: the document kind, then fields and list indexes
    /// (`NetworkConfig.interfaces[0].mtu`).
    pub path: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// The outcome of [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Validation {
    /// Problems that make the config unusable, in document order.
    pub errors: Vec<Issue>,
    /// Problems worth a human's attention that do not block the config, in document order.
    pub warnings: Vec<Issue>,
}

impl Validation {
    /// Whether there are no errors (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One line per issue: `error: <path>: <message>`, then `warning: ...`.
impl fmt::Display for Validation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for issue in &self.errors {
            writeln!(f, "error: {issue}")?;
        }
        for issue in &self.warnings {
            writeln!(f, "warning: {issue}")?;
        }
        Ok(())
    }
}

/// Collects issues while the per-kind validators walk the config.
#[derive(Default)]
pub(crate) struct Checker {
    out: Validation,
}

impl Checker {
    fn error(&mut self, path: &str, message: impl Into<String>) {
        self.out.errors.push(Issue {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.out.warnings.push(Issue {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Records `Err` as an error at `path`; passes `Ok` values through.
    fn check<T>(&mut self, path: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }
}

impl Config {
    /// Checks every value of the config and returns all errors and warnings (see the
    /// [module docs](crate::validate)).
    pub fn validate(&self) -> Validation {
        let mut checker = Checker::default();
        machine::check(&mut checker, &self.machine);
        if let Some(network) = &self.network {
            network::check(&mut checker, network);
        }
        if let Some(update) = &self.update {
            update::check(&mut checker, update);
        }
        if let Some(services) = &self.services {
            service::check(&mut checker, services);
        }
        checker.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_at_once() {
        let text = r#"
apiVersion: basalt.dev/v1alpha1
kind: MachineConfig
hostname: -bad_host-
sysctls:
  swappiness: "10"
files:
  - path: /usr/bin/evil
    content: x
    mode: 0o17777
timeServers: [pool.ntp.org]
---
apiVersion: basalt.dev/v1alpha1
kind: NetworkConfig
interfaces:
  - name: eth0
    addresses: [10.0.0.5/24, 10.0.0.300/24]
    mtu: 40
    vlans:
      - id: 5000
  - name: eth0
    routes:
      - network: 10.1.0.1/16
        gateway: fe80::1
---
apiVersion: basalt.dev/v1alpha1
kind: UpdateConfig
channel: ftp://updates.example.com
tries: 12
"#;
        let config = Config::from_yaml(text).expect("decodes");
        let validation = config.validate();
        let paths: Vec<&str> = validation.errors.iter().map(|i| i.path.as_str()).collect();
        for expected in [
            "MachineConfig.hostname",
            "MachineConfig.sysctls.swappiness",
            "MachineConfig.files[0].path",
            "MachineConfig.files[0].mode",
            "NetworkConfig.interfaces[0].addresses[1]",
            "NetworkConfig.interfaces[0].mtu",
            "NetworkConfig.interfaces[0].vlans[0].id",
            "NetworkConfig.interfaces[1].name",
            "NetworkConfig.interfaces[1].routes[0].network",
            "NetworkConfig.interfaces[1].routes[0].gateway",
            "UpdateConfig.channel",
            "UpdateConfig.trustedSigningKeys",
            "UpdateConfig.tries",
        ] {
            assert!(
                paths.contains(&expected),
                "missing {expected} in\n{validation}"
            );
        }
        assert!(!validation.is_ok());
        let shown = validation.to_string();
        assert!(
            shown.contains("error: NetworkConfig.interfaces[0].mtu: MTU 40 is outside 68..=65535"),
            "{shown}"
        );
    }

    #[test]
    fn minimal_config_has_warnings_only() {
        let config = Config::from_yaml(
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: edge-1\n",
        )
        .expect("decodes");
        let validation = config.validate();
        assert!(validation.is_ok(), "{validation}");
        let paths: Vec<&str> = validation
            .warnings
            .iter()
            .map(|i| i.path.as_str())
            .collect();
        assert_eq!(paths, ["MachineConfig.api", "MachineConfig.timeServers"]);
    }
}
