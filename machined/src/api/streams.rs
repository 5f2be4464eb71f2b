//! The streaming read-only RPCs of `MachineService`: Events, Logs and Dmesg.
//!
//! Each handler translates the request into a call on the domain object ([`EventBus`],
//! the service supervisor's log rings, the kernel log reader) and turns what it returns
//! (a replay plus a live receiver) into a gRPC stream. A stream ends when the client goes
//! away (the forwarding task notices the closed channel) or, for a live subscriber that
//! fell too far behind, with DATA_LOSS saying how to resume.

use crate::events::{Event, EventBus, EventKind};
use crate::services::{LogLine, LogRing, OutputStream};
use basalt_proto::machine::v1 as pb;
use std::pin::Pin;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

/// A boxed server stream.
pub type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Buffered messages per stream before the forwarding task waits for the client.
const STREAM_BUFFER: usize = 64;

fn kind(k: EventKind) -> i32 {
    (match k {
        EventKind::Config => pb::EventKind::Config,
        EventKind::Service => pb::EventKind::Service,
        EventKind::Boot => pb::EventKind::Boot,
        EventKind::Power => pb::EventKind::Power,
        EventKind::Api => pb::EventKind::Api,
    }) as i32
}

/// An event as protobuf.
pub fn event(e: &Event) -> pb::Event {
    pb::Event {
        id: e.id,
        time: Some(crate::timefmt::to_timestamp(e.time)),
        kind: kind(e.kind),
        subject: e.subject.clone(),
        message: e.message.clone(),
    }
}

/// Sends `replay`, then (when `live` is given) every item of `live`, converted by `convert`,
/// until the client goes away or the receiver lags (then DATA_LOSS with `lag_hint`).
pub fn replay_then_follow<T, M>(
    replay: Vec<T>,
    live: Option<broadcast::Receiver<T>>,
    convert: impl Fn(&T) -> Option<M> + Send + Sync + 'static,
    lag_hint: &'static str,
) -> Stream<M>
where
    T: Clone + Send + 'static,
    M: Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Result<M, Status>>(STREAM_BUFFER);
    tokio::spawn(async move {
        for item in replay {
            if let Some(m) = convert(&item)
                && tx.send(Ok(m)).await.is_err()
            {
                return;
            }
        }
        let Some(mut live) = live else { return };
        loop {
            tokio::select! {
                got = live.recv() => match got {
                    Ok(item) => {
                        if let Some(m) = convert(&item)
                            && tx.send(Ok(m)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "the stream fell behind and missed {n} entries; {lag_hint}"
                            ))))
                            .await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// `Events`: the kept events after `after_id` (the last `tail`, 0 = all), then with
/// `follow` new ones.
pub fn events(bus: &EventBus, r: &pb::EventsRequest) -> Stream<pb::Event> {
    let (replay, rx) = bus.subscribe(r.tail as usize, r.after_id);
    replay_then_follow(
        replay,
        r.follow.then_some(rx),
        |e| Some(event(e)),
        "reconnect with after_id set to the last id received",
    )
}

fn log_entry(service: &str, l: &LogLine) -> pb::LogEntry {
    pb::LogEntry {
        time: Some(crate::timefmt::to_timestamp(l.time)),
        service: service.to_string(),
        stream: (match l.stream {
            OutputStream::Stdout => pb::LogStream::Stdout,
            OutputStream::Stderr => pb::LogStream::Stderr,
            OutputStream::System => pb::LogStream::Unspecified,
        }) as i32,
        message: l.text.clone(),
    }
}

/// `Logs`: the last `tail_lines` lines of `ring` (0 = all kept), then with `follow` new
/// ones.
pub fn logs(service: &str, ring: &LogRing, r: &pb::LogsRequest) -> Stream<pb::LogEntry> {
    let (replay, rx) = ring.subscribe(r.tail_lines as usize);
    let name = service.to_string();
    replay_then_follow(
        replay,
        r.follow.then_some(rx),
        move |l| Some(log_entry(&name, l)),
        "request the log again with a tail",
    )
}

/// `Dmesg`: kernel log records from a [`crate::kmsg`] reader; a read error ends the stream
/// with UNAVAILABLE.
pub fn dmesg(
    rx: mpsc::Receiver<Result<crate::kmsg::KmsgRecord, crate::kmsg::KmsgError>>,
) -> Stream<pb::KernelLogEntry> {
    use tokio_stream::StreamExt as _;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(|r| match r {
        Ok(k) => Ok(pb::KernelLogEntry {
            since_boot: Some(prost_types::Duration {
                seconds: k.since_boot.as_secs() as i64,
                nanos: k.since_boot.subsec_nanos() as i32,
            }),
            priority: u32::from(k.priority),
            facility: k.facility,
            sequence: k.sequence,
            message: k.message,
        }),
        Err(e) => Err(Status::unavailable(e.to_string())),
    });
    Box::pin(stream)
}
