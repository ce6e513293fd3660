//! Compiles the protobuf messages in proto/ with protox, a pure-Rust
//! compiler, so the build needs no system protoc. With the `grpc` feature
//! the client and server stubs of the services (ADS, the CA) are generated
//! too; without it only messages, so the crate needs no runtime.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "istio/workload/workload.proto",
    "istio/security/authorization.proto",
    "istio/ca/ca.proto",
    "istio/zds/zds.proto",
    "envoy/service/discovery/v3/discovery.proto",
    "trellis/config/v1/config.proto",
];

/// A workload's services map is encoded in key order: with a HashMap the
/// bytes (and so the controller's content-hash version) of a workload in
/// two services changed from one encoding to the next, and it was pushed
/// again to its node although nothing had changed.
const DETERMINISTIC_MAP: &str = ".istio.workload.Workload.services";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_prost_build::configure()
            .btree_map(DETERMINISTIC_MAP)
            .include_file("protos.rs")
            .compile_fds(fds)?;
    } else {
        prost_build::Config::new()
            .btree_map([DETERMINISTIC_MAP])
            .include_file("protos.rs")
            .compile_fds(fds)?;
    }
    Ok(())
}
