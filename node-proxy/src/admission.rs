//! Admission of a connection to a local workload, shared by the HBONE and
//! plaintext inbound paths: L4 authorization, then the metrics guard (which
//! also writes the access log line when the connection ends).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;
use tracing::info;
use trellis_api::config::Workload;
use trellis_core::authz::{self, ConnContext, Decision, DenyReason};
use trellis_core::metrics::{
    ConnectionGuard, ConnectionLabels, ErrorReason, Reporter, SecurityPolicy,
};

use crate::context::ProxyCtx;
use trellis_core::WorkloadIdentity;

/// Evaluates policy for `client` → `target` on `dst` and opens the metrics
/// guard. `client` is the original client (the HBONE `forwarded` address, or
/// the TCP peer); `peer` is the TCP peer that reached this proxy. A denied
/// connection is counted and logged here; the caller only has to refuse it
/// in its protocol's way.
pub fn admit(
    proxy: &ProxyCtx,
    dst: &Arc<Workload>,
    src_identity: Option<&Identity>,
    client: SocketAddr,
    peer: SocketAddr,
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
        let src_wl = source_workload(src_identity, client.ip(), peer.ip(), |ip| {
            state.workload_by_ip(ip).cloned()
        });
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

/// The workload the metrics name as the source.
///
/// Over HBONE the source is the workload whose identity the peer proved: the
/// original client when it dialled directly, the waypoint when a waypoint
/// forwarded the request (its `forwarded` header still names the original
/// client, whose identity it does not hold). This matches ztunnel, whose
/// destination-side series for waypoint traffic read waypoint → server; the
/// waypoint reports client → server itself. Without an identity (plaintext)
/// the client's address is all there is.
pub fn source_workload(
    identity: Option<&Identity>,
    client: IpAddr,
    peer: IpAddr,
    lookup: impl Fn(IpAddr) -> Option<Arc<Workload>>,
) -> Option<Arc<Workload>> {
    let Some(id) = identity else {
        return lookup(client);
    };
    [client, peer]
        .into_iter()
        .filter_map(&lookup)
        .find(|w| &w.identity() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(name: &str, sa: &str, ip: &str) -> Arc<Workload> {
        let yaml = format!(
            "workloads:\n  - {{uid: demo/{name}, name: {name}, namespace: demo, serviceAccount: {sa}, addresses: [{ip}], node: node1, protocol: HBONE}}\n"
        );
        let cfg = trellis_api::config::parse(&yaml).unwrap();
        Arc::new(cfg.workloads[0].clone())
    }

    #[test]
    fn source_workload_is_the_one_whose_identity_the_peer_proved() {
        let client = wl("client", "client", "198.18.1.10");
        let waypoint = wl("waypoint", "waypoint", "198.18.2.5");
        let all = [client.clone(), waypoint.clone()];
        let lookup = |ip: IpAddr| all.iter().find(|w| w.addresses.contains(&ip)).cloned();
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let name = |w: Option<Arc<Workload>>| w.map(|w| w.name.clone());
        // (what, proven identity, forwarded client, TCP peer, expected source)
        type Case<'a> = (&'a str, Option<Identity>, &'a str, &'a str, Option<&'a str>);
        let cases: [Case; 5] = [
            (
                "direct: forwarded client holds the identity",
                Some(client.identity()),
                "198.18.1.10",
                "198.18.1.10",
                Some("client"),
            ),
            (
                "via waypoint: the peer holds it, not the forwarded client",
                Some(waypoint.identity()),
                "198.18.1.10",
                "198.18.2.5",
                Some("waypoint"),
            ),
            (
                "identity matches neither address: no workload is claimed",
                Some(waypoint.identity()),
                "198.18.1.10",
                "198.18.9.9",
                None,
            ),
            (
                "plaintext: the client's address",
                None,
                "198.18.1.10",
                "198.18.9.9",
                Some("client"),
            ),
            (
                "plaintext from an unknown address",
                None,
                "198.18.9.9",
                "198.18.9.9",
                None,
            ),
        ];
        for (what, id, c, p, want) in cases {
            let got = name(source_workload(id.as_ref(), ip(c), ip(p), lookup));
            assert_eq!(got.as_deref(), want, "{what}");
        }
    }
}
