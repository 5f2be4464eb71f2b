//! The container runtime as a [`Spawner`]: starting a container service is a named list of
//! steps against containerd, stopping it is a signal to its task, and its end is the task's
//! exit, after which the container and its snapshot are removed (the next start creates
//! them afresh from the image, so a container never carries state from one run to the next:
//! state belongs in volumes).

use super::client::{Containerd, ContainerdError};
use super::image::{self, ImageConfig};
use super::oci_spec::{self, DeviceNode, HostParts};
use super::registry_auth::{self, PullCredentials};
use super::system::RuntimePaths;
use crate::services::logring::OutputStream;
use crate::services::process::{BoxFuture, Exit, Spawned, StopSignal, read_lines};
use crate::services::spec::{ContainerSpec, ServiceSpec};
use crate::services::{ServiceError, Spawner};
use containerd_client::types::Platform;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long a start waits for containerd's socket (containerd may be starting).
const CONNECT_WITHIN: Duration = Duration::from_secs(15);
/// Output written just before an exit is still collected for this long.
const OUTPUT_GRACE: Duration = Duration::from_millis(300);
/// The cgroup parent of every container.
const CGROUP_PARENT: &str = "/basalt";

/// The node's architecture as OCI images name it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

/// Runs container services through containerd.
#[derive(Debug)]
pub struct ContainerRuntime {
    paths: RuntimePaths,
    client: tokio::sync::Mutex<Option<Containerd>>,
    credentials: std::sync::Mutex<Vec<PullCredentials>>,
}

fn runtime_error(name: &str) -> impl FnOnce(ContainerdError) -> ServiceError + '_ {
    move |e| ServiceError::Runtime {
        name: name.to_string(),
        message: e.to_string(),
    }
}

impl ContainerRuntime {
    /// A runtime using containerd at `paths`.
    pub fn new(paths: RuntimePaths) -> Self {
        Self {
            paths,
            client: tokio::sync::Mutex::new(None),
            credentials: std::sync::Mutex::default(),
        }
    }

    /// Its paths.
    pub fn paths(&self) -> &RuntimePaths {
        &self.paths
    }

    /// Makes containerd trust the CAs of `registries` (from its next start) and the next
    /// pulls use their credentials.
    pub fn set_registries(
        &self,
        registries: &[basalt_config::schema::Registry],
    ) -> Result<(), crate::state::StateError> {
        if let Ok(mut credentials) = self.credentials.lock() {
            *credentials = registry_auth::from_registries(registries);
        }
        super::system::write_registry_cas(&self.paths.ca_dir, registries)
    }

    /// The credentials a pull of `reference` needs, if its registry has any.
    fn credentials_for(&self, reference: &str) -> Option<PullCredentials> {
        let credentials = self.credentials.lock().ok()?;
        registry_auth::for_reference(&credentials, reference).cloned()
    }

    /// A connection to containerd (kept, re-made after a failure).
    pub async fn client(&self) -> Result<Containerd, ContainerdError> {
        let mut cached = self.client.lock().await;
        if let Some(c) = cached.as_ref()
            && c.version().await.is_ok()
        {
            return Ok(c.clone());
        }
        let c = Containerd::connect(&self.paths.socket, CONNECT_WITHIN).await?;
        *cached = Some(c.clone());
        Ok(c)
    }

    /// The node's platform, as containerd names it.
    pub fn platform() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: oci_arch().into(),
            variant: String::new(),
            os_version: String::new(),
        }
    }

    /// Step: the image is in the content store (pulled per the pull policy).
    async fn ensure_image(
        &self,
        c: &Containerd,
        name: &str,
        spec: &ContainerSpec,
    ) -> Result<(), ServiceError> {
        let present = c
            .image_target(&spec.image)
            .await
            .map_err(runtime_error(name))?
            .is_some();
        if present && !spec.pull_always {
            return Ok(());
        }
        let credentials = self.credentials_for(&spec.image);
        match c
            .pull(&spec.image, &Self::platform(), credentials.as_ref())
            .await
        {
            Ok(()) => Ok(()),
            // An image already present may still run when an `always` pull fails.
            Err(_) if present => Ok(()),
            Err(e) => {
                let message = e.to_string();
                let platform = format!("linux/{}", oci_arch());
                if message.contains("no match for platform") {
                    Err(ServiceError::Runtime {
                        name: name.into(),
                        message: format!(
                            "image {} has no variant for {platform}: {message}",
                            spec.image
                        ),
                    })
                } else {
                    Err(ServiceError::Pull {
                        name: name.into(),
                        message: format!("image {}: {message}", spec.image),
                    })
                }
            }
        }
    }

    /// Step: the image's configuration for this node's platform.
    async fn image_config(
        &self,
        c: &Containerd,
        name: &str,
        image_name: &str,
    ) -> Result<ImageConfig, ServiceError> {
        let invalid = |e: image::ImageError| ServiceError::Runtime {
            name: name.into(),
            message: e.to_string(),
        };
        let target = c
            .image_target(image_name)
            .await
            .map_err(runtime_error(name))?
            .ok_or_else(|| ServiceError::Runtime {
                name: name.into(),
                message: format!("image {image_name} vanished from the content store"),
            })?;
        let mut manifest = c
            .read_blob(&target.digest)
            .await
            .map_err(runtime_error(name))?;
        if image::is_index(&target.media_type) {
            let chosen =
                image::select_manifest(image_name, &manifest, oci_arch()).map_err(invalid)?;
            manifest = c
                .read_blob(&chosen.digest)
                .await
                .map_err(runtime_error(name))?;
        }
        let config = image::manifest_config(image_name, &manifest).map_err(invalid)?;
        let blob = c
            .read_blob(&config.digest)
            .await
            .map_err(runtime_error(name))?;
        image::image_config(image_name, &blob, oci_arch()).map_err(invalid)
    }

    /// Step: nothing of an earlier run of `id` is left (task, container, snapshot).
    async fn remove_leftovers(c: &Containerd, id: &str) -> Result<(), ContainerdError> {
        c.kill_task(id, 9).await?;
        // A task that was just killed is deleted once it has exited.
        for _ in 0..50 {
            match c.delete_task(id).await {
                Ok(()) => break,
                Err(ContainerdError::Call {
                    code: tonic::Code::FailedPrecondition,
                    ..
                }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
        c.delete_container(id).await?;
        c.remove_snapshot(id).await
    }

    /// Step: the host's side of the container (devices, volume directories, files).
    fn host_parts(&self, spec: &ServiceSpec, c: &ContainerSpec) -> Result<HostParts, ServiceError> {
        let mut parts = HostParts {
            cgroup: format!("{CGROUP_PARENT}/{}", spec.name),
            ..HostParts::default()
        };
        for path in &c.devices {
            parts
                .devices
                .push(device_node(path).map_err(|message| ServiceError::Runtime {
                    name: spec.name.clone(),
                    message,
                })?);
        }
        for v in &c.volumes {
            let dir = self.paths.volumes_dir.join(&v.name);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| ServiceError::Runtime {
                    name: spec.name.clone(),
                    message: format!("volume {}: creating {}: {e}", v.name, dir.display()),
                })?;
            parts.volume_dirs.insert(v.name.clone(), dir);
        }
        if !c.isolated_network {
            for f in ["/etc/resolv.conf", "/etc/hosts"] {
                if Path::new(f).is_file() {
                    parts.files.push((PathBuf::from(f), f.to_string()));
                }
            }
        }
        Ok(parts)
    }

    /// Step: FIFOs for the task's stdout and stderr, opened for reading (and writing, so
    /// that they never report end of file while the shim reopens them).
    fn output_fifos(&self, id: &str) -> Result<(PathBuf, PathBuf, Fifos), String> {
        let dir = self.paths.io_dir.join(id);
        let _ = std::fs::remove_dir_all(&dir); // leftovers of an earlier run, if any
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let mut receivers = Vec::new();
        let mut paths = Vec::new();
        for stream in ["stdout", "stderr"] {
            let path = dir.join(stream);
            rustix::fs::mkfifoat(
                rustix::fs::CWD,
                &path,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .map_err(|e| format!("mkfifo {}: {e}", path.display()))?;
            let rx = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(&path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            receivers.push(rx);
            paths.push(path);
        }
        let stderr = receivers.pop();
        let stdout = receivers.pop();
        match (stdout, stderr) {
            (Some(out), Some(err)) => {
                Ok((paths[0].clone(), paths[1].clone(), Fifos { out, err, dir }))
            }
            _ => Err("output FIFOs were not opened".into()),
        }
    }

    /// The whole start: image, configuration, leftovers, spec, container, snapshot, output,
    /// task.
    async fn start(&self, spec: &ServiceSpec) -> Result<Spawned, ServiceError> {
        let name = spec.name.as_str();
        let Some(container) = spec.container() else {
            return Err(ServiceError::Invalid {
                name: name.into(),
                message: "not a container service".into(),
            });
        };
        let c = self
            .client()
            .await
            .map_err(|e| ServiceError::RuntimeUnavailable {
                name: name.into(),
                message: e.to_string(),
            })?;
        self.ensure_image(&c, name, container).await?;
        let image = self.image_config(&c, name, &container.image).await?;
        Self::remove_leftovers(&c, name)
            .await
            .map_err(runtime_error(name))?;
        let host = self.host_parts(spec, container)?;
        let runtime_spec = oci_spec::runtime_spec(
            name, container, &spec.args, &spec.env, &image, &host,
        )
        .map_err(|e| ServiceError::Runtime {
            name: name.into(),
            message: format!("image {}: {e}", container.image),
        })?;
        c.create_container(
            name,
            &container.image,
            &runtime_spec,
            self.paths.no_pivot_root,
        )
        .await
        .map_err(runtime_error(name))?;
        let started = self.start_task(&c, name, &image.chain_id).await;
        if started.is_err() {
            // Best effort: the next start removes what is left as well.
            let _ = Self::remove_leftovers(&c, name).await;
        }
        started
    }

    async fn start_task(
        &self,
        c: &Containerd,
        name: &str,
        chain_id: &str,
    ) -> Result<Spawned, ServiceError> {
        let mounts = c
            .prepare_snapshot(name, chain_id)
            .await
            .map_err(runtime_error(name))?;
        let (stdout, stderr, fifos) =
            self.output_fifos(name)
                .map_err(|message| ServiceError::Runtime {
                    name: name.into(),
                    message,
                })?;
        c.create_task(name, mounts, &stdout, &stderr)
            .await
            .map_err(runtime_error(name))?;
        let pid = c.start_task(name).await.map_err(runtime_error(name))?;
        let (out_tx, output) = mpsc::channel(256);
        let readers = [
            tokio::spawn(read_lines(fifos.out, OutputStream::Stdout, out_tx.clone())),
            tokio::spawn(read_lines(fifos.err, OutputStream::Stderr, out_tx)),
        ];
        let (exit_tx, exit) = oneshot::channel();
        let client = c.clone();
        let id = name.to_string();
        let io_dir = fifos.dir;
        tokio::spawn(async move {
            let status = match client.wait_task(&id).await {
                Ok(s) => exit_of(s),
                Err(_) => Exit::Code(-1),
            };
            tokio::time::sleep(OUTPUT_GRACE).await;
            for r in &readers {
                r.abort();
            }
            // The run is over: its task, container and snapshot go (a failure here is
            // cleaned up by the next start's remove_leftovers).
            let _ = Self::remove_leftovers(&client, &id).await;
            let _ = std::fs::remove_dir_all(&io_dir);
            let _ = exit_tx.send(status);
        });
        Ok(Spawned { pid, output, exit })
    }
}

struct Fifos {
    out: tokio::net::unix::pipe::Receiver,
    err: tokio::net::unix::pipe::Receiver,
    dir: PathBuf,
}

/// containerd reports a process killed by signal N as exit status 128 + N.
fn exit_of(status: u32) -> Exit {
    match status {
        129..=192 => Exit::Signal((status - 128) as i32),
        s => Exit::Code(s as i32),
    }
}

/// The device node at `path` on the host.
fn device_node(path: &str) -> Result<DeviceNode, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!("device {path}: {e} (is the hardware attached and its driver loaded?)")
    })?;
    let kind = if meta.file_type().is_char_device() {
        'c'
    } else if meta.file_type().is_block_device() {
        'b'
    } else {
        return Err(format!("device {path} is not a device node"));
    };
    let rdev = meta.rdev();
    Ok(DeviceNode {
        path: path.to_string(),
        kind,
        major: rustix::fs::major(rdev).into(),
        minor: rustix::fs::minor(rdev).into(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

impl Spawner for ContainerRuntime {
    fn spawn<'a>(&'a self, spec: &'a ServiceSpec) -> BoxFuture<'a, Result<Spawned, ServiceError>> {
        Box::pin(self.start(spec))
    }

    fn signal<'a>(
        &'a self,
        spec: &'a ServiceSpec,
        _pid: u32,
        signal: StopSignal,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            let number = match signal {
                StopSignal::Term => 15,
                StopSignal::Kill => 9,
            };
            let c = self.client().await.map_err(runtime_error(&spec.name))?;
            c.kill_task(&spec.name, number)
                .await
                .map_err(runtime_error(&spec.name))
        })
    }
}

/// Shared handle.
pub type SharedRuntime = Arc<ContainerRuntime>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_and_devices() {
        assert_eq!(exit_of(0), Exit::Code(0));
        assert_eq!(exit_of(137), Exit::Signal(9));
        assert_eq!(exit_of(2), Exit::Code(2));
        let null = device_node("/dev/null").unwrap();
        assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        assert!(
            device_node("/dev/nonexistent-gpio")
                .unwrap_err()
                .contains("device /dev/nonexistent-gpio")
        );
        assert!(
            device_node("/etc/hostname")
                .unwrap_err()
                .contains("not a device node")
        );
    }
}
