//! The versioned gRPC API of Basalt OS.
//!
//! This crate owns the `.proto` files under `proto/` and the tonic client and server code
//! generated from them. Packages are versioned (`basalt.machine.v1`, later
//! `basalt.resource.v1`, `basalt.audit.v1`); a breaking change gets a new package version,
//! never an edit of a released one.
//!
//! The code is generated at build time by `protox` (a protobuf compiler written in Rust) and
//! `tonic-prost-build`, so building needs no system `protoc`.
//!
//! Limits: only the generated types live here; authorization, auditing and handlers belong
//! to `machined`, and the client-side fan-out to `basaltctl`.

/// `basalt.machine.v1`: operations on one node.
#[allow(missing_docs, clippy::all)]
pub mod machine {
    /// Version 1 of the machine API.
    pub mod v1 {
        tonic::include_proto!("basalt.machine.v1");
    }
}
