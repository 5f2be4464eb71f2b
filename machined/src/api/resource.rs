//! `basalt.resource.v1.ResourceService`: thin handlers over [`ResourceStore`] (see
//! [`crate::resources`] for what is published and by whom).

use std::pin::Pin;
use std::sync::Arc;

use basalt_proto::resource::v1::{
    GetRequest, GetResponse, ListRequest, ListResponse, Resource, ResourceMetadata, WatchEvent,
    WatchEventType, WatchRequest, resource_service_server::ResourceService,
};
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use crate::resources::{self, ChangeKind, ResourceStore};
use crate::timefmt::to_timestamp;

/// The ResourceService handlers.
#[derive(Debug, Clone)]
pub struct ResourceApi {
    store: Arc<ResourceStore>,
}

impl ResourceApi {
    /// Handlers reading `store`.
    pub fn new(store: Arc<ResourceStore>) -> Self {
        Self { store }
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send>>;

fn to_proto(r: &resources::Resource) -> Resource {
    Resource {
        metadata: Some(ResourceMetadata {
            namespace: r.key.namespace.clone(),
            r#type: r.key.kind.clone(),
            id: r.key.id.clone(),
            version: r.version,
            owner: r.owner.clone(),
            created: Some(to_timestamp(r.created)),
            updated: Some(to_timestamp(r.updated)),
            labels: Default::default(),
        }),
        spec_json: serde_json::to_vec(&r.spec).unwrap_or_default(),
    }
}

fn need(value: &str, what: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(Status::invalid_argument(format!("{what} is required")));
    }
    Ok(())
}

#[tonic::async_trait]
impl ResourceService for ResourceApi {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let r = request.get_ref();
        need(&r.namespace, "namespace")?;
        need(&r.r#type, "type")?;
        let resource = self
            .store
            .get(&r.namespace, &r.r#type, &r.id)
            .ok_or_else(|| {
                Status::not_found(format!("no resource {}/{}/{}", r.namespace, r.r#type, r.id))
            })?;
        Ok(Response::new(GetResponse {
            resource: Some(to_proto(&resource)),
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let r = request.get_ref();
        need(&r.namespace, "namespace")?;
        need(&r.r#type, "type")?;
        let resources = self.store.list(&r.namespace, &r.r#type);
        Ok(Response::new(ListResponse {
            resources: resources.iter().map(to_proto).collect(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let r = request.into_inner();
        need(&r.namespace, "namespace")?;
        need(&r.r#type, "type")?;
        let (existing, rx) = self.store.watch(&r.namespace, &r.r#type);
        let wanted = move |res: &resources::Resource| {
            res.key.namespace == r.namespace
                && res.key.kind == r.r#type
                && (r.id.is_empty() || res.key.id == r.id)
        };
        Ok(Response::new(watch_stream(existing, wanted, rx)))
    }
}

fn event(t: WatchEventType, r: Option<&resources::Resource>) -> WatchEvent {
    WatchEvent {
        r#type: t as i32,
        resource: r.map(to_proto),
    }
}

/// The initial listing, BOOTSTRAPPED, then every change that matches `wanted`.
fn watch_stream(
    existing: Vec<resources::Resource>,
    wanted: impl Fn(&resources::Resource) -> bool + Send + 'static,
    mut changes: tokio::sync::broadcast::Receiver<resources::Change>,
) -> WatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut first: Vec<WatchEvent> = existing
            .iter()
            .filter(|r| wanted(r))
            .map(|r| event(WatchEventType::Existing, Some(r)))
            .collect();
        first.push(event(WatchEventType::Bootstrapped, None));
        for e in first {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        loop {
            let message = match changes.recv().await {
                Ok(change) if !wanted(&change.resource) => continue,
                Ok(change) => {
                    let t = match change.kind {
                        ChangeKind::Created => WatchEventType::Created,
                        ChangeKind::Updated => WatchEventType::Updated,
                        ChangeKind::Destroyed => WatchEventType::Destroyed,
                    };
                    Ok(event(t, Some(&change.resource)))
                }
                Err(RecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                    "watch fell {n} changes behind: watch again"
                ))),
                Err(RecvError::Closed) => return,
            };
            let end = message.is_err();
            if tx.send(message).await.is_err() || end {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
