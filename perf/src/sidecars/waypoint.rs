//! The bootstrap of an Envoy waypoint, generated from the mesh it serves.
//!
//! Shaped the way Istio configures its Envoy waypoint, with static
//! resources in place of xDS, so that Envoy sits exactly in the Trellis
//! waypoint's place (node proxy ══HBONE══> waypoint ══HBONE══> node proxy):
//!
//! * `connect_terminate` on `<pod ip>:15008`: mTLS (TLS 1.3, ALPN h2, the
//!   peer's certificate checked against the dev CA root and the trust
//!   domain's SPIFFE prefix) and an HTTP/2 connection manager that accepts
//!   `CONNECT` (`allow_connect`, `upgrade_configs` CONNECT, a
//!   `connect_matcher` route) and hands each tunnel's bytes to the internal
//!   listener `main_internal`. A `set_filter_state` filter passes along, as
//!   Istio's waypoint does, the tunnel's `:authority` as the original
//!   destination and the peer's SPIFFE ID as the caller's principal.
//! * `main_internal` (an internal listener): the `original_dst` listener
//!   filter restores the service address from that filter state, one
//!   filter chain per service port runs the L7 chain: the RBAC filter (the
//!   service's ALLOW policy, the principal read from the filter state), the
//!   route with its header filter and per-route stats, and the router.
//! * one cluster per service port (`outbound|<port>||<host>`) whose
//!   endpoints are internal addresses of `connect_originate`, each carrying
//!   its pod's `ip:port` as `envoy.filters.listener.original_dst` metadata.
//! * `connect_originate` (an internal listener): `original_dst` restores the
//!   endpoint's address; one filter chain per endpoint runs `tcp_proxy` with
//!   `tunneling_config` (HTTP/2 `CONNECT` to `ip:port`) over the cluster of
//!   the endpoint's identity: `ORIGINAL_DST` with the port overridden to
//!   15008, HTTP/2, mTLS with the waypoint's certificate and the endpoint's
//!   SPIFFE ID required as URI SAN.
//!
//! What is not Istio's: static config instead of xDS; upstream Envoy has no
//! Istio stats filter (`istio_requests_total` labelled by peer metadata) and
//! no metadata exchange, so the stats are Envoy's own per-listener,
//! per-route and per-cluster counters and histograms; the caller's
//! principal travels in a generic string filter-state object, where Istio
//! uses its own filter-state types.

use std::net::{IpAddr, SocketAddr};

use serde_json::{json, Value};

use super::bootstrap::{
    original_dst_filter, router, socket_address, tcp_proxy, tls_transport, CertFiles, TlsFlavor,
};

/// The HBONE port the waypoint terminates and the node proxies listen on.
pub const HBONE_PORT: u16 = 15008;
/// Envoy's admin port, on 127.0.0.1 in the waypoint's pod.
pub const ADMIN_PORT: u16 = super::bootstrap::ADMIN_PORT;
/// Filter-state key of the caller's SPIFFE ID (the HBONE peer's certificate).
pub const PEER_PRINCIPAL_KEY: &str = "io.trellis.peer_principal";
/// The internal listener running the L7 chains.
pub const MAIN_INTERNAL: &str = "main_internal";
/// The internal listener originating HBONE to the endpoints' node proxies.
pub const CONNECT_ORIGINATE: &str = "connect_originate";
/// Stat prefix of the HBONE-terminating connection manager.
pub const CONNECT_TERMINATE: &str = "connect_terminate";
/// The metadata namespace `original_dst` reads on internal listeners.
const ORIGINAL_DST_NS: &str = "envoy.filters.listener.original_dst";

/// How a service port is spoken, which decides its route match and the
/// upstream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortProtocol {
    /// HTTP/1.1 or HTTP/2 (h2c), kept as the client spoke it.
    Http,
    /// gRPC over HTTP/2.
    Grpc,
}

/// What a route matches, in Gateway API terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMatch {
    /// HTTPRoute `PathPrefix`: whole path segments (`/a` matches `/a`, `/a/b`, not `/ab`).
    PathPrefix(String),
    /// GRPCRoute `method.service`: every method of that service.
    GrpcService(String),
}

/// One route of a service port: its match and the request headers it sets
/// (a `RequestHeaderModifier` filter's `set`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: String,
    pub matches: RouteMatch,
    pub set_headers: Vec<(String, String)>,
}

/// A service port the waypoint serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    pub port: u16,
    pub target_port: u16,
    pub protocol: PortProtocol,
    pub routes: Vec<RouteSpec>,
}

/// A pod behind a service: its address and the identity its node proxy
/// presents for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub spiffe_id: String,
}

/// A rule of an ALLOW policy: callers (SPIFFE IDs) and paths in Istio's
/// syntax (exact, `prefix*`, `*suffix`, or `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub principals: Vec<String>,
    pub paths: Vec<String>,
}

/// A service whose traffic goes through this waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointService {
    /// Fully qualified host name (`web.bench.svc.cluster.local`).
    pub hostname: String,
    pub vip: IpAddr,
    pub ports: Vec<ServicePortSpec>,
    pub endpoints: Vec<Endpoint>,
    /// The ALLOW policy's rules (policy name, rules); None: no policy, all allowed.
    pub allow: Option<(String, Vec<AllowRule>)>,
}

/// Everything the waypoint's config depends on.
#[derive(Debug, Clone)]
pub struct WaypointConfig<'a> {
    pub name: &'a str,
    /// The waypoint pod's address: the HBONE listener binds it.
    pub ip: IpAddr,
    pub certs: CertFiles,
    pub trust_domain: &'a str,
    pub services: &'a [WaypointService],
}

/// The cluster of a service port, in Istio's form.
pub fn service_cluster(svc: &WaypointService, port: u16) -> String {
    format!("outbound|{port}||{}", svc.hostname)
}

/// The HBONE cluster towards endpoints with identity `spiffe_id`.
pub fn hbone_cluster(spiffe_id: &str) -> String {
    format!("{CONNECT_ORIGINATE}|{spiffe_id}")
}

/// The stat prefix of a service port's connection manager.
pub fn port_stat_prefix(svc: &WaypointService, port: u16) -> String {
    format!("inbound-vip|{port}|http|{}", svc.hostname)
}

/// The whole bootstrap as JSON (Envoy reads it with `-c file.json`).
pub fn bootstrap(cfg: &WaypointConfig) -> Value {
    let mut clusters = vec![internal_cluster(MAIN_INTERNAL, None)];
    for svc in cfg.services {
        for p in &svc.ports {
            clusters.push(service_cluster_config(svc, p));
        }
    }
    for id in identities(cfg.services) {
        clusters.push(hbone_cluster_config(cfg, &id));
    }
    json!({
        "node": {"id": format!("waypoint~{}", cfg.name), "cluster": cfg.name},
        "admin": {"address": socket_address("127.0.0.1", ADMIN_PORT)},
        "bootstrap_extensions": [{
            "name": "envoy.bootstrap.internal_listener",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
        }],
        "static_resources": {
            "listeners": [
                connect_terminate(cfg),
                main_internal(cfg),
                connect_originate(cfg),
            ],
            "clusters": clusters,
        },
    })
}

/// Every endpoint identity, once, in order of appearance.
fn identities(services: &[WaypointService]) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for e in services.iter().flat_map(|s| &s.endpoints) {
        if !ids.contains(&e.spiffe_id) {
            ids.push(e.spiffe_id.clone());
        }
    }
    ids
}

fn internal_address(listener: &str, endpoint_id: Option<&str>) -> Value {
    let mut a = json!({"server_listener_name": listener});
    if let Some(id) = endpoint_id {
        a["endpoint_id"] = json!(id);
    }
    json!({"envoy_internal_address": a})
}

/// The transport socket of a cluster whose endpoints are internal
/// listeners; the endpoints' `original_dst` metadata goes along.
fn internal_upstream() -> Value {
    json!({
        "name": "envoy.transport_sockets.internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            "passthrough_metadata": [{"kind": {"host": {}}, "name": ORIGINAL_DST_NS}],
            "transport_socket": {
                "name": "envoy.transport_sockets.raw_buffer",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"},
            },
        },
    })
}

fn internal_cluster(listener: &str, endpoints: Option<Vec<Value>>) -> Value {
    let endpoints = endpoints.unwrap_or_else(|| {
        vec![json!({"endpoint": {"address": internal_address(listener, None)}})]
    });
    json!({
        "name": listener,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": listener, "endpoints": [{"lb_endpoints": endpoints}]},
        "transport_socket": internal_upstream(),
    })
}

fn http_protocol_options(explicit_h2: bool) -> Value {
    let config = if explicit_h2 {
        json!({"explicit_http_config": {"http2_protocol_options": {}}})
    } else {
        json!({"use_downstream_protocol_config": {"http_protocol_options": {}, "http2_protocol_options": {}}})
    };
    let mut opts = json!({"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"});
    for (k, v) in config.as_object().expect("object") {
        opts[k] = v.clone();
    }
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts})
}

fn connect_terminate(cfg: &WaypointConfig) -> Value {
    let state = |key: &str, format: &str, factory: Option<&str>| {
        let mut v = json!({
            "object_key": key,
            "format_string": {"text_format_source": {"inline_string": format}},
            "shared_with_upstream": "ONCE",
        });
        if let Some(f) = factory {
            v["factory_key"] = json!(f);
        }
        v
    };
    json!({
        "name": CONNECT_TERMINATE,
        "address": socket_address(&cfg.ip.to_string(), HBONE_PORT),
        "filter_chains": [{
            "transport_socket": tls_transport(
                TlsFlavor::Hbone,
                true,
                &cfg.certs,
                json!({"prefix": format!("spiffe://{}/", cfg.trust_domain)}),
            ),
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": CONNECT_TERMINATE,
                    "codec_type": "HTTP2",
                    "http2_protocol_options": {"allow_connect": true},
                    "upgrade_configs": [{"upgrade_type": "CONNECT"}],
                    // Tunnels live as long as their connections do.
                    "stream_idle_timeout": "0s",
                    "route_config": {
                        "name": CONNECT_TERMINATE,
                        "virtual_hosts": [{
                            "name": CONNECT_TERMINATE,
                            "domains": ["*"],
                            "routes": [{
                                "match": {"connect_matcher": {}},
                                "route": {
                                    "cluster": MAIN_INTERNAL,
                                    "timeout": "0s",
                                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
                                },
                            }],
                        }],
                    },
                    "http_filters": [
                        {
                            "name": "envoy.filters.http.set_filter_state",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
                                "on_request_headers": [
                                    state("envoy.filters.listener.original_dst.local_ip", "%REQ(:AUTHORITY)%", None),
                                    state("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", None),
                                    state(PEER_PRINCIPAL_KEY, "%DOWNSTREAM_PEER_URI_SAN%", Some("envoy.string")),
                                ],
                            },
                        },
                        router(),
                    ],
                },
            }],
        }],
    })
}

fn main_internal(cfg: &WaypointConfig) -> Value {
    let chains: Vec<Value> = cfg
        .services
        .iter()
        .flat_map(|svc| {
            svc.ports.iter().map(move |p| {
                json!({
                    "name": format!("{}|{}", svc.hostname, p.port),
                    "filter_chain_match": {
                        "prefix_ranges": [{"address_prefix": svc.vip.to_string(), "prefix_len": host_prefix_len(svc.vip)}],
                        "destination_port": p.port,
                    },
                    "filters": [service_hcm(cfg, svc, p)],
                })
            })
        })
        .collect();
    json!({
        "name": MAIN_INTERNAL,
        "internal_listener": {},
        "listener_filters": [original_dst_filter()],
        "filter_chains": chains,
    })
}

fn host_prefix_len(ip: IpAddr) -> u32 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// The L7 chain of one service port: RBAC, routes, router.
fn service_hcm(cfg: &WaypointConfig, svc: &WaypointService, p: &ServicePortSpec) -> Value {
    let prefix = port_stat_prefix(svc, p.port);
    let cluster = service_cluster(svc, p.port);
    let routes: Vec<Value> = p
        .routes
        .iter()
        .map(|r| {
            let matcher = match &r.matches {
                RouteMatch::PathPrefix(path) if path == "/" => json!({"prefix": "/"}),
                RouteMatch::PathPrefix(path) => {
                    json!({"path_separated_prefix": path.trim_end_matches('/')})
                }
                RouteMatch::GrpcService(service) => {
                    json!({"prefix": format!("/{service}/"), "grpc": {}})
                }
            };
            let headers: Vec<Value> = r
                .set_headers
                .iter()
                .map(|(k, v)| json!({"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}))
                .collect();
            json!({
                "name": r.name,
                "match": matcher,
                "request_headers_to_add": headers,
                // The bench judges slow answers itself, as with the other columns.
                "route": {"cluster": cluster, "timeout": "0s"},
                // Per-route request counters by response code and latency
                // histograms: the nearest upstream Envoy has to Istio's
                // request metrics.
                "stat_prefix": format!("{}.{}", svc.hostname, r.name),
            })
        })
        .collect();
    let mut filters = Vec::new();
    if let Some((name, rules)) = &svc.allow {
        filters.push(rbac(cfg, name, rules));
    }
    filters.push(router());
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "codec_type": "AUTO",
            "route_config": {
                "name": prefix,
                "virtual_hosts": [{"name": svc.hostname, "domains": ["*"], "routes": routes}],
            },
            "http_filters": filters,
        },
    })
}

/// An Istio path pattern as an Envoy path matcher.
pub fn path_matcher(pattern: &str) -> Value {
    if pattern == "*" {
        json!({"prefix": "/"})
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        json!({"prefix": prefix})
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        json!({"suffix": suffix})
    } else {
        json!({"exact": pattern})
    }
}

/// The RBAC filter of an ALLOW policy: a request passes if some rule has
/// its caller among the principals and its path among the paths.
fn rbac(_cfg: &WaypointConfig, policy: &str, rules: &[AllowRule]) -> Value {
    let policies: serde_json::Map<String, Value> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let principals: Vec<Value> = r
                .principals
                .iter()
                .map(|p| json!({"filter_state": {"key": PEER_PRINCIPAL_KEY, "string_match": {"exact": p}}}))
                .collect();
            let permissions: Vec<Value> = if r.paths.is_empty() {
                vec![json!({"any": true})]
            } else {
                let paths: Vec<Value> = r
                    .paths
                    .iter()
                    .map(|p| json!({"url_path": {"path": path_matcher(p)}}))
                    .collect();
                vec![json!({"or_rules": {"rules": paths}})]
            };
            let principals = if principals.is_empty() {
                vec![json!({"any": true})]
            } else {
                principals
            };
            (
                format!("{policy}[{i}]"),
                json!({"permissions": permissions, "principals": principals}),
            )
        })
        .collect();
    json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": policies},
        },
    })
}

fn service_cluster_config(svc: &WaypointService, p: &ServicePortSpec) -> Value {
    let name = service_cluster(svc, p.port);
    let endpoints: Vec<Value> = svc
        .endpoints
        .iter()
        .map(|e| {
            let dst = SocketAddr::new(e.ip, p.target_port).to_string();
            json!({
                "endpoint": {"address": internal_address(CONNECT_ORIGINATE, Some(&dst))},
                "metadata": {"filter_metadata": {ORIGINAL_DST_NS: {"local": dst}}},
            })
        })
        .collect();
    let mut c = internal_cluster(CONNECT_ORIGINATE, Some(endpoints));
    c["name"] = json!(name);
    c["load_assignment"]["cluster_name"] = json!(name);
    c["lb_policy"] = json!("ROUND_ROBIN");
    c["typed_extension_protocol_options"] = http_protocol_options(p.protocol == PortProtocol::Grpc);
    c
}

fn connect_originate(cfg: &WaypointConfig) -> Value {
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut chains = Vec::new();
    for e in cfg.services.iter().flat_map(|s| &s.endpoints) {
        if seen.contains(&e.ip) {
            continue;
        }
        seen.push(e.ip);
        let cluster = hbone_cluster(&e.spiffe_id);
        let mut tunnel = tcp_proxy(&cluster, &cluster);
        tunnel["typed_config"]["tunneling_config"] =
            json!({"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"});
        chains.push(json!({
            "name": format!("{CONNECT_ORIGINATE}|{}", e.ip),
            "filter_chain_match": {
                "prefix_ranges": [{"address_prefix": e.ip.to_string(), "prefix_len": host_prefix_len(e.ip)}],
            },
            "filters": [tunnel],
        }));
    }
    json!({
        "name": CONNECT_ORIGINATE,
        "internal_listener": {},
        "listener_filters": [original_dst_filter()],
        "filter_chains": chains,
    })
}

fn hbone_cluster_config(cfg: &WaypointConfig, spiffe_id: &str) -> Value {
    json!({
        "name": hbone_cluster(spiffe_id),
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "original_dst_lb_config": {"upstream_port_override": HBONE_PORT},
        "connect_timeout": "5s",
        "typed_extension_protocol_options": http_protocol_options(true),
        "transport_socket": tls_transport(TlsFlavor::Hbone, false, &cfg.certs, json!({"exact": spiffe_id})),
    })
}

#[cfg(test)]
mod tests;
