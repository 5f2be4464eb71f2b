//! `basaltctl upgrade`: pushing a signed update bundle to a node (`Upgrade`, resumable),
//! or asking the node to fetch one (`UpgradeFromUrl`).
//!
//! Push: the bundle's header length is read from its prelude (bytes 12–15) and its identity
//! is the sha256 of the header, exactly as the node computes it. Before each attempt the
//! client asks `UpgradeStatus`; when the node recorded progress for the same identity, the
//! client sends the header and then continues at the node's resume offset. Then it sends the
//! header to `UpgradePlan`: the node checks it (trust, board, version: a refusal comes
//! before any payload is sent) and lists the byte ranges its booted slot does not hold;
//! only those are sent, and the node copies the other chunks from its booted slot
//! (`reuse_booted_slot`). A node without `UpgradePlan` gets the whole payload; so does
//! every node with `--send-all`. Data goes in messages of 1 MiB. A dropped stream (network error,
//! node busy finishing the cut attempt) is retried with exponential backoff.
//!
//! The client does not verify the bundle: the node does, against the keys it trusts.

use basalt_proto::machine::v1 as pb;
use basalt_proto::machine::v1::machine_service_client::MachineServiceClient;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::Code;

use crate::connect::AuthedChannel;

/// How often a push reports how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Bytes per `UpgradeData` message.
pub const MESSAGE_BYTES: usize = 1 << 20;

/// A failed upgrade as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeCtlError {
    /// The file (bundle, image archive) cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a bundle.
    #[error("bundle {path}: {reason}")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The node answered with an error.
    #[error("{rpc}: {code:?}: {message}")]
    Rpc {
        /// The RPC.
        rpc: &'static str,
        /// The status code.
        code: Code,
        /// The node's message.
        message: String,
    },
    /// Retries ran out.
    #[error("giving up after {attempts} attempts; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: Box<UpgradeCtlError>,
    },
    /// The progress stream ended without a result.
    #[error("UpgradeFromUrl: the node closed the progress stream without a result")]
    NoResult,
}

impl UpgradeCtlError {
    pub(crate) fn rpc(rpc: &'static str, s: tonic::Status) -> Self {
        UpgradeCtlError::Rpc {
            rpc,
            code: s.code(),
            message: s.message().to_string(),
        }
    }

    /// Whether another attempt may succeed: transport trouble, or the node still busy
    /// with the attempt that was cut.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            UpgradeCtlError::Rpc {
                code: Code::Unavailable
                    | Code::Unknown
                    | Code::Cancelled
                    | Code::Aborted
                    | Code::DeadlineExceeded,
                ..
            }
        )
    }
}

/// Retry policy of a push.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts in all.
    pub attempts: u32,
    /// Delay before the first retry; doubled each time.
    pub backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// The header length and identity (sha256 hex of the header) of a bundle file, and its
/// length.
pub fn bundle_identity(path: &Path) -> Result<(u64, String, u64), UpgradeCtlError> {
    use std::io::Read;
    let io = |source| UpgradeCtlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let len = f.metadata().map_err(io)?.len();
    let mut prelude = [0u8; 64];
    f.read_exact(&mut prelude)
        .map_err(|e| UpgradeCtlError::NotABundle {
            path: path.to_path_buf(),
            reason: format!("shorter than the 64-byte prelude ({e})"),
        })?;
    if &prelude[..8] != b"BASALTB1" {
        return Err(UpgradeCtlError::NotABundle {
            path: path.to_path_buf(),
            reason: "no BASALTB1 magic at offset 0".into(),
        });
    }
    let header_len = u64::from(u32::from_le_bytes([
        prelude[12],
        prelude[13],
        prelude[14],
        prelude[15],
    ]));
    if header_len < 64 || header_len > len {
        return Err(UpgradeCtlError::NotABundle {
            path: path.to_path_buf(),
            reason: format!("header length {header_len} does not fit the file ({len} bytes)"),
        });
    }
    let mut header = vec![0u8; header_len as usize];
    header[..64].copy_from_slice(&prelude);
    f.read_exact(&mut header[64..]).map_err(io)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &header);
    let identity = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok((header_len, identity, len))
}

/// Bytes `range` of the file at `path`.
fn read_range(path: &Path, range: Range<u64>) -> Result<Vec<u8>, UpgradeCtlError> {
    use std::io::{Read, Seek};
    let io = |source| UpgradeCtlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    f.seek(std::io::SeekFrom::Start(range.start)).map_err(io)?;
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(buf)
}

/// Sends the byte `ranges` of the file (the header first) as `UpgradeData` messages after
/// the options; `sent` counts the bytes handed to the stream.
async fn send_bundle(
    path: PathBuf,
    options: pb::UpgradeOptions,
    ranges: Vec<Range<u64>>,
    tx: tokio::sync::mpsc::Sender<pb::UpgradeChunk>,
    sent: Arc<AtomicU64>,
) -> Result<(), std::io::Error> {
    let mut f = tokio::fs::File::open(&path).await?;
    let msg = |m| pb::UpgradeChunk { message: Some(m) };
    if tx
        .send(msg(pb::upgrade_chunk::Message::Options(options)))
        .await
        .is_err()
    {
        return Ok(());
    }
    for Range {
        start: from,
        end: to,
    } in ranges
    {
        f.seek(std::io::SeekFrom::Start(from)).await?;
        let mut off = from;
        while off < to {
            let n = ((to - off) as usize).min(MESSAGE_BYTES);
            let mut data = vec![0u8; n];
            f.read_exact(&mut data).await?;
            let m = msg(pb::upgrade_chunk::Message::Data(pb::UpgradeData {
                offset: off,
                data,
            }));
            if tx.send(m).await.is_err() {
                // The call ended (the node answered or the stream broke).
                return Ok(());
            }
            off += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Pushes the bundle at `path`, resuming and retrying; `progress` receives one line per
/// attempt.
pub async fn push_bundle(
    client: &mut MachineServiceClient<AuthedChannel>,
    path: &Path,
    options: pb::UpgradeOptions,
    retry: &Retry,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<pb::UpgradeResponse, UpgradeCtlError> {
    let (header_len, identity, len) = bundle_identity(path)?;
    let mut delay = retry.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let r = push_once(client, path, options, header_len, &identity, len, progress).await;
        match r {
            Ok(resp) => return Ok(resp),
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

async fn push_once(
    client: &mut MachineServiceClient<AuthedChannel>,
    path: &Path,
    options: pb::UpgradeOptions,
    header_len: u64,
    identity: &str,
    len: u64,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<pb::UpgradeResponse, UpgradeCtlError> {
    let status = client
        .upgrade_status(pb::UpgradeStatusRequest {})
        .await
        .map_err(|s| UpgradeCtlError::rpc("UpgradeStatus", s))?
        .into_inner();
    let resuming = status.has_progress && status.bundle_sha256 == identity;
    // Payload from here on: the node's resume offset, or the end of the header.
    let from = if resuming {
        status.resume_offset.clamp(header_len, len)
    } else {
        header_len
    };
    if from > header_len {
        progress(format!(
            "resuming at offset {from} of {len} ({} MiB already on the node)",
            (from - header_len) >> 20
        ));
    }
    let mut options = options;
    // The header first, in every attempt.
    let mut ranges = Vec::with_capacity(8);
    ranges.push(0..header_len);
    if options.reuse_booted_slot {
        let header = read_range(path, 0..header_len)?;
        let plan = client
            .upgrade_plan(pb::UpgradePlanRequest {
                header,
                options: Some(options),
            })
            .await;
        match plan {
            Ok(plan) => {
                let plan = plan.into_inner();
                ranges.extend(
                    plan.send
                        .iter()
                        .filter(|r| r.end > from)
                        .map(|r| r.start.max(from)..r.end),
                );
                progress(format!(
                    "the node's booted slot holds {} of the {} chunks; they are copied there",
                    plan.reuse_chunks, plan.chunk_count
                ));
            }
            Err(s) if s.code() == Code::Unimplemented => {
                progress("the node has no UpgradePlan (older machined): sending everything".into());
                options.reuse_booted_slot = false;
                ranges.push(from..len);
            }
            Err(s) => return Err(UpgradeCtlError::rpc("UpgradePlan", s)),
        }
    } else {
        ranges.push(from..len);
    }
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    progress(format!("sending {total} of the bundle's {len} bytes"));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let sent = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn(send_bundle(
        path.to_path_buf(),
        options,
        ranges,
        tx,
        sent.clone(),
    ));
    let call = client.upgrade(tokio_stream::wrappers::ReceiverStream::new(rx));
    tokio::pin!(call);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let mut announced_end = false;
    let result = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tick.tick() => {
                let at = sent.load(Ordering::Relaxed);
                if at >= total {
                    if !announced_end {
                        progress("all bytes sent; the node reads the slot back and activates it".into());
                        announced_end = true;
                    }
                } else {
                    progress(format!("sent {} of {} MiB", at >> 20, total >> 20));
                }
            }
        }
    };
    reader.abort();
    match result {
        Ok(r) => Ok(r.into_inner()),
        Err(s) => Err(UpgradeCtlError::rpc("Upgrade", s)),
    }
}

/// Asks the node to fetch and install `url`; `progress` receives the node's reports.
pub async fn pull_bundle(
    client: &mut MachineServiceClient<AuthedChannel>,
    url: &str,
    options: pb::UpgradeOptions,
    progress: &mut (dyn FnMut(&pb::UpgradeProgress) + Send),
) -> Result<pb::UpgradeResponse, UpgradeCtlError> {
    let mut stream = client
        .upgrade_from_url(pb::UpgradeFromUrlRequest {
            url: url.to_string(),
            options: Some(options),
        })
        .await
        .map_err(|s| UpgradeCtlError::rpc("UpgradeFromUrl", s))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                progress(&p);
                if let Some(result) = p.result {
                    return Ok(result);
                }
            }
            Ok(None) => return Err(UpgradeCtlError::NoResult),
            Err(s) => return Err(UpgradeCtlError::rpc("UpgradeFromUrl", s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        let mut data = vec![0u8; 8192 + 10];
        data[..8].copy_from_slice(b"BASALTB1");
        data[12..16].copy_from_slice(&4096u32.to_le_bytes());
        std::fs::write(&p, &data).unwrap();
        let (h, id, len) = bundle_identity(&p).unwrap();
        assert_eq!((h, len), (4096, 8202));
        let want = ring::digest::digest(&ring::digest::SHA256, &data[..4096]);
        assert_eq!(
            id,
            want.as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        std::fs::write(&p, b"nope").unwrap();
        assert!(bundle_identity(&p).is_err());
    }
}
