//! containerd's gRPC API, the calls machined makes: each method is one step (pull, read a
//! blob, create a container, prepare its snapshot, create, start, wait for, signal and delete
//! its task), in Basalt's own containerd namespace.

use super::registry_auth::{self, PullCredentials};
use super::streams::stream_id;
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateImageRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteImageRequest, DeleteTaskRequest, GetImageRequest, Image,
    KillRequest, ListImagesRequest, ReadContentRequest, StartRequest, TransferOptions,
    TransferRequest, UpdateImageRequest, WaitRequest,
};
use containerd_client::types::transfer::{
    ImageStore, OciRegistry, RegistryResolver, UnpackConfiguration,
};
use containerd_client::types::{Descriptor, Mount, Platform};
use containerd_client::{Client, to_any};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::{Code, Request};

/// containerd's namespace for Basalt's workloads (kept apart from anything else on the
/// same containerd).
pub const NAMESPACE: &str = "basalt";
/// The snapshotter images are unpacked into and containers run on.
pub const SNAPSHOTTER: &str = "overlayfs";
/// The runtime shim.
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The largest JSON blob (index, manifest, image config) read into memory.
const MAX_JSON_BLOB: usize = 4 << 20;

/// A failed containerd call.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket did not accept a connection in time.
    #[error("containerd at {socket}: not reachable: {message}")]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The last error.
        message: String,
    },
    /// A call failed.
    #[error("containerd {call} {object}: {message}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// What it was about (container id, image, digest).
        object: String,
        /// containerd's status code.
        code: Code,
        /// containerd's message.
        message: String,
    },
    /// A local file a call needs could not be read.
    #[error("{object}: {message}")]
    Local {
        /// The file.
        object: String,
        /// The cause.
        message: String,
    },
    /// A blob is larger than machined reads into memory.
    #[error("blob {digest} is larger than {MAX_JSON_BLOB} bytes")]
    TooLarge {
        /// Its digest.
        digest: String,
    },
}

impl ContainerdError {
    /// Whether containerd answered "not found".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ContainerdError::Call {
                code: Code::NotFound,
                ..
            }
        )
    }
}

pub(super) fn call(
    call: &'static str,
    object: &str,
) -> impl FnOnce(tonic::Status) -> ContainerdError {
    let object = object.to_string();
    move |s| ContainerdError::Call {
        call,
        object,
        code: s.code(),
        message: s.message().to_string(),
    }
}

/// The image store as the destination of a transfer: content for `platform` only, unpacked
/// into the snapshotter containers run on.
pub(super) fn node_image_store(platform: &Platform) -> ImageStore {
    ImageStore {
        platforms: vec![platform.clone()],
        unpacks: vec![UnpackConfiguration {
            platform: Some(platform.clone()),
            snapshotter: SNAPSHOTTER.into(),
        }],
        ..ImageStore::default()
    }
}

pub(super) fn in_namespace<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "containerd-namespace",
        tonic::metadata::MetadataValue::from_static(NAMESPACE),
    );
    request
}

/// The runc shim's options (`containerd.runc.v1.Options`), the one field machined sets.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// Confine with chroot in a mount namespace instead of pivot_root (a root on rootfs
    /// cannot be pivoted away).
    #[prost(bool, tag = "1")]
    no_pivot_root: bool,
}

/// A connection to containerd.
#[derive(Clone)]
pub struct Containerd {
    pub(super) client: std::sync::Arc<Client>,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Containerd")
    }
}

impl Containerd {
    /// Connects to the socket, retrying until `within` has passed (containerd may be starting).
    pub async fn connect(socket: &Path, within: Duration) -> Result<Self, ContainerdError> {
        let deadline = Instant::now() + within;
        loop {
            let attempt = async {
                let client = Client::from_path(socket).await.map_err(|e| e.to_string())?;
                client
                    .version()
                    .version(())
                    .await
                    .map_err(|e| e.message().to_string())?;
                Ok::<_, String>(client)
            };
            match attempt.await {
                Ok(client) => {
                    return Ok(Self {
                        client: std::sync::Arc::new(client),
                    });
                }
                Err(message) if Instant::now() >= deadline => {
                    return Err(ContainerdError::Unreachable {
                        socket: socket.to_path_buf(),
                        message,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let v = self
            .client
            .version()
            .version(())
            .await
            .map_err(call("Version", ""))?;
        Ok(v.into_inner().version)
    }

    /// The record of image `name`, `None` when the node does not have it.
    pub async fn image(&self, name: &str) -> Result<Option<Image>, ContainerdError> {
        let got = self
            .client
            .images()
            .get(in_namespace(GetImageRequest { name: name.into() }))
            .await;
        match got {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(call("Images.Get", name)(s)),
        }
    }

    /// Names `target` `name` too (creates the image record, or points an existing one
    /// there).
    pub async fn tag_image(&self, name: &str, target: &Descriptor) -> Result<(), ContainerdError> {
        let image = Image {
            name: name.into(),
            target: Some(target.clone()),
            ..Image::default()
        };
        let created = self
            .client
            .images()
            .create(in_namespace(CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                self.client
                    .images()
                    .update(in_namespace(UpdateImageRequest {
                        image: Some(image),
                        update_mask: None,
                        source_date_epoch: None,
                    }))
                    .await
                    .map_err(call("Images.Update", name))?;
                Ok(())
            }
            Err(s) => Err(call("Images.Create", name)(s)),
        }
    }

    /// The target descriptor of image `name`, `None` when the node does not have it.
    pub async fn image_target(&self, name: &str) -> Result<Option<Descriptor>, ContainerdError> {
        Ok(self.image(name).await?.and_then(|i| i.target))
    }

    /// The image records in Basalt's namespace.
    pub async fn images(&self) -> Result<Vec<Image>, ContainerdError> {
        let r = self
            .client
            .images()
            .list(in_namespace(ListImagesRequest::default()))
            .await
            .map_err(call("Images.List", ""))?;
        Ok(r.into_inner().images)
    }

    /// Deletes image `name` if it still points to `target`, and waits for containerd's
    /// garbage collection, which frees the content and unpacked layers no other image or
    /// container holds.
    pub async fn delete_image(
        &self,
        name: &str,
        target: &Descriptor,
    ) -> Result<(), ContainerdError> {
        self.client
            .images()
            .delete(in_namespace(DeleteImageRequest {
                name: name.into(),
                sync: true,
                target: Some(target.clone()),
            }))
            .await
            .map_err(call("Images.Delete", name))?;
        Ok(())
    }

    /// Pulls `reference` for `platform` and unpacks it into the snapshotter, with
    /// containerd's transfer service (HTTPS, containerd's trust roots); `credentials` are
    /// given when the registry asks for them.
    pub async fn pull(
        &self,
        reference: &str,
        platform: &Platform,
        credentials: Option<&PullCredentials>,
    ) -> Result<(), ContainerdError> {
        let mut resolver = None;
        let mut answering = None;
        if let Some(credentials) = credentials {
            let stream = self.open_stream(stream_id("auth")).await?;
            resolver = Some(RegistryResolver {
                auth_stream: stream.id.clone(),
                ..RegistryResolver::default()
            });
            answering = Some(tokio::spawn(registry_auth::answer_requests(
                stream,
                credentials.clone(),
            )));
        }
        let source = OciRegistry {
            reference: reference.into(),
            resolver,
        };
        let destination = ImageStore {
            name: reference.into(),
            ..node_image_store(platform)
        };
        let request = TransferRequest {
            source: Some(to_any(&source)),
            destination: Some(to_any(&destination)),
            options: Some(TransferOptions::default()),
        };
        let pulled = self
            .client
            .transfer()
            .transfer(in_namespace(request))
            .await
            .map_err(call("Transfer (pull)", reference));
        if let Some(task) = answering {
            task.abort();
        }
        pulled.map(drop)
    }

    /// The bytes of a (JSON) blob from the content store.
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ContainerdError> {
        let mut stream = self
            .client
            .content()
            .read(in_namespace(ReadContentRequest {
                digest: digest.into(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(call("Content.Read", digest))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(call("Content.Read", digest))?
        {
            out.extend_from_slice(&chunk.data);
            if out.len() > MAX_JSON_BLOB {
                return Err(ContainerdError::TooLarge {
                    digest: digest.into(),
                });
            }
        }
        Ok(out)
    }

    /// Creates container `id` of `image` with the OCI runtime spec `spec` (JSON), on the
    /// snapshot `id`; with `no_pivot_root`, runc confines it without pivot_root.
    pub async fn create_container(
        &self,
        id: &str,
        image: &str,
        spec: &serde_json::Value,
        no_pivot_root: bool,
    ) -> Result<(), ContainerdError> {
        let options = no_pivot_root.then(|| prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: prost::Message::encode_to_vec(&RuncOptions { no_pivot_root }),
        });
        let container = Container {
            id: id.into(),
            image: image.into(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options,
            }),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: serde_json::to_vec(spec).unwrap_or_default(),
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.into(),
            ..Container::default()
        };
        self.client
            .containers()
            .create(in_namespace(CreateContainerRequest {
                container: Some(container),
            }))
            .await
            .map_err(call("Containers.Create", id))?;
        Ok(())
    }

    /// Deletes container `id` (already gone is fine).
    pub async fn delete_container(&self, id: &str) -> Result<(), ContainerdError> {
        let r = self
            .client
            .containers()
            .delete(in_namespace(DeleteContainerRequest { id: id.into() }))
            .await;
        ignore_not_found(r.map(drop).map_err(call("Containers.Delete", id)))
    }

    /// The ids of the containers in Basalt's namespace.
    pub async fn container_ids(&self) -> Result<Vec<String>, ContainerdError> {
        let r = self
            .client
            .containers()
            .list(in_namespace(
                containerd_client::services::v1::ListContainersRequest::default(),
            ))
            .await
            .map_err(call("Containers.List", ""))?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Prepares the writable snapshot `key` on top of `parent` (an image's chain id);
    /// returns the mounts of the container's root.
    pub async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
    ) -> Result<Vec<Mount>, ContainerdError> {
        let r = self
            .client
            .snapshots()
            .prepare(in_namespace(PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                ..PrepareSnapshotRequest::default()
            }))
            .await
            .map_err(call("Snapshots.Prepare", key))?;
        Ok(r.into_inner().mounts)
    }

    /// Removes snapshot `key` (already gone is fine).
    pub async fn remove_snapshot(&self, key: &str) -> Result<(), ContainerdError> {
        let r = self
            .client
            .snapshots()
            .remove(in_namespace(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await;
        ignore_not_found(r.map(drop).map_err(call("Snapshots.Remove", key)))
    }

    /// Creates the task (the container's processes, not started yet) with its output to the
    /// FIFOs `stdout` and `stderr`; returns its pid.
    pub async fn create_task(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        stdout: &Path,
        stderr: &Path,
    ) -> Result<u32, ContainerdError> {
        let r = self
            .client
            .tasks()
            .create(in_namespace(CreateTaskRequest {
                container_id: id.into(),
                rootfs,
                stdout: stdout.display().to_string(),
                stderr: stderr.display().to_string(),
                ..CreateTaskRequest::default()
            }))
            .await
            .map_err(call("Tasks.Create", id))?;
        Ok(r.into_inner().pid)
    }

    /// Starts the task's process.
    pub async fn start_task(&self, id: &str) -> Result<u32, ContainerdError> {
        let r = self
            .client
            .tasks()
            .start(in_namespace(StartRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(call("Tasks.Start", id))?;
        Ok(r.into_inner().pid)
    }

    /// Waits until the task exits; returns its exit status.
    pub async fn wait_task(&self, id: &str) -> Result<u32, ContainerdError> {
        let r = self
            .client
            .tasks()
            .wait(in_namespace(WaitRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .map_err(call("Tasks.Wait", id))?;
        Ok(r.into_inner().exit_status)
    }

    /// Sends `signal` to every process of the task (already gone is fine).
    pub async fn kill_task(&self, id: &str, signal: u32) -> Result<(), ContainerdError> {
        let r = self
            .client
            .tasks()
            .kill(in_namespace(KillRequest {
                container_id: id.into(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await;
        ignore_not_found(r.map(drop).map_err(call("Tasks.Kill", id)))
    }

    /// Deletes the task of an exited container (already gone is fine).
    pub async fn delete_task(&self, id: &str) -> Result<(), ContainerdError> {
        let r = self
            .client
            .tasks()
            .delete(in_namespace(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await;
        ignore_not_found(r.map(drop).map_err(call("Tasks.Delete", id)))
    }
}

fn ignore_not_found(r: Result<(), ContainerdError>) -> Result<(), ContainerdError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}
