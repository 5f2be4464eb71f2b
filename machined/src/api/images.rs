//! ImageList, ImageRemove and ImagePrune: translations between the API and
//! [`crate::containers::images`] (the handlers in [`crate::api::machine`] call these).

use crate::api::guard::AuditNote;
use crate::containers::images::{ImagesError, StoredImage};
use crate::node::Node;
use basalt_proto::machine::v1 as pb;
use tonic::{Request, Status};

fn status(e: ImagesError) -> Status {
    match &e {
        ImagesError::NoRuntime | ImagesError::InUse { .. } => {
            Status::failed_precondition(e.to_string())
        }
        ImagesError::NotFound { .. } => Status::not_found(e.to_string()),
        ImagesError::Containerd(crate::containers::client::ContainerdError::Unreachable {
            ..
        }) => Status::unavailable(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

fn info(i: StoredImage) -> pb::ImageInfo {
    pb::ImageInfo {
        name: i.name,
        digest: i.digest,
        size_bytes: i.size.unwrap_or(0),
        size_known: i.size.is_some(),
        created: i.created.map(crate::timefmt::to_timestamp),
        used_by: i.used_by,
    }
}

/// ImageList.
pub async fn list(node: &Node) -> Result<pb::ImageListResponse, Status> {
    let images = node.images().await.map_err(status)?;
    Ok(pb::ImageListResponse {
        images: images.into_iter().map(info).collect(),
    })
}

/// ImageRemove.
pub async fn remove(
    node: &Node,
    request: &Request<pb::ImageRemoveRequest>,
) -> Result<pb::ImageRemoveResponse, Status> {
    let name = &request.get_ref().name;
    AuditNote::set(request, format!("image={name}"));
    if name.is_empty() {
        return Err(Status::invalid_argument("ImageRemove: name is empty"));
    }
    let image = node.remove_image(name).await.map_err(status)?;
    AuditNote::set(
        request,
        format!("image={} digest={}", image.name, image.digest),
    );
    Ok(pb::ImageRemoveResponse {
        image: Some(info(image)),
    })
}

/// ImagePrune.
pub async fn prune(
    node: &Node,
    request: &Request<pb::ImagePruneRequest>,
) -> Result<pb::ImagePruneResponse, Status> {
    let removed = node.prune_images().await.map_err(status)?;
    let names: Vec<&str> = removed.iter().map(|i| i.name.as_str()).collect();
    AuditNote::set(request, format!("removed=[{}]", names.join(", ")));
    Ok(pb::ImagePruneResponse {
        removed: removed.into_iter().map(info).collect(),
    })
}
