//! Compiles the `.proto` files with `protox` (a protobuf compiler in Rust), so that a bare
//! machine without `protoc` builds the workspace.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/basalt/machine/v1/machine.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
