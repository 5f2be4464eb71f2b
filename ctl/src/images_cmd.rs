//! `basaltctl images`, `basaltctl image rm NAME`, `basaltctl image prune` and
//! `basaltctl image import FILE`.

use crate::reply::{Rendered, status_err, ts};
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
    /// Import an OCI image archive (`docker save`, `skopeo copy ... oci-archive:FILE`)
    /// into the node, for sites without a registry; a cut transfer resumes where the node
    /// is.
    Import {
        /// The archive file.
        file: std::path::PathBuf,
        /// Attempts when the stream drops (each resumes where the node is).
        #[arg(long, default_value_t = 5)]
        attempts: u32,
    },
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

/// ImageImport, reporting its steps on standard error.
async fn import(
    c: &mut Clients,
    file: &std::path::Path,
    attempts: u32,
) -> anyhow::Result<Rendered> {
    let retry = basaltctl::upgrade::Retry {
        attempts: attempts.max(1),
        ..basaltctl::upgrade::Retry::default()
    };
    let mut report = |line: String| eprintln!("basaltctl: image import: {line}");
    let r =
        basaltctl::image_import::import_archive(&mut c.machine, file, &retry, &mut report).await?;
    let text = r
        .images
        .iter()
        .map(|i| format!("imported {} ({})", i.name, i.digest))
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Rendered {
        text,
        json: json!({"imported": r.images.iter().map(row).collect::<Vec<_>>(),
            "bytes_received": r.bytes_received}),
    })
}

/// ImageRemove, ImagePrune or ImageImport.
pub async fn act(c: &mut Clients, action: ImageAction) -> anyhow::Result<Rendered> {
    let removed = match action {
        ImageAction::Import { file, attempts } => return import(c, &file, attempts).await,
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
