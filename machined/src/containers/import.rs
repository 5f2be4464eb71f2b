//! Importing an image archive into containerd through its transfer service.
//!
//! The archive's bytes reach containerd over its Streaming API, with the transfer stream
//! protocol: machined opens a stream (`StreamInit` with an id, answered by an
//! acknowledgement), containerd, reading, grants windows of bytes (`WindowUpdate`), machined
//! sends at most that much as `Data` messages and closes its side at the end of the file. A
//! `Transfer` call names that stream as its source (`ImageImportStream`) and the image store
//! as its destination: containerd writes the content, creates an image record for each
//! image of the archive (named from its annotations; an unnamed one as `import@<digest>`),
//! and unpacks it for the node's platform. The names it gave come back as progress events
//! ("saved") on a second stream.
//!
//! containerd creates the image records only after the archive's content is stored, so a
//! broken archive leaves no image behind (its content, unreferenced, is garbage collected).

use super::client::{Containerd, ContainerdError, call, in_namespace, node_image_store};
use super::streams::{ClientStream, is, stream_id};
use containerd_client::services::v1::{TransferOptions, TransferRequest};
use containerd_client::to_any;
use containerd_client::types::Platform;
use containerd_client::types::transfer::{
    Data, ImageImportStream, ImageReference, ImageStore, Progress, WindowUpdate,
};
use prost::Message;
use prost_types::Any;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tonic::Streaming;

/// The name prefix of an image the archive does not name (`import@sha256:...`).
pub const UNNAMED_PREFIX: &str = "import";
/// The most one `Data` message carries (containerd's own sender sends 32 KiB).
const DATA_MESSAGE: usize = 32 << 10;
/// How long the last progress events may trail the end of the transfer.
const PROGRESS_GRACE: Duration = Duration::from_secs(2);

impl Containerd {
    /// Imports the archive at `archive` and unpacks its images for `platform`; answers the
    /// names containerd gave them.
    pub async fn import_archive(
        &self,
        archive: &Path,
        platform: &Platform,
    ) -> Result<Vec<String>, ContainerdError> {
        let object = archive.display().to_string();
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| ContainerdError::Local {
                object: object.clone(),
                message: e.to_string(),
            })?;
        let data = self.open_stream(stream_id("import")).await?;
        let progress = self.open_stream(stream_id("progress")).await?;
        let source = ImageImportStream {
            stream: data.id.clone(),
            media_type: String::new(),
            force_compress: false,
        };
        let destination = ImageStore {
            extra_references: vec![ImageReference {
                name: UNNAMED_PREFIX.into(),
                is_prefix: true,
                allow_overwrite: true,
                add_digest: true,
                skip_named_digest: true,
            }],
            ..node_image_store(platform)
        };
        let request = TransferRequest {
            source: Some(to_any(&source)),
            destination: Some(to_any(&destination)),
            options: Some(TransferOptions {
                progress_stream: progress.id.clone(),
            }),
        };
        let ClientStream {
            tx: progress_tx,
            rx: progress_rx,
            ..
        } = progress;
        let names = Arc::new(Mutex::new(Vec::new()));
        let mut collector = tokio::spawn(collect_saved_names(progress_rx, names.clone()));
        let sender = tokio::spawn(send_file(file, data));
        let result = self
            .client
            .transfer()
            .transfer(in_namespace(request))
            .await
            .map_err(call("Transfer (import)", &object));
        sender.abort();
        drop(progress_tx);
        result?;
        // containerd sent the events before answering; they may still be on their way.
        if tokio::time::timeout(PROGRESS_GRACE, &mut collector)
            .await
            .is_err()
        {
            collector.abort();
        }
        let mut names = names.lock().map(|n| n.clone()).unwrap_or_default();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Sends the file within the windows containerd grants, then closes machined's side.
async fn send_file(mut file: tokio::fs::File, stream: ClientStream) {
    let ClientStream { tx, mut rx, .. } = stream;
    let mut buf = vec![0u8; DATA_MESSAGE];
    let mut window: i64 = 0;
    loop {
        while window <= 0 {
            match rx.message().await {
                Ok(Some(any)) if is::<WindowUpdate>(&any) => {
                    if let Ok(u) = WindowUpdate::decode(any.value.as_slice()) {
                        window += i64::from(u.update);
                    }
                }
                // Anything else is not part of the protocol: ignored, as containerd does.
                Ok(Some(_)) => {}
                // containerd stopped reading: the Transfer call reports why.
                Ok(None) | Err(_) => return,
            }
        }
        let want = usize::try_from(window)
            .unwrap_or(DATA_MESSAGE)
            .min(DATA_MESSAGE);
        let n = match file.read(&mut buf[..want]).await {
            Ok(0) => {
                // The end of the archive: close machined's side, then wait for containerd
                // to close its own. Dropping the receiving side first would reset the
                // stream and lose the messages still on their way.
                drop(tx);
                while let Ok(Some(_)) = rx.message().await {}
                return;
            }
            Ok(n) => n,
            // A read error ends the stream early: containerd then reports a broken archive.
            Err(_) => return,
        };
        let data = to_any(&Data {
            data: buf[..n].to_vec(),
        });
        if tx.send(data).await.is_err() {
            return;
        }
        window -= n as i64;
    }
}

/// Adds the names of the images containerd reports as saved to `names`, until containerd
/// closes the stream.
async fn collect_saved_names(mut rx: Streaming<Any>, names: Arc<Mutex<Vec<String>>>) {
    while let Ok(Some(any)) = rx.message().await {
        if !is::<Progress>(&any) {
            continue;
        }
        if let Ok(p) = Progress::decode(any.value.as_slice())
            && p.event == "saved"
            && let Ok(mut names) = names.lock()
        {
            names.push(p.name);
        }
    }
}
