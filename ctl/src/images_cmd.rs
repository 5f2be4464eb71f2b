//! `basaltctl images`, `basaltctl image rm NAME` and `basaltctl image prune`.

use crate::render::{Rendered, status_err, ts};
use basalt_proto::machine::v1 as pb;
use basaltctl::connect::Clients;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// What `basaltctl image` does.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ImageAction {
    /// Remove one image (refused while a configured service uses it).
    Rm {
        /// The image, as a service names it ("nginx:1.27") or fully qualified.
        name: String,
    },
    /// Remove every image no configured service uses.
    Prune,
}

fn size(i: &pb::ImageInfo) -> String {
    if !i.size_known {
        return "incomplete".to_string();
    }
    let mib = i.size_bytes as f64 / (1024.0 * 1024.0);
    format!("{mib:.1} MiB")
}

fn row(i: &pb::ImageInfo) -> Value {
    json!({"name": i.name, "digest": i.digest,
        "size_bytes": i.size_known.then_some(i.size_bytes),
        "created": ts(&i.created), "used_by": i.used_by})
}

fn table(images: &[pb::ImageInfo]) -> Result<String, std::fmt::Error> {
    let mut text = format!("{:<50} {:<19} {:>11} USED BY", "IMAGE", "DIGEST", "SIZE");
    for i in images {
        let short = i.digest.get(..19).unwrap_or(&i.digest);
        let users = if i.used_by.is_empty() {
            "-".to_string()
        } else {
            i.used_by.join(",")
        };
        write!(text, "\n{:<50} {short:<19} {:>11} {users}", i.name, size(i))?;
    }
    Ok(text)
}

/// ImageList as a table.
pub async fn list(c: &mut Clients) -> anyhow::Result<Rendered> {
    let r = c
        .machine
        .image_list(pb::ImageListRequest {})
        .await
        .map_err(|s| status_err("ImageList", s))?
        .into_inner();
    Ok(Rendered {
        text: table(&r.images)?,
        json: json!({"images": r.images.iter().map(row).collect::<Vec<_>>()}),
    })
}

/// ImageRemove or ImagePrune.
pub async fn act(c: &mut Clients, action: ImageAction) -> anyhow::Result<Rendered> {
    let removed = match action {
        ImageAction::Rm { name } => c
            .machine
            .image_remove(pb::ImageRemoveRequest { name })
            .await
            .map_err(|s| status_err("ImageRemove", s))?
            .into_inner()
            .image
            .into_iter()
            .collect::<Vec<_>>(),
        ImageAction::Prune => {
            c.machine
                .image_prune(pb::ImagePruneRequest {})
                .await
                .map_err(|s| status_err("ImagePrune", s))?
                .into_inner()
                .removed
        }
    };
    let text = if removed.is_empty() {
        "no image removed".to_string()
    } else {
        removed
            .iter()
            .map(|i| format!("removed {} ({})", i.name, i.digest))
            .collect::<Vec<_>>()
            .join("\n")
    };
    Ok(Rendered {
        text,
        json: json!({"removed": removed.iter().map(row).collect::<Vec<_>>()}),
    })
}
