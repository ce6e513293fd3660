//! Admission of a connection to a local workload, shared by the HBONE and
//! plaintext inbound paths: L4 authorization, then the metrics guard (which
//! also writes the access log line when the connection ends).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::Identity;
use http::HeaderMap;
use tracing::info;
use trellis_api::config::Workload;
use trellis_core::authz::{self, ConnContext, Decision, DenyReason};
use trellis_core::baggage::Baggage;
use trellis_core::metrics::{
    ConnectionGuard, ConnectionLabels, ErrorReason, PeerFacts, Reporter, SecurityPolicy,
};

use crate::context::ProxyCtx;
use trellis_core::WorkloadIdentity;

/// Evaluates policy for `client` → `target` on `dst` and opens the metrics
/// guard. `client` is the original client (the HBONE `forwarded` address, or
/// the TCP peer); `peer` is the TCP peer that reached this proxy.
/// `connect_headers` are the HBONE CONNECT's other headers: the source's
/// `baggage` there labels a source the state does not hold. A denied
/// connection is counted and logged here; the caller only has to refuse it
/// in its protocol's way.
#[allow(clippy::too_many_arguments)]
pub fn admit(
    proxy: &ProxyCtx,
    dst: &Arc<Workload>,
    src_identity: Option<&Identity>,
    client: SocketAddr,
    peer: SocketAddr,
    target: SocketAddr,
    connect_headers: Option<&HeaderMap>,
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
    let src_baggage = source_baggage(src_wl.is_some(), connect_headers);
    let labels = ConnectionLabels::for_peers(
        Reporter::Destination,
        PeerFacts {
            workload: src_wl.as_deref(),
            identity: src_identity.cloned(),
            baggage: src_baggage.as_ref(),
        },
        PeerFacts::new(Some(dst), Some(dst.identity())),
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

/// The source's baggage, read only when the state does not hold the source
/// (the state wins) and the connection came with headers (HBONE).
pub fn source_baggage(source_known: bool, connect_headers: Option<&HeaderMap>) -> Option<Baggage> {
    if source_known {
        return None;
    }
    let baggage = Baggage::from_headers(connect_headers?);
    (!baggage.is_empty()).then_some(baggage)
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

    #[test]
    fn source_baggage_is_read_only_for_an_unknown_source() {
        let mut with = HeaderMap::new();
        with.insert(
            "baggage",
            http::HeaderValue::from_static("k8s.namespace.name=far,k8s.pod.name=remote-7"),
        );
        let mut junk = HeaderMap::new();
        junk.insert("baggage", http::HeaderValue::from_static("x=1,garbage"));
        let remote = Some("remote-7");
        // (what, source known, headers, expected workload from baggage)
        type Case<'a> = (
            &'a str,
            bool,
            Option<&'a HeaderMap>,
            Option<Option<&'a str>>,
        );
        let cases: [Case; 5] = [
            (
                "unknown source with baggage",
                false,
                Some(&with),
                Some(remote),
            ),
            ("known source: the state wins", true, Some(&with), None),
            ("plaintext: no headers", false, None, None),
            ("no baggage header", false, Some(&HeaderMap::new()), None),
            ("nothing usable in it", false, Some(&junk), None),
        ];
        for (what, known, headers, want) in cases {
            let got = source_baggage(known, headers);
            assert_eq!(got.as_ref().map(|b| b.workload.as_deref()), want, "{what}");
        }
    }
}
