//! Compiles the protobuf messages in proto/ with protox, a pure-Rust
//! compiler, so the build needs no system protoc. Only messages are
//! generated here: the gRPC service stubs belong to the crates that do I/O,
//! which map these types in with `extern_path`.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
    "envoy/service/discovery/v3/discovery.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    prost_build::Config::new()
        .include_file("protos.rs")
        .compile_fds(fds)?;
    Ok(())
}
