//! The versioned gRPC API of Basalt OS.
//!
//! This crate owns the `.proto` files under `proto/` and the tonic client and server code
//! generated from them. Packages are versioned; a breaking change gets a new package
//! version, never an edit of a released one:
//!
//! - [`machine::v1`] (`basalt.machine.v1`): operations on one node (version, configuration,
//!   power, boot slots, services, logs, events, statistics);
//! - [`resource::v1`] (`basalt.resource.v1`): the typed resources controllers publish;
//! - [`audit::v1`] (`basalt.audit.v1`): the node's audit trail.
//!
//! The code is generated at build time by `protox` (a protobuf compiler written in Rust) and
//! `tonic-prost-build`, so building needs no system `protoc`. The compiled descriptors are
//! exported as [`FILE_DESCRIPTOR_SET`] so that tools can enumerate every RPC (machined's
//! test that its authorization table covers the whole API uses it).
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

/// `basalt.resource.v1`: the typed resources controllers publish.
#[allow(missing_docs, clippy::all)]
pub mod resource {
    /// Version 1 of the resource API.
    pub mod v1 {
        tonic::include_proto!("basalt.resource.v1");
    }
}

/// `basalt.audit.v1`: the node's audit trail.
#[allow(missing_docs, clippy::all)]
pub mod audit {
    /// Version 1 of the audit API.
    pub mod v1 {
        tonic::include_proto!("basalt.audit.v1");
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every `.proto` file of this crate and
/// their imports, with source comments.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/basalt_descriptor.bin"));

/// The full gRPC method path of every RPC in the API (e.g.
/// `/basalt.machine.v1.MachineService/Version`), read from [`FILE_DESCRIPTOR_SET`].
///
/// # Panics
///
/// Never in practice: the descriptor set is produced by this crate's build script, and a
/// test decodes it.
pub fn all_rpc_paths() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)
        .expect("the embedded descriptor set decodes");
    let mut paths = Vec::new();
    for file in &set.file {
        let package = file.package();
        if !package.starts_with("basalt.") {
            continue;
        }
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    paths
}
