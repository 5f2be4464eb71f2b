//! The node's image store as the API shows it: list the images with the configured services
//! that use each, remove one, prune the unused ones.
//!
//! Which services use an image is read from the applied configuration ([`image_users`]),
//! so an image is "in use" from the moment a service naming it is configured, before its
//! first pull, and stays so while that service is stopped. Removing an image in use is
//! refused; the decision is a pure function ([`check_removable`], [`prune_candidates`])
//! over the store's names and that map, and the caller holds the node's apply lock so that
//! no configuration lands between the check and the delete.
//!
//! A delete names the digest that was checked: an image re-pulled to another digest in the
//! meantime is not removed. containerd's garbage collection runs before the delete returns
//! and frees the image's content and unpacked layers unless another image or a container
//! still holds them.
//!
//! Limits: sizes count what this node's platform needs (index, manifest, configuration and
//! compressed layers), not the unpacked layers in the snapshotter, and a layer two images
//! share is counted in both.

use super::client::{Containerd, ContainerdError};
use super::image::{self, ImageError};
use super::runtime::oci_arch;
use basalt_config::Config;
use basalt_config::image_ref::ImageReference;
use containerd_client::services::v1::Image;
use containerd_client::types::Descriptor;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Normalized image reference → the configured services that run it (sorted).
pub type ImageUsers = BTreeMap<String, Vec<String>>;

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Its fully qualified reference.
    pub name: String,
    /// The digest of its target (index or manifest).
    pub digest: String,
    /// Bytes of its content for this node's platform; `None` when some is missing.
    pub size: Option<u64>,
    /// When the record was created.
    pub created: Option<SystemTime>,
    /// The configured services that run it.
    pub used_by: Vec<String>,
}

/// Why an image operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The node runs no containers.
    #[error("this node has no container runtime")]
    NoRuntime,
    /// No such image.
    #[error("image {name} is not on this node")]
    NotFound {
        /// The normalized name asked for.
        name: String,
    },
    /// A configured service uses it.
    #[error(
        "image {name} is used by service {services}: remove the service from the configuration first"
    )]
    InUse {
        /// The image.
        name: String,
        /// The services, comma-separated.
        services: String,
    },
    /// containerd failed.
    #[error(transparent)]
    Containerd(#[from] ContainerdError),
    /// A blob of the image is not what it should be.
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The images the services of `config` run, each with the services that run it.
pub fn image_users(config: &Config) -> ImageUsers {
    let mut users = ImageUsers::new();
    let services = config.services.iter().flat_map(|s| s.services.iter());
    for service in services {
        if let Some(image) = &service.image {
            users
                .entry(normalized(image))
                .or_default()
                .push(service.name.clone());
        }
    }
    for names in users.values_mut() {
        names.sort();
    }
    users
}

/// `given` as the store names it (`nginx` → `docker.io/library/nginx:latest`); a string
/// that is not a reference is kept as it is (it then matches nothing, or an exact name).
pub fn normalized(given: &str) -> String {
    ImageReference::parse(given)
        .map(|r| r.normalized())
        .unwrap_or_else(|_| given.to_string())
}

/// Refuses the removal of `name` while a configured service uses it.
pub fn check_removable(name: &str, users: &ImageUsers) -> Result<(), ImagesError> {
    match users.get(name) {
        Some(services) if !services.is_empty() => Err(ImagesError::InUse {
            name: name.to_string(),
            services: services.join(", "),
        }),
        _ => Ok(()),
    }
}

/// The images of `images` (name, creation time) that no configured service uses and, with
/// `created_before`, that were stored before it; their names, sorted. An image whose
/// creation time is unknown counts as old.
pub fn prune_candidates(
    images: &[(String, Option<SystemTime>)],
    users: &ImageUsers,
    created_before: Option<SystemTime>,
) -> Vec<String> {
    let old_enough = |created: &Option<SystemTime>| match (created, created_before) {
        (Some(created), Some(before)) => *created < before,
        _ => true,
    };
    let mut out: Vec<String> = images
        .iter()
        .filter(|(n, created)| check_removable(n, users).is_ok() && old_enough(created))
        .map(|(n, _)| n.clone())
        .collect();
    out.sort();
    out
}

/// Every image in the store, sorted by name.
pub async fn list(c: &Containerd, users: &ImageUsers) -> Result<Vec<StoredImage>, ImagesError> {
    let mut out = Vec::new();
    for record in c.images().await? {
        if let Some(image) = stored(c, record, users).await? {
            out.push(image);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// A containerd image record as the API shows it; `None` for a record without a target.
async fn stored(
    c: &Containerd,
    record: Image,
    users: &ImageUsers,
) -> Result<Option<StoredImage>, ImagesError> {
    let Some(target) = record.target else {
        return Ok(None);
    };
    let size = content_size(c, &record.name, &target).await?;
    Ok(Some(StoredImage {
        used_by: users.get(&record.name).cloned().unwrap_or_default(),
        created: record.created_at.and_then(to_system_time),
        digest: target.digest,
        name: record.name,
        size,
    }))
}

/// Removes the image `given` names (see [`normalized`]) unless a service uses it.
pub async fn remove(
    c: &Containerd,
    given: &str,
    users: &ImageUsers,
) -> Result<StoredImage, ImagesError> {
    let name = normalized(given);
    check_removable(&name, users)?;
    let found = match c.image(&name).await? {
        Some(record) => stored(c, record, users).await?,
        None => None,
    };
    let image = found.ok_or(ImagesError::NotFound { name })?;
    delete(c, &image).await?;
    Ok(image)
}

/// Removes every image no configured service uses; returns them.
pub async fn prune(
    c: &Containerd,
    users: &ImageUsers,
    created_before: Option<SystemTime>,
) -> Result<Vec<StoredImage>, ImagesError> {
    let images = list(c, users).await?;
    let named: Vec<(String, Option<SystemTime>)> =
        images.iter().map(|i| (i.name.clone(), i.created)).collect();
    let chosen = prune_candidates(&named, users, created_before);
    let mut removed = Vec::new();
    for image in images.into_iter().filter(|i| chosen.contains(&i.name)) {
        delete(c, &image).await?;
        removed.push(image);
    }
    Ok(removed)
}

async fn delete(c: &Containerd, image: &StoredImage) -> Result<(), ImagesError> {
    let target = Descriptor {
        digest: image.digest.clone(),
        ..Descriptor::default()
    };
    match c.delete_image(&image.name, &target).await {
        Err(e) if e.is_not_found() => Err(ImagesError::NotFound {
            name: image.name.clone(),
        }),
        other => Ok(other?),
    }
}

/// The bytes of `target` and of what this node's platform needs below it; `None` when a
/// blob is missing (a pull cut short, another platform's image).
async fn content_size(
    c: &Containerd,
    name: &str,
    target: &Descriptor,
) -> Result<Option<u64>, ImagesError> {
    let mut size = u64::try_from(target.size).unwrap_or(0);
    let Some(mut manifest) = read_present(c, &target.digest).await? else {
        return Ok(None);
    };
    if image::is_index(&target.media_type) {
        let chosen = match image::select_manifest(name, &manifest, oci_arch()) {
            Ok(d) => d,
            Err(ImageError::NoPlatform { .. }) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        size += chosen.size;
        let Some(blob) = read_present(c, &chosen.digest).await? else {
            return Ok(None);
        };
        manifest = blob;
    }
    Ok(Some(size + image::manifest_content_size(name, &manifest)?))
}

async fn read_present(c: &Containerd, digest: &str) -> Result<Option<Vec<u8>>, ImagesError> {
    match c.read_blob(digest).await {
        Ok(blob) => Ok(Some(blob)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn to_system_time(t: prost_types::Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(pairs: &[(&str, &[&str])]) -> ImageUsers {
        pairs
            .iter()
            .map(|(i, s)| (i.to_string(), s.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn users_are_keyed_by_the_normalized_reference() {
        use basalt_config::schema::{Service, ServiceConfig};
        let service = |name: &str, image: Option<&str>| Service {
            name: name.into(),
            image: image.map(String::from),
            command: image.is_none().then(|| "/usr/bin/true".into()),
            ..Service::default()
        };
        let config = Config {
            services: Some(ServiceConfig {
                services: vec![
                    service("web", Some("nginx:1")),
                    service("api", Some("docker.io/library/nginx:1")),
                    service("tool", None),
                ],
                ..ServiceConfig::default()
            }),
            ..Config::default()
        };
        assert_eq!(
            image_users(&config),
            users(&[("docker.io/library/nginx:1", &["api", "web"])])
        );
    }

    #[test]
    fn an_image_in_use_is_not_removable_and_not_pruned() {
        let u = users(&[("docker.io/library/nginx:1", &["web"])]);
        let err = check_removable("docker.io/library/nginx:1", &u).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image docker.io/library/nginx:1 is used by service web: remove the service from \
             the configuration first"
        );
        check_removable("docker.io/library/nginx:2", &u).unwrap();
        let t = |s: u64| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s));
        let images = [
            ("docker.io/library/nginx:2".to_string(), t(100)),
            ("docker.io/library/nginx:1".to_string(), t(100)),
            ("lab.example:5000/a/b:1".to_string(), t(500)),
            ("import@sha256:00".to_string(), None),
        ];
        assert_eq!(
            prune_candidates(&images, &u, None),
            [
                "docker.io/library/nginx:2",
                "import@sha256:00",
                "lab.example:5000/a/b:1"
            ]
        );
        assert_eq!(
            prune_candidates(&images, &u, t(300)),
            ["docker.io/library/nginx:2", "import@sha256:00"],
            "an image stored after the cut-off is kept"
        );
    }

    #[test]
    fn short_names_are_normalized_and_bad_ones_kept() {
        assert_eq!(normalized("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalized("Not A Ref"), "Not A Ref");
    }
}
