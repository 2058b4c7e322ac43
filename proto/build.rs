//! Compiles `proto/shoal/v1/*.proto` with protox (pure Rust), so that no system
//! `protoc` is needed, and generates the prost messages and the tonic service.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/shoal/v1/scheduler.proto",
        "proto/shoal/v1/piece.proto",
        "proto/shoal/v1/issuer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller per-call buffers than tonic's 8 KiB (src/codec.rs).
        .codec_path("crate::codec::LeanCodec")
        // A credential's Debug is written by hand (src/lib.rs): redacted.
        .skip_debug([".shoal.v1.PreheatCredential"])
        .compile_fds(fds)?;
    Ok(())
}
