//! `basaltctl image import FILE`: streaming an OCI image archive (`docker save`,
//! `skopeo copy ... oci-archive:`) into a node (`ImageImport`, resumable).
//!
//! The archive's identity is the sha256 of the whole file. Before each attempt the client
//! asks `ImageImportStatus` how much of that archive the node holds staged, and sends the
//! options and then the rest of the file from there, in messages of 1 MiB. A dropped stream
//! (network error, node busy finishing the cut attempt) is retried with exponential backoff;
//! the node checks the whole file's sha256 before it imports anything.

use crate::connect::AuthedChannel;
use crate::upgrade::{MESSAGE_BYTES, Retry, UpgradeCtlError};
use basalt_proto::machine::v1 as pb;
use basalt_proto::machine::v1::machine_service_client::MachineServiceClient;
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The sha256 (hex) and length of the file at `path`.
pub fn archive_identity(path: &Path) -> Result<(String, u64), UpgradeCtlError> {
    let io = |source| UpgradeCtlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        len += n as u64;
    }
    let sha256 = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sha256, len))
}

/// Sends the options, then the file from `from` on.
async fn send_archive(
    path: PathBuf,
    options: pb::ImageImportOptions,
    from: u64,
    tx: tokio::sync::mpsc::Sender<pb::ImageImportChunk>,
) -> Result<(), std::io::Error> {
    let msg = |m| pb::ImageImportChunk { message: Some(m) };
    let len = options.size;
    if tx
        .send(msg(pb::image_import_chunk::Message::Options(options)))
        .await
        .is_err()
    {
        return Ok(());
    }
    let mut f = tokio::fs::File::open(&path).await?;
    f.seek(std::io::SeekFrom::Start(from)).await?;
    let mut offset = from;
    while offset < len {
        let n = usize::try_from(len - offset)
            .unwrap_or(MESSAGE_BYTES)
            .min(MESSAGE_BYTES);
        let mut data = vec![0u8; n];
        f.read_exact(&mut data).await?;
        let m = msg(pb::image_import_chunk::Message::Data(pb::ImageImportData {
            offset,
            data,
        }));
        if tx.send(m).await.is_err() {
            // The call ended (the node answered or the stream broke).
            return Ok(());
        }
        offset += n as u64;
    }
    Ok(())
}

async fn import_once(
    client: &mut MachineServiceClient<AuthedChannel>,
    path: &Path,
    sha256: &str,
    size: u64,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<pb::ImageImportResponse, UpgradeCtlError> {
    let status = client
        .image_import_status(pb::ImageImportStatusRequest {
            sha256: sha256.to_string(),
        })
        .await
        .map_err(|s| UpgradeCtlError::rpc("ImageImportStatus", s))?
        .into_inner();
    let from = status.staged_bytes.min(size);
    if from > 0 {
        progress(format!(
            "resuming at byte {from} of {size} (the node holds the rest of the start)"
        ));
    }
    progress(format!(
        "sending {} of the archive's {size} bytes",
        size - from
    ));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let options = pb::ImageImportOptions {
        size,
        sha256: sha256.to_string(),
    };
    let sender = tokio::spawn(send_archive(path.to_path_buf(), options, from, tx));
    let result = client
        .image_import(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    // A local read error ends the stream early, which the node reports as an incomplete
    // archive: the read error is the cause worth showing.
    if !sender.is_finished() {
        sender.abort();
    } else if let Ok(Err(source)) = sender.await {
        return Err(UpgradeCtlError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    result
        .map(tonic::Response::into_inner)
        .map_err(|s| UpgradeCtlError::rpc("ImageImport", s))
}

/// Imports the archive at `path` into the node, resuming and retrying; `progress` receives
/// one line per step.
pub async fn import_archive(
    client: &mut MachineServiceClient<AuthedChannel>,
    path: &Path,
    retry: &Retry,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<pb::ImageImportResponse, UpgradeCtlError> {
    let (sha256, size) = archive_identity(path)?;
    let mut delay = retry.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        match import_once(client, path, &sha256, size, progress).await {
            Ok(r) => return Ok(r),
            Err(e) if e.retryable() && attempt < retry.attempts => {
                progress(format!(
                    "attempt {attempt} failed ({e}); retrying in {delay:?}"
                ));
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
            Err(e) if e.retryable() => {
                return Err(UpgradeCtlError::GaveUp {
                    attempts: attempt,
                    last: Box::new(e),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_the_sha256_of_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.tar");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (sha, len) = archive_identity(&p).unwrap();
        let want = ring::digest::digest(&ring::digest::SHA256, &data);
        let want: String = want.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((sha, len), (want, 3_000_000));
        assert!(archive_identity(&dir.path().join("missing")).is_err());
    }
}
