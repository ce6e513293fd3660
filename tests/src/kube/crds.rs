//! CRDs from the Go module cache (`go mod download`), never copied into
//! the repository: Istio's from [`ISTIO_API`], Gateway API's from
//! [`GATEWAY_API`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::{run, KubeError, Result, GATEWAY_API, GATEWAY_API_KINDS, ISTIO_API};

/// The directory of a Go module in the module cache (`go mod download`).
fn go_module_dir(module: &'static str) -> Result<PathBuf> {
    let crd = |detail: String| KubeError::Crd { module, detail };
    let mut cmd = Command::new("go");
    cmd.args(["mod", "download", "-json", module])
        .current_dir(std::env::temp_dir())
        .env("GOFLAGS", "-mod=mod");
    let out = run(
        cmd,
        &format!("go mod download {module}"),
        None,
        Duration::from_secs(300),
    )
    .map_err(|e| crd(e.to_string()))?;
    let info: Value = serde_json::from_str(&out.stdout)
        .map_err(|e| crd(format!("go mod download: {e}: {}", out.stderr.trim())))?;
    info["Dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| crd(format!("go mod download answered {info}")))
}

fn read_module_file(module: &'static str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| KubeError::Crd {
        module,
        detail: format!("{}: {e}", path.display()),
    })
}

/// The AuthorizationPolicy CRD from the Go module [`ISTIO_API`].
pub fn authorization_policy_crd() -> Result<String> {
    istio_crd("authorizationpolicies.security.istio.io")
}

/// The WorkloadEntry CRD (networking.istio.io) from the Go module [`ISTIO_API`].
pub fn workload_entry_crd() -> Result<String> {
    istio_crd("workloadentries.networking.istio.io")
}

/// The CRD named `name` (`<plural>.<group>`) from the Go module [`ISTIO_API`].
fn istio_crd(name: &str) -> Result<String> {
    let path = go_module_dir(ISTIO_API)?.join("kubernetes/customresourcedefinitions.gen.yaml");
    let line = format!("name: {name}");
    read_module_file(ISTIO_API, &path)?
        .split("\n---\n")
        .find(|d| d.contains(&line))
        .map(str::to_string)
        .ok_or_else(|| KubeError::Crd {
            module: ISTIO_API,
            detail: format!("no CRD {name} in {}", path.display()),
        })
}

/// The CRDs of [`GATEWAY_API_KINDS`] from the Go module [`GATEWAY_API`].
pub fn gateway_api_crds() -> Result<Vec<String>> {
    let dir = go_module_dir(GATEWAY_API)?.join("config/crd/experimental");
    GATEWAY_API_KINDS
        .iter()
        .map(|kind| {
            read_module_file(
                GATEWAY_API,
                &dir.join(format!("gateway.networking.k8s.io_{kind}.yaml")),
            )
        })
        .collect()
}
