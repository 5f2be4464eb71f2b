//! ImageImport: an image archive streamed into the node over the API, for sites that cannot
//! reach a registry.
//!
//! The steps, in order:
//!
//! 1. [`Node::begin_image_import`]: one import at a time; the archive is staged on DATA
//!    ([`crate::containers::staging`]), resuming what an earlier, cut call left.
//! 2. [`ImageImport::append`]: each data message is appended where the staged part ends.
//! 3. [`Node::finish_image_import`], once the stream ends:
//!    - verify: the staged file is whole and hashes to the announced sha256;
//!    - inspect: every image of the archive is for the node's platform
//!      ([`crate::containers::archive`]); a refused archive is removed;
//!    - start the runtime: a staged archive keeps containerd running, so the services are
//!      reconciled with the applied configuration and machined connects;
//!    - import: containerd stores and unpacks the images ([`crate::containers::import`]);
//!      when containerd fails the staged archive is kept, so a retry sends nothing again;
//!    - name: an image named without a registry (`web:1`) is renamed to the full name a
//!      service's `image:` resolves to (`docker.io/library/web:1`), so that a service
//!      naming it runs it without a pull;
//!    - remove the staged archive, publish one event per image.
//!
//! No image record exists before the whole archive is verified and containerd has stored
//! it, so a service can never start from half an image.

use crate::containers::archive::{self, ArchiveError};
use crate::containers::client::{Containerd, ContainerdError};
use crate::containers::images::{self, ImagesError, StoredImage};
use crate::containers::import::UNNAMED_PREFIX;
use crate::containers::staging::{StagedArchive, StagingError, VerifiedArchive};
use crate::node::Node;
use std::sync::Arc;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Another import holds the staging area.
    #[error("another image import is running on this node; try again when it has finished")]
    Busy,
    /// The archive could not be staged, or is not the one announced.
    #[error(transparent)]
    Staging(#[from] StagingError),
    /// The archive is not an image archive for this node.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The runtime or containerd failed.
    #[error(transparent)]
    Images(#[from] ImagesError),
    /// A blocking step did not finish.
    #[error("image import: {0}")]
    Task(String),
}

impl From<ContainerdError> for ImportError {
    fn from(e: ContainerdError) -> Self {
        ImportError::Images(ImagesError::Containerd(e))
    }
}

/// An import in progress: holds the node's one import slot until it ends.
#[derive(Debug)]
pub struct ImageImport {
    _slot: tokio::sync::OwnedMutexGuard<()>,
    staged: Option<StagedArchive>,
    received: u64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Task(e.to_string()))
}

impl ImageImport {
    /// Bytes of the archive staged.
    pub fn staged(&self) -> u64 {
        self.staged.as_ref().map(StagedArchive::len).unwrap_or(0)
    }

    /// Bytes this call received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Appends one data message.
    pub async fn append(&mut self, offset: u64, data: Vec<u8>) -> Result<(), ImportError> {
        let mut staged = self
            .staged
            .take()
            .ok_or_else(|| ImportError::Task("the staged archive was lost".into()))?;
        let (staged, result) = blocking(move || {
            let r = staged.append(offset, &data).map(|()| data.len() as u64);
            (staged, r)
        })
        .await?;
        self.staged = Some(staged);
        self.received += result?;
        Ok(())
    }

    /// Keeps what was staged (makes it durable) when the call ends early.
    pub async fn keep(mut self) -> Result<(), ImportError> {
        if let Some(staged) = self.staged.take() {
            blocking(move || staged.sync()).await??;
        }
        Ok(())
    }
}

impl Node {
    /// How much of archive `sha256` is staged, and whether an import is running.
    pub fn image_import_status(&self, sha256: &str) -> Result<(u64, bool), ImportError> {
        let runtime = self.containers.as_ref().ok_or(ImagesError::NoRuntime)?;
        let staged = runtime.paths().import_staging().staged_len(sha256);
        Ok((staged, self.image_import.try_lock().is_err()))
    }

    /// Starts importing archive `sha256` of `size` bytes (step 1).
    pub async fn begin_image_import(
        &self,
        sha256: &str,
        size: u64,
    ) -> Result<ImageImport, ImportError> {
        let runtime = self.containers.as_ref().ok_or(ImagesError::NoRuntime)?;
        let slot = self
            .image_import
            .clone()
            .try_lock_owned()
            .map_err(|_| ImportError::Busy)?;
        let staging = runtime.paths().import_staging();
        let sha256 = sha256.to_string();
        let staged = blocking(move || staging.begin(&sha256, size)).await??;
        Ok(ImageImport {
            _slot: slot,
            staged: Some(staged),
            received: 0,
        })
    }

    /// Imports the staged archive once it is whole (step 3).
    pub async fn finish_image_import(
        &self,
        mut import: ImageImport,
    ) -> Result<Vec<StoredImage>, ImportError> {
        let staged = import
            .staged
            .take()
            .ok_or_else(|| ImportError::Task("the staged archive was lost".into()))?;
        let verified = blocking(move || staged.verify()).await??;
        let path = verified.path.clone();
        let arch = crate::containers::runtime::oci_arch();
        let inspected = match blocking(move || archive::inspect(&path, arch)).await? {
            Ok(images) => images,
            Err(e) => {
                let refused = verified.sha256.clone();
                if let Err(r) = blocking(move || verified.remove()).await? {
                    crate::console(
                        &self.state_dir,
                        &format!("refused image archive {refused}: {r}"),
                    );
                }
                return Err(e.into());
            }
        };
        let c = self.runtime_for_import().await?;
        let mut names = c
            .import_archive(
                &verified.path,
                &crate::containers::ContainerRuntime::platform(),
            )
            .await?;
        if names.is_empty() {
            // containerd's progress events did not arrive: the names the archive gives.
            for image in inspected.into_iter().filter(|i| !i.name.is_empty()) {
                if c.image_target(&image.name).await?.is_some() {
                    names.push(image.name);
                }
            }
        }
        let names = full_names(&c, names).await?;
        self.remove_staged(verified).await;
        let users = self
            .applied
            .latest()
            .map(|a| images::image_users(&a.config))
            .unwrap_or_default();
        let mut imported = images::list(&c, &users).await?;
        imported.retain(|i| names.contains(&i.name));
        for image in &imported {
            let message = format!("image {} ({}) imported", image.name, image.digest);
            crate::console(&self.state_dir, &message);
            self.events
                .publish(crate::events::EventKind::Service, "images", message);
        }
        Ok(imported)
    }

    /// containerd, started for the staged archive if it was not running.
    async fn runtime_for_import(&self) -> Result<Containerd, ImportError> {
        let runtime = self
            .containers
            .as_ref()
            .ok_or(ImagesError::NoRuntime)?
            .clone();
        {
            let _no_apply = self.apply_lock.lock().await;
            let config = self
                .applied
                .latest()
                .map(|a| a.config.clone())
                .unwrap_or_default();
            self.reconcile_services(&config).await;
        }
        Ok(runtime.client().await?)
    }

    async fn remove_staged(&self, verified: VerifiedArchive) {
        let sha256 = verified.sha256.clone();
        let problem = match blocking(move || verified.remove()).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        // The images are imported; the file goes with the next import.
        crate::console(
            &self.state_dir,
            &format!("imported image archive {sha256} not removed: {problem}"),
        );
    }
}

/// Renames each imported image whose name lacks a registry to the full name services
/// resolve it to; answers the final names.
async fn full_names(c: &Containerd, names: Vec<String>) -> Result<Vec<String>, ImportError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let full = images::normalized(&name);
        if full == name || name.starts_with(&format!("{UNNAMED_PREFIX}@")) {
            out.push(name);
            continue;
        }
        let Some(target) = c.image_target(&name).await? else {
            continue;
        };
        c.tag_image(&full, &target).await?;
        c.delete_image(&name, &target).await?;
        out.push(full);
    }
    Ok(out)
}

/// The node's one import slot.
pub type ImportSlot = Arc<tokio::sync::Mutex<()>>;
