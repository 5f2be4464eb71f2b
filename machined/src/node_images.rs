//! The node's container images (ImageList, ImageRemove, ImagePrune): the image store of
//! [`crate::containers::images`] checked against the services of the applied
//! configuration. A removal holds the apply lock, so no configuration naming the image can
//! land between the check and the delete; each removal is published as an event.
//!
//! [`Node::collect_unused_images`] is the image collector: it looks at the fill level of the
//! file system under containerd's root (DATA on a node) at a fixed interval and, once it is
//! at least `ServiceConfig.imageGC.highPercent` full, prunes the unused images stored more
//! than a grace period ([`COLLECTOR_GRACE`] by default) ago (so an image imported for a configuration still to be
//! applied is not collected at once). It connects to containerd only then, so an idle node
//! with plenty of space costs one `statvfs` per interval.

use crate::containers::images::{self, ImageUsers, ImagesError, StoredImage};
use crate::node::Node;
use basalt_config::schema::DEFAULT_IMAGE_GC_HIGH_PERCENT;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The default of how long a newly stored image is safe from the collector: time to apply
/// the configuration that uses an image just imported.
pub const COLLECTOR_GRACE: Duration = Duration::from_secs(15 * 60);

/// Percent of a file system's blocks in use (blocks reserved for root count as used).
pub fn used_percent(total_blocks: u64, available_blocks: u64) -> u8 {
    if total_blocks == 0 {
        return 100;
    }
    let used = total_blocks.saturating_sub(available_blocks);
    // At most 100 by construction.
    u8::try_from(used.saturating_mul(100).div_ceil(total_blocks)).unwrap_or(100)
}

fn fill_level(path: &Path) -> std::io::Result<u8> {
    let s = rustix::fs::statvfs(path)?;
    Ok(used_percent(s.f_blocks, s.f_bavail))
}

impl Node {
    /// The images the applied configuration's services run.
    fn image_users(&self) -> ImageUsers {
        self.applied
            .latest()
            .map(|a| images::image_users(&a.config))
            .unwrap_or_default()
    }

    /// A connection to containerd; `None` when its content store is empty (containerd then
    /// need not run, and there is no image to list or remove).
    async fn containerd(
        &self,
    ) -> Result<Option<crate::containers::client::Containerd>, ImagesError> {
        let runtime = self.containers.as_ref().ok_or(ImagesError::NoRuntime)?;
        if !runtime.paths().has_stored_content() {
            return Ok(None);
        }
        Ok(Some(runtime.client().await?))
    }

    /// Every image in the store, with the services that use it.
    pub async fn images(&self) -> Result<Vec<StoredImage>, ImagesError> {
        match self.containerd().await? {
            Some(c) => images::list(&c, &self.image_users()).await,
            None => Ok(Vec::new()),
        }
    }

    /// Removes the image `name` names unless a configured service uses it.
    pub async fn remove_image(&self, name: &str) -> Result<StoredImage, ImagesError> {
        let c = self.containerd().await?;
        let _no_apply = self.apply_lock.lock().await;
        let users = self.image_users();
        let Some(c) = c else {
            let name = images::normalized(name);
            images::check_removable(&name, &users)?;
            return Err(ImagesError::NotFound { name });
        };
        let removed = images::remove(&c, name, &users).await?;
        self.publish_removals(std::slice::from_ref(&removed));
        Ok(removed)
    }

    /// Removes every image no configured service uses.
    pub async fn prune_images(&self) -> Result<Vec<StoredImage>, ImagesError> {
        self.prune_unused(None).await
    }

    /// Removes every image no configured service uses that was stored before
    /// `created_before` (every such image with `None`).
    async fn prune_unused(
        &self,
        created_before: Option<SystemTime>,
    ) -> Result<Vec<StoredImage>, ImagesError> {
        let Some(c) = self.containerd().await? else {
            return Ok(Vec::new());
        };
        let _no_apply = self.apply_lock.lock().await;
        let removed = images::prune(&c, &self.image_users(), created_before).await?;
        self.publish_removals(&removed);
        Ok(removed)
    }

    fn publish_removals(&self, removed: &[StoredImage]) {
        for image in removed {
            let message = format!("image {} ({}) removed", image.name, image.digest);
            crate::console(&self.state_dir, &message);
            self.events
                .publish(crate::events::EventKind::Service, "images", message);
        }
    }

    /// The image collector (see the module docs): runs until machined ends; every
    /// `interval` checks the fill level and prunes when it is at or over the mark. A
    /// problem is logged when it first appears, not at every round.
    pub async fn collect_unused_images(self: Arc<Self>, interval: Duration, grace: Duration) {
        let Some(root) = self.containers.as_ref().map(|c| c.paths().root.clone()) else {
            return;
        };
        let mut last_problem = String::new();
        loop {
            tokio::time::sleep(interval).await;
            let high = self
                .applied
                .latest()
                .and_then(|a| {
                    a.config
                        .services
                        .as_ref()
                        .map(|s| s.image_gc_high_percent())
                })
                .unwrap_or(DEFAULT_IMAGE_GC_HIGH_PERCENT);
            let level = match fill_level(&root) {
                Ok(level) => level,
                // containerd has not created its root yet: nothing to collect.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.log_problem(
                        &mut last_problem,
                        format!("image collector: {}: {e}", root.display()),
                    );
                    continue;
                }
            };
            if level < high {
                continue;
            }
            let created_before = SystemTime::now().checked_sub(grace);
            match self.prune_unused(created_before).await {
                Ok(removed) if !removed.is_empty() => crate::console(
                    &self.state_dir,
                    &format!(
                        "image collector: {} was {level}% full (imageGC.highPercent {high}): {} unused image(s) removed",
                        root.display(),
                        removed.len()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.log_problem(&mut last_problem, format!("image collector: {e}")),
            }
        }
    }

    fn log_problem(&self, last: &mut String, message: String) {
        if *last != message {
            crate::console(&self.state_dir, &message);
            *last = message;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::used_percent;

    #[test]
    fn fill_levels_round_up() {
        assert_eq!(used_percent(1000, 1000), 0);
        assert_eq!(used_percent(1000, 999), 1);
        assert_eq!(used_percent(1000, 150), 85);
        assert_eq!(used_percent(1000, 0), 100);
        assert_eq!(used_percent(0, 0), 100);
        assert_eq!(
            used_percent(10, 20),
            0,
            "more available than total: none used"
        );
    }
}
