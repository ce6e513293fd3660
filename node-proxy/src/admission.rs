//! Admission of a connection to a local workload, shared by the HBONE and
//! plaintext inbound paths: L4 authorization, then the metrics guard (which
//! also writes the access log line when the connection ends).

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::Identity;
use tracing::info;
use trellis_core::authz::{self, ConnContext, Decision, DenyReason};
use trellis_core::config::Workload;
use trellis_core::metrics::{
    ConnectionGuard, ConnectionLabels, ErrorReason, Reporter, SecurityPolicy,
};

use crate::context::ProxyCtx;

/// Evaluates policy for `client` → `target` on `dst` and opens the metrics
/// guard. A denied connection is counted and logged here; the caller only
/// has to refuse it in its protocol's way.
pub fn admit(
    proxy: &ProxyCtx,
    dst: &Arc<Workload>,
    src_identity: Option<&Identity>,
    client: SocketAddr,
    target: SocketAddr,
    direction: &'static str,
) -> (ConnectionGuard, Result<(), DenyReason>) {
    let (src_wl, decision, service) = {
        let state = proxy.state.load();
        let decision = authz::evaluate(
            state.policies_for(dst),
            &ConnContext {
                src_identity,
                src_ip: client.ip(),
                dst_ip: target.ip(),
                dst_port: target.port(),
            },
        );
        let src_wl = state.workload_by_ip(client.ip()).cloned();
        let service = state.service_for_workload_port(dst, target.port());
        (src_wl, decision, service)
    };
    let security = match src_identity {
        Some(_) => SecurityPolicy::MutualTls,
        None => SecurityPolicy::Unknown,
    };
    let labels = ConnectionLabels::new(
        Reporter::Destination,
        src_wl.as_deref(),
        src_identity.cloned(),
        Some(dst),
        Some(dst.identity()),
        service.as_deref(),
        security,
    );
    let mut guard = proxy
        .metrics
        .connection_opened(labels, client, target, direction);
    match decision {
        Decision::Allow => (guard, Ok(())),
        Decision::Deny(reason) => {
            proxy.metrics.record_error(ErrorReason::PolicyDenied);
            info!(src.addr = %client, dst.addr = %target, %reason, "connection denied by policy");
            guard.set_error(format!("denied: {reason}"));
            (guard, Err(reason))
        }
    }
}
