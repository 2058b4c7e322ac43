//! Compiles `proto/runtime/v1/api.proto` (the image half of the Kubernetes CRI,
//! `runtime.v1`) with protox (pure Rust, no system `protoc`), and generates the prost
//! messages and the tonic client that `src/cri.rs` wraps.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let file = "proto/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([file], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
