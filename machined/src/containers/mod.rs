//! Workloads: container services run through containerd.
//!
//! Design:
//!
//! - [`system`]: containerd as a system service of machined (its paths, the configuration
//!   machined writes, the registry CAs it trusts). On a node its content store and
//!   snapshots live on DATA, so images survive A/B upgrades and reboots.
//! - [`client`]: the containerd gRPC calls machined makes (through the `containerd-client`
//!   crate, over containerd's unix socket; no `ctr`), in Basalt's own namespace.
//! - [`image`]: the image's manifest and configuration for the node's platform, read from the
//!   content store (pure).
//! - [`images`]: the image store as the API shows it (list with the services using each
//!   image, remove, prune); an image a configured service uses is never removed.
//! - [`archive`], [`staging`], [`import`]: an image archive imported over the API: read and
//!   checked for the node's platform, staged on DATA while it streams in (a cut stream
//!   resumes), then handed whole to containerd's transfer service.
//! - [`registry_auth`]: registry credentials, given to containerd when a registry asks for
//!   them during a pull, over an auth stream ([`streams`]).
//! - [`oci_spec`]: the OCI runtime spec of a container service (pure).
//! - [`runtime`]: [`ContainerRuntime`], the [`crate::services::Spawner`] of container services:
//!   the supervisor runs containers exactly as it runs programs (dependencies, restart
//!   policy and backoff, logs, events, stop with SIGTERM then SIGKILL); an image that cannot
//!   be pulled is retried with backoff and never blocks other services.
//!
//! Limits: registries over HTTPS only, with the system's or a configured CA (containerd 1.7's
//! transfer service has no plain HTTP, mirrors or `hosts.toml`); on a node, containers are confined with chroot in their mount namespace rather than
//! pivot_root (machined and so containerd run from the initramfs, whose root cannot be
//! pivoted away), which a container with `CAP_SYS_ADMIN` (`privileged`) can leave; no
//! seccomp profile and no user namespaces; users by name in an image are refused; an isolated network has
//! only a loopback interface (no bridge, no port mapping).

pub mod archive;
pub mod client;
pub mod image;
pub mod images;
pub mod import;
pub mod oci_spec;
pub mod registry_auth;
pub mod runtime;
pub mod staging;
pub mod streams;
pub mod system;

pub use runtime::ContainerRuntime;
pub use system::RuntimePaths;
