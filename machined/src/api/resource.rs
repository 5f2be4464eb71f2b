//! `basalt.resource.v1.ResourceService`: not implemented yet.
//!
//! Resources are published by the controllers that reconcile the configuration (DESIGN.md
//! §6), which do not exist yet. Every RPC answers UNIMPLEMENTED; none pretends to succeed.

use basalt_proto::resource::v1::{
    GetRequest, GetResponse, ListRequest, ListResponse, WatchEvent, WatchRequest,
    resource_service_server::ResourceService,
};
use std::pin::Pin;
use tonic::{Request, Response, Status};

/// The ResourceService handlers.
#[derive(Debug, Clone, Copy)]
pub struct ResourceApi;

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ResourceService for ResourceApi {
    async fn get(&self, _request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        Err(Status::unimplemented(
            "ResourceService.Get not implemented yet (no controllers publish resources)",
        ))
    }

    async fn list(&self, _request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        Err(Status::unimplemented(
            "ResourceService.List not implemented yet (no controllers publish resources)",
        ))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented(
            "ResourceService.Watch not implemented yet (no controllers publish resources)",
        ))
    }
}
