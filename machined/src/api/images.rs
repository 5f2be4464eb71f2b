//! ImageList, ImageRemove, ImagePrune, ImageImport and ImageImportStatus: translations
//! between the API and [`crate::containers::images`] and [`crate::node_image_import`] (the
//! handlers in [`crate::api::machine`] call these).

use crate::api::guard::AuditNote;
use crate::containers::archive::ArchiveError;
use crate::containers::images::{ImagesError, StoredImage};
use crate::containers::staging::StagingError;
use crate::node::Node;
use crate::node_image_import::ImportError;
use basalt_proto::machine::v1 as pb;
use tokio_stream::StreamExt;
use tonic::{Request, Status, Streaming};

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

fn import_error(e: ImportError) -> Status {
    match e {
        // Retried by clients, like a busy upgrade.
        ImportError::Busy => Status::aborted(e.to_string()),
        ImportError::Images(e) => status(e),
        ImportError::Staging(StagingError::NoRoom { .. }) => {
            Status::resource_exhausted(e.to_string())
        }
        ImportError::Staging(StagingError::Incomplete { .. }) => Status::aborted(e.to_string()),
        ImportError::Staging(StagingError::Io { .. })
        | ImportError::Archive(ArchiveError::Io { .. })
        | ImportError::Task(_) => Status::internal(e.to_string()),
        ImportError::Staging(_) | ImportError::Archive(_) => {
            Status::invalid_argument(e.to_string())
        }
    }
}

/// ImageImportStatus.
pub fn import_status(
    node: &Node,
    request: &Request<pb::ImageImportStatusRequest>,
) -> Result<pb::ImageImportStatusResponse, Status> {
    let (staged_bytes, running) = node
        .image_import_status(&request.get_ref().sha256)
        .map_err(import_error)?;
    Ok(pb::ImageImportStatusResponse {
        staged_bytes,
        running,
    })
}

/// How long an ImageImport stream may stay silent before the node gives up on it (and
/// frees the import slot for a retry).
const IMPORT_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// ImageImport: the options, then data appended to the staged archive, then the import.
pub async fn import(
    node: &std::sync::Arc<Node>,
    request: Request<Streaming<pb::ImageImportChunk>>,
) -> Result<pb::ImageImportResponse, Status> {
    let note = AuditNote::of(&request);
    let note_set = |s: String| {
        if let Some(n) = &note {
            n.replace(s);
        }
    };
    let mut stream = request.into_inner();
    let first = stream.next().await.ok_or_else(|| {
        Status::invalid_argument("empty ImageImport stream: send the options first")
    })??;
    let Some(pb::image_import_chunk::Message::Options(options)) = first.message else {
        return Err(Status::invalid_argument(
            "the first ImageImport message must carry the options",
        ));
    };
    // Not checked yet: shown at most 64 characters long.
    let sha_shown: String = options.sha256.chars().take(64).collect();
    let archive = format!("archive={sha_shown} size={}", options.size);
    note_set(archive.clone());
    let mut import = node
        .begin_image_import(&options.sha256, options.size)
        .await
        .map_err(import_error)?;
    let resumed_at = import.staged();
    loop {
        let message = match tokio::time::timeout(IMPORT_IDLE, stream.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => {
                note_set(format!(
                    "{archive}: no data for {} s at {} bytes",
                    IMPORT_IDLE.as_secs(),
                    import.staged()
                ));
                import.keep().await.map_err(import_error)?;
                return Err(Status::deadline_exceeded(format!(
                    "ImageImport: no data for {} s; the part received is kept (resume)",
                    IMPORT_IDLE.as_secs()
                )));
            }
        };
        let data = match message {
            Ok(pb::ImageImportChunk {
                message: Some(pb::image_import_chunk::Message::Data(d)),
            }) => d,
            Ok(_) => {
                // The refusal is what the client needs; a failed sync only costs a resend.
                let _kept = import.keep().await;
                return Err(Status::invalid_argument(
                    "only the first ImageImport message may carry options",
                ));
            }
            Err(cut) => {
                note_set(format!(
                    "{archive}: stream cut at {} bytes (from {resumed_at})",
                    import.staged()
                ));
                import.keep().await.map_err(import_error)?;
                return Err(cut);
            }
        };
        if let Err(e) = import.append(data.offset, data.data).await {
            note_set(format!("{archive}: {e}"));
            // The refusal is what the client needs; a failed sync only costs a resend.
            let _kept = import.keep().await;
            return Err(import_error(e));
        }
    }
    let received = import.received();
    // The import runs to its end even when the client goes away meanwhile: cancelling it
    // half way would only make the retry do it again.
    let finishing = node.clone();
    let imported = tokio::spawn(async move { finishing.finish_image_import(import).await })
        .await
        .map_err(|e| Status::internal(format!("ImageImport: {e}")))?
        .map_err(|e| {
            note_set(format!("{archive}: {e}"));
            import_error(e)
        })?;
    let names: Vec<&str> = imported.iter().map(|i| i.name.as_str()).collect();
    note_set(format!(
        "{archive} resumed_at={resumed_at} imported=[{}]",
        names.join(", ")
    ));
    Ok(pb::ImageImportResponse {
        images: imported.into_iter().map(info).collect(),
        bytes_received: received,
    })
}
