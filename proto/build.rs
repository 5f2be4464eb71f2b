//! Compiles the `.proto` files with `protox` (a protobuf compiler in Rust), so that a bare
//! machine without `protoc` builds the workspace.
//!
//! Besides the tonic code, the compiled file descriptor set (with source comments) is
//! written to `$OUT_DIR/basalt_descriptor.bin` and exported as
//! `basalt_proto::FILE_DESCRIPTOR_SET`: machined's tests check its authorization table
//! against it, and this crate's tests check that every element is documented.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/basalt/machine/v1/machine.proto",
        "proto/basalt/resource/v1/resource.proto",
        "proto/basalt/audit/v1/audit.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("basalt_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
