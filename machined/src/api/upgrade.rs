//! The upgrade RPCs (`Upgrade`, `UpgradeFromUrl`, `UpgradeStatus`): thin handlers over
//! [`crate::upgrade`]. They convert protobuf, move the blocking slot I/O off the async
//! workers, and write a secret-free audit summary (bundle version, board, identity, bytes,
//! options and outcome; a URL without its query string, which may carry a signed token).

use crate::api::guard::AuditNote;
use crate::node::Node;
use crate::upgrade::fetch::{FetchError, FetchOptions, FetchProgress, Phase};
use crate::upgrade::node_context::NodeContext;
use crate::upgrade::{UpgradeEngine, UpgradeError, UpgradeOptions, UpgradeOutcome, UpgradeSession};
use basalt_bootloader::Slot;
use basalt_proto::machine::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// The stream of UpgradeFromUrl.
pub type ProgressStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::UpgradeProgress, Status>> + Send>>;

fn slot(s: Option<Slot>) -> i32 {
    (match s {
        None => pb::Slot::Unspecified,
        Some(Slot::A) => pb::Slot::A,
        Some(Slot::B) => pb::Slot::B,
    }) as i32
}

/// The gRPC status of an engine error.
pub fn upgrade_status(e: &UpgradeError) -> Status {
    use UpgradeError as E;
    let msg = e.to_string();
    match e {
        E::Busy => Status::aborted(msg),
        E::Bundle(_) | E::Gap { .. } | E::PastEnd { .. } | E::Incomplete { .. } => {
            Status::invalid_argument(msg)
        }
        E::ReadbackMismatch { .. } | E::SlotHashMismatch { .. } => Status::data_loss(msg),
        _ if e.is_refusal() => Status::failed_precondition(msg),
        _ => Status::internal(msg),
    }
}

fn fetch_status(e: &FetchError) -> Status {
    match e {
        FetchError::Upgrade(u) => upgrade_status(u),
        FetchError::BadUrl { .. } => Status::invalid_argument(e.to_string()),
        _ => Status::unavailable(e.to_string()),
    }
}

fn engine(node: &Node) -> Result<Arc<UpgradeEngine>, Status> {
    node.upgrade.get().cloned().ok_or_else(|| {
        Status::failed_precondition(
            "upgrades are not available on this node: its slot devices are unknown (dev mode: pass --dev-slot-a/--dev-slot-b)",
        )
    })
}

fn options(o: Option<&pb::UpgradeOptions>) -> UpgradeOptions {
    let o = o.cloned().unwrap_or_default();
    UpgradeOptions {
        allow_downgrade: o.allow_downgrade,
        stage: o.stage,
        tries: (o.tries != 0).then_some(o.tries),
        reuse_booted_slot: o.reuse_booted_slot,
    }
}

fn response(o: &UpgradeOutcome) -> pb::UpgradeResponse {
    pb::UpgradeResponse {
        slot: slot(Some(o.slot)),
        version: o.version.clone(),
        board: o.board.clone(),
        bytes_written: o.bytes_written,
        slot_size: o.slot_size,
        rebooting: o.rebooting,
        tries: o.tries,
        message: format!(
            "slot {} holds {} {} and boots next on trial ({} tries){}",
            o.slot,
            o.board,
            o.version,
            o.tries,
            if o.rebooting {
                "; rebooting"
            } else {
                "; staged until the next reboot"
            }
        ),
    }
}

fn describe(session: &UpgradeSession) -> String {
    match session.manifest() {
        Some(m) => format!(
            "bundle {} {} slot {}",
            m.manifest().board,
            m.manifest().version,
            session.slot().map(|s| s.to_string()).unwrap_or_default()
        ),
        None => "bundle header not verified".into(),
    }
}

/// Ends an unfinished session off the async workers: dropping it syncs the slot and
/// records the progress. The engine stays busy until that is done.
fn end(session: UpgradeSession) {
    tokio::task::spawn_blocking(move || drop(session));
}

/// Runs `op` on the session off the async workers (slot I/O blocks).
async fn on_session<T: Send + 'static>(
    session: UpgradeSession,
    op: impl FnOnce(&mut UpgradeSession) -> Result<T, UpgradeError> + Send + 'static,
) -> Result<(UpgradeSession, Result<T, UpgradeError>), Status> {
    tokio::task::spawn_blocking(move || {
        let mut session = session;
        let r = op(&mut session);
        (session, r)
    })
    .await
    .map_err(|e| Status::internal(format!("upgrade task: {e}")))
}

/// `Upgrade`: a client-streamed bundle.
pub async fn upgrade(
    node: &Arc<Node>,
    request: Request<Streaming<pb::UpgradeChunk>>,
) -> Result<Response<pb::UpgradeResponse>, Status> {
    let note = AuditNote::of(&request);
    let peer = request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "client".into());
    let note_set = |s: String| {
        if let Some(n) = &note {
            n.replace(s);
        }
    };
    let engine = engine(node)?;
    let mut stream = request.into_inner();
    let first = stream.next().await.ok_or_else(|| {
        Status::invalid_argument("empty Upgrade stream: send the options first")
    })??;
    let opts = match first.message {
        Some(pb::upgrade_chunk::Message::Options(o)) => options(Some(&o)),
        _ => {
            return Err(Status::invalid_argument(
                "the first Upgrade message must carry the options",
            ));
        }
    };
    let summary = |what: &str, s: &UpgradeSession| {
        format!(
            "{what}: {} resume_offset={} allow_downgrade={} stage={} tries={:?}",
            describe(s),
            s.resume_offset(),
            opts.allow_downgrade,
            opts.stage,
            opts.tries
        )
    };
    let ctx = Arc::new(NodeContext(node.clone()));
    let mut session = engine
        .begin(ctx, opts, &format!("upload from {peer}"))
        .map_err(|e| upgrade_status(&e))?;
    // Bundle offset the payload started at in this call (after the header was verified).
    let mut start = None;
    while let Some(msg) = stream.next().await {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                note_set(summary("stream interrupted", &session));
                end(session);
                return Err(e);
            }
        };
        let Some(pb::upgrade_chunk::Message::Data(d)) = msg.message else {
            note_set(summary("refused", &session));
            end(session);
            return Err(Status::invalid_argument(
                "only the first Upgrade message may carry options",
            ));
        };
        let had_header = session.header_verified();
        let r;
        (session, r) = on_session(session, move |s| s.feed(d.offset, &d.data)).await?;
        if !had_header && session.header_verified() {
            start = Some(session.resume_offset());
            // Set now: a call cancelled by a dropped connection keeps this summary.
            note_set(summary("receiving", &session));
        }
        if let Err(e) = r {
            note_set(format!("{}: {e}", summary("failed", &session)));
            end(session);
            return Err(upgrade_status(&e));
        }
    }
    // The chunks after the last one sent, when the booted slot holds them.
    let copied;
    (session, copied) = on_session(session, |s| s.copy_local()).await?;
    if let Err(e) = copied {
        note_set(format!("{}: {e}", summary("failed", &session)));
        end(session);
        return Err(upgrade_status(&e));
    }
    if !session.is_complete() {
        let e = UpgradeError::Incomplete {
            verified: session.written().0,
            total: session.written().1,
            resume_offset: session.resume_offset(),
        };
        note_set(summary("incomplete", &session));
        end(session);
        return Err(upgrade_status(&e));
    }
    let start = start.unwrap_or_default();
    let described = summary("installed", &session);
    let outcome = tokio::task::spawn_blocking(move || session.finish())
        .await
        .map_err(|e| Status::internal(format!("upgrade task: {e}")))?;
    match outcome {
        Ok(o) => {
            note_set(format!(
                "{described} (from offset {start}) bytes_written={} rebooting={}",
                o.bytes_written, o.rebooting
            ));
            let reply = response(&o);
            node.events.publish(
                crate::events::EventKind::Boot,
                &format!("slot {}", o.slot),
                format!("upgrade installed: {}", reply.message),
            );
            Ok(Response::new(reply))
        }
        Err(e) => {
            note_set(format!("{described}: {e}"));
            Err(upgrade_status(&e))
        }
    }
}

fn phase(p: Phase) -> i32 {
    (match p {
        Phase::Header => pb::UpgradePhase::Header,
        Phase::Write => pb::UpgradePhase::Write,
        Phase::Readback => pb::UpgradePhase::Readback,
        Phase::Activate => pb::UpgradePhase::Activate,
    }) as i32
}

/// The URL without user information, query or fragment (they may carry credentials).
fn redact_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    url[..cut].to_string()
}

/// `UpgradeFromUrl`: the node fetches the bundle; progress is streamed.
pub async fn upgrade_from_url(
    node: &Arc<Node>,
    request: Request<pb::UpgradeFromUrlRequest>,
) -> Result<Response<ProgressStream>, Status> {
    let note = AuditNote::of(&request);
    let r = request.into_inner();
    let opts = options(r.options.as_ref());
    let shown = redact_url(&r.url);
    let summary = format!(
        "url={shown} allow_downgrade={} stage={} tries={:?}",
        opts.allow_downgrade, opts.stage, opts.tries
    );
    if let Some(n) = &note {
        n.replace(summary.clone());
    }
    let engine = engine(node)?;
    if engine.is_running() {
        return Err(upgrade_status(&UpgradeError::Busy));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::UpgradeProgress, Status>>(64);
    let node = node.clone();
    let node_events = node.events.clone();
    tokio::spawn(async move {
        let ctx = Arc::new(NodeContext(node));
        let progress_tx = tx.clone();
        let mut report = move |p: FetchProgress| {
            // Progress is best effort: a slow or gone client must not stall the download.
            let _ = progress_tx.try_send(Ok(pb::UpgradeProgress {
                phase: phase(p.phase),
                written_bytes: p.written,
                total_bytes: p.total,
                message: p.message,
                result: None,
            }));
        };
        let result = crate::upgrade::fetch::upgrade_from_url(
            &engine,
            ctx,
            &r.url,
            opts,
            &FetchOptions::default(),
            &mut report,
        )
        .await;
        let msg = match result {
            Ok(o) => {
                if let Some(n) = &note {
                    n.replace(format!(
                        "{summary}: installed {} {} in slot {} bytes_written={} rebooting={}",
                        o.board, o.version, o.slot, o.bytes_written, o.rebooting
                    ));
                }
                let reply = response(&o);
                node_events.publish(
                    crate::events::EventKind::Boot,
                    &format!("slot {}", o.slot),
                    format!("upgrade installed: {}", reply.message),
                );
                Ok(pb::UpgradeProgress {
                    phase: pb::UpgradePhase::Done as i32,
                    written_bytes: o.slot_size,
                    total_bytes: o.slot_size,
                    message: "done".into(),
                    result: Some(reply),
                })
            }
            Err(e) => {
                if let Some(n) = &note {
                    n.replace(format!("{summary}: {e}"));
                }
                Err(fetch_status(&e))
            }
        };
        let _ = tx.send(msg).await;
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

/// `UpgradePlan`: which ranges of a bundle the node still needs (reads the booted slot
/// once per boot, off the async workers).
pub async fn upgrade_plan(
    node: &Arc<Node>,
    request: Request<pb::UpgradePlanRequest>,
) -> Result<Response<pb::UpgradePlanResponse>, Status> {
    let note = AuditNote::of(&request);
    let r = request.into_inner();
    let opts = options(r.options.as_ref());
    let engine = engine(node)?;
    let ctx = NodeContext(node.clone());
    let plan = tokio::task::spawn_blocking(move || engine.plan(&ctx, &opts, &r.header))
        .await
        .map_err(|e| Status::internal(format!("upgrade plan task: {e}")))?;
    let summary = match &plan {
        Ok(p) => format!(
            "bundle {} slot {}: {} of {} chunks reused, {} bytes to send",
            p.version, p.slot, p.reuse_chunks, p.chunk_count, p.send_bytes
        ),
        Err(e) => e.to_string(),
    };
    if let Some(n) = &note {
        n.replace(summary);
    }
    let p = plan.map_err(|e| upgrade_status(&e))?;
    Ok(Response::new(pb::UpgradePlanResponse {
        send: p
            .send
            .iter()
            .map(|r| pb::ByteRange {
                start: r.start,
                end: r.end,
            })
            .collect(),
        send_bytes: p.send_bytes,
        reuse_chunks: p.reuse_chunks,
        chunk_count: p.chunk_count,
        slot: slot(Some(p.slot)),
        version: p.version,
    }))
}

/// `UpgradeStatus`: where an interrupted upgrade stands.
pub fn upgrade_status_rpc(node: &Node) -> Result<Response<pb::UpgradeStatusResponse>, Status> {
    let Some(engine) = node.upgrade.get() else {
        return Ok(Response::new(pb::UpgradeStatusResponse::default()));
    };
    let progress = engine
        .progress()
        .map_err(|e| Status::internal(e.to_string()))?;
    let mut reply = pb::UpgradeStatusResponse {
        running: engine.is_running(),
        ..Default::default()
    };
    if let Some(p) = progress {
        reply.has_progress = true;
        reply.bundle_sha256 = p.bundle_sha256.clone();
        reply.board = p.board.clone();
        reply.version = p.version.clone();
        reply.slot = slot(p.slot());
        reply.header_length = p.header_len;
        reply.resume_offset = p.resume_offset();
        reply.bundle_length = p.bundle_len();
    }
    Ok(Response::new(reply))
}
