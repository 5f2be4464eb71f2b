//! containerd's Streaming API as machined uses it: a stream is opened with a `StreamInit`
//! naming it and acknowledged by containerd with one message; a `Transfer` call then refers
//! to it by that name (the bytes of an imported archive, progress events, credential
//! requests). Messages are protobuf `Any`s.

use super::client::{Containerd, ContainerdError, call, in_namespace};
use containerd_client::services::v1::StreamInit;
use containerd_client::to_any;
use prost_types::Any;
use tokio::sync::mpsc;
use tonic::Streaming;

/// Whether an `Any` holds message `T` (containerd's Go side prefixes type URLs).
pub fn is<T: prost::Name>(any: &Any) -> bool {
    any.type_url.rsplit('/').next() == Some(T::full_name().as_str())
}

/// A stream name unique on this node (process id, start time and a counter).
pub fn stream_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("basalt-{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// One end of a containerd stream: what machined sends and what containerd sends back.
pub struct ClientStream {
    /// Its name.
    pub id: String,
    /// What machined sends (dropping it closes machined's side).
    pub tx: mpsc::Sender<Any>,
    /// What containerd sends.
    pub rx: Streaming<Any>,
}

impl Containerd {
    /// Opens a stream named `id` on containerd's Streaming API, in Basalt's namespace.
    pub async fn open_stream(&self, id: String) -> Result<ClientStream, ContainerdError> {
        let (tx, rx) = mpsc::channel(4);
        let init = to_any(&StreamInit { id: id.clone() });
        tx.send(init)
            .await
            .map_err(|_| stream_closed(&id, "before it was opened"))?;
        let mut rx = self
            .client
            .streaming()
            .stream(in_namespace(tokio_stream::wrappers::ReceiverStream::new(
                rx,
            )))
            .await
            .map_err(call("Streaming.Stream", &id))?
            .into_inner();
        // containerd acknowledges a registered stream with one message.
        rx.message()
            .await
            .map_err(call("Streaming.Stream", &id))?
            .ok_or_else(|| stream_closed(&id, "before acknowledging it"))?;
        Ok(ClientStream { id, tx, rx })
    }
}

/// containerd closed a stream early.
pub fn stream_closed(id: &str, when: &str) -> ContainerdError {
    ContainerdError::Call {
        call: "Streaming.Stream",
        object: id.into(),
        code: tonic::Code::Unavailable,
        message: format!("containerd closed the stream {when}"),
    }
}
