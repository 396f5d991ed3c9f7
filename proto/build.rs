//! Generates the prost types from `proto/*.proto` with protox, so no system `protoc` is needed,
//! and, with the `grpc` feature, the tonic client and server stubs of the files that declare
//! services.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/wire.proto",
        "proto/broker.proto",
        "proto/storage.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .build_client(grpc)
        .build_server(grpc)
        .compile_fds(descriptors)?;
    Ok(())
}
