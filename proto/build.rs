//! Compiles `tuna/v1/*.proto` with protox (pure Rust), so no system `protoc` is needed.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const PROTOS: &[&str] = &[
        "tuna/v1/job.proto",
        "tuna/v1/file.proto",
        "tuna/v1/artifact.proto",
        "tuna/v1/model.proto",
        "tuna/v1/worker.proto",
        "tuna/v1/sweep.proto",
        "tuna/v1/admin.proto",
    ];
    // tonic-prost-build's own rerun-if-changed is a no-op since 0.14 (grpc-rust #2511).
    println!("cargo:rerun-if-changed=tuna");
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds does not write the descriptor set itself; reflection needs it.
    std::fs::write(
        out.join("tuna_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
