//! The applied configuration as one watched value.
//!
//! [`crate::node::Node`] decodes a configuration once, when it is applied (or found on STATE
//! at start, or restored when a trial ends), and publishes it here as an
//! `Arc<`[`AppliedConfig`]`>`. Controllers (drift correction, network, time, status, the
//! upgrade engine's trust) hold a [`ConfigWatch`] and read the latest value, or wait for the
//! next one, instead of reading and decoding STATE on every round. Nothing else decodes the
//! stored YAML: there is one reader of the format, `basalt-config`.
//!
//! `None` means no configuration is applied (maintenance mode, or a stored configuration
//! that did not decode at start).

use basalt_config::Config;
use std::sync::Arc;
use tokio::sync::watch;

/// A configuration as applied: its stored version, its bytes, and what they decode to.
#[derive(Debug)]
pub struct AppliedConfig {
    /// Its version in the store.
    pub version: u64,
    /// The decoded, validated configuration.
    pub config: Config,
}

/// The latest applied configuration.
pub type Latest = Option<Arc<AppliedConfig>>;

/// Where the applied configuration is published (held by the node).
#[derive(Debug)]
pub struct ConfigPublisher {
    tx: watch::Sender<Latest>,
}

impl Default for ConfigPublisher {
    fn default() -> Self {
        Self {
            tx: watch::Sender::new(None),
        }
    }
}

impl ConfigPublisher {
    /// Publishes `config`, stored as `version`, to every watcher.
    pub fn publish(&self, version: u64, config: Config) {
        self.tx
            .send_replace(Some(Arc::new(AppliedConfig { version, config })));
    }

    /// A watcher of this publisher.
    pub fn watch(&self) -> ConfigWatch {
        ConfigWatch {
            rx: self.tx.subscribe(),
        }
    }

    /// The latest value.
    pub fn latest(&self) -> Latest {
        self.tx.borrow().clone()
    }
}

/// A controller's view of the applied configuration.
#[derive(Debug, Clone)]
pub struct ConfigWatch {
    rx: watch::Receiver<Latest>,
}

impl ConfigWatch {
    /// A watch that always holds `config` (tests and tools that have no node).
    pub fn fixed(version: u64, config: Config) -> ConfigWatch {
        let publisher = ConfigPublisher::default();
        publisher.publish(version, config);
        // The sender may go: a receiver keeps the last value.
        publisher.watch()
    }

    /// The latest applied configuration, marked as seen.
    pub fn latest(&mut self) -> Latest {
        self.rx.borrow_and_update().clone()
    }

    /// The latest applied configuration, without marking it seen.
    pub fn peek(&self) -> Latest {
        self.rx.borrow().clone()
    }

    /// Waits until a configuration newer than the last one seen is published; `false` when
    /// the publisher is gone (no further change can come).
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(hostname: &str) -> Config {
        Config::from_yaml(&format!(
            "apiVersion: basalt.dev/v1alpha1\nkind: MachineConfig\nhostname: {hostname}\n"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn watchers_see_the_latest_and_wait_for_the_next() {
        let publisher = ConfigPublisher::default();
        let mut watch = publisher.watch();
        assert!(watch.latest().is_none());
        publisher.publish(1, config("a"));
        publisher.publish(2, config("b"));
        assert!(watch.changed().await);
        let latest = watch.latest().unwrap();
        assert_eq!(
            (latest.version, latest.config.machine.hostname.as_str()),
            (2, "b")
        );
        let waiting = tokio::spawn(async move {
            watch.changed().await;
            watch.latest().map(|c| c.version)
        });
        publisher.publish(3, config("c"));
        assert_eq!(waiting.await.unwrap(), Some(3));
    }

    #[test]
    fn a_fixed_watch_keeps_its_value() {
        let watch = ConfigWatch::fixed(7, config("n"));
        assert_eq!(watch.peek().unwrap().version, 7);
    }
}
