//! Envoy bootstrap configs for a sidecar mesh, generated from the topology.
//!
//! Shaped the way Istio's sidecar mode configures Envoy, with static
//! resources in place of xDS:
//!
//! * `virtualOutbound` on 0.0.0.0:15001 (the pod's nft `output` capture lands
//!   here) with the `original_dst` listener filter; one filter chain per
//!   mesh destination (pod IP and port) sending to that destination's
//!   cluster; anything else passes through in plaintext (Istio's
//!   `ALLOW_ANY`).
//! * one cluster per destination and port (`outbound|<port>||<pod>`),
//!   mTLS with this pod's SPIFFE certificate, the server's certificate
//!   checked against the dev CA root and against the destination's SPIFFE ID
//!   as URI SAN (Istio's per-service SAN list).
//! * `virtualInbound` on 0.0.0.0:15006 (the nft `prerouting` capture) with
//!   `original_dst`; mTLS required, the client's certificate checked against
//!   the root and the trust domain; then to the app at the original
//!   destination (an `ORIGINAL_DST` cluster).
//! * the variant decides the filters: [`Variant::L4`] puts `tcp_proxy` on
//!   every port; [`Variant::L7`] puts the HTTP connection manager (router
//!   only) on the ports marked HTTP, as Istio does by default for ports
//!   named or declared http, and `tcp_proxy` on the rest.
//!
//! Envoy's own upstream sockets carry the capture rules' proxy mark
//! (`SO_MARK`), so the pod's `output` chain lets them out instead of
//! redirecting them back to 15001; Istio exempts its proxy by UID instead.
//!
//! What is not Istio's: no xDS (static config), no Istio stats or
//! metadata-exchange filters (plain upstream Envoy has neither), no RBAC
//! filter (every peer in the trust domain is allowed). So the Envoy
//! columns are a lower bound for Istio's sidecars.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Envoy's outbound capture port in Istio's sidecar mode.
pub const OUTBOUND_PORT: u16 = 15001;
/// Envoy's inbound capture port in Istio's sidecar mode.
pub const INBOUND_PORT: u16 = 15006;
/// Envoy's admin port (Istio's), on 127.0.0.1 in the pod.
pub const ADMIN_PORT: u16 = 15000;
/// The port the capture rules leave alone (Trellis's HBONE port); nothing
/// of the sidecar mesh listens there.
pub const UNCAPTURED_PORT: u16 = 15008;

const SOL_SOCKET: i64 = 1;
const SO_MARK: i64 = 36;
const IPPROTO_IP: i64 = 0;
const IP_BIND_ADDRESS_NO_PORT: i64 = 24;

/// Which filters the sidecars run on HTTP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `tcp_proxy` on every port.
    L4,
    /// The HTTP connection manager on HTTP ports, `tcp_proxy` elsewhere.
    L7,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::L4 => "envoy-l4",
            Variant::L7 => "envoy-l7",
        }
    }
}

/// How a destination port is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Http,
}

/// A port of a mesh pod that other sidecars send to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod of the mesh as a destination: where it is and who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub ip: IpAddr,
    /// The SPIFFE ID its certificate carries, and the SAN callers require.
    pub spiffe_id: String,
    pub ports: Vec<PortSpec>,
    /// The addresses its clusters balance over; empty: `ip` itself (a pod
    /// called by its own address). A service lists its pods here and has
    /// its VIP as `ip`, as Istio's EDS gives each service cluster.
    pub endpoints: Vec<IpAddr>,
}

impl Destination {
    /// The addresses its clusters send to.
    pub fn endpoint_ips(&self) -> Vec<IpAddr> {
        if self.endpoints.is_empty() {
            vec![self.ip]
        } else {
            self.endpoints.clone()
        }
    }
}

/// The files of one sidecar's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// Leaf then root, PEM.
    pub chain: PathBuf,
    pub key: PathBuf,
    /// The dev CA root, PEM.
    pub root: PathBuf,
}

impl CertFiles {
    /// The usual names in `dir`: `chain.pem`, `key.pem`, `root.pem`.
    pub fn in_dir(dir: &Path) -> CertFiles {
        CertFiles {
            chain: dir.join("chain.pem"),
            key: dir.join("key.pem"),
            root: dir.join("root.pem"),
        }
    }
}

/// Everything one pod's sidecar config depends on.
#[derive(Debug, Clone)]
pub struct SidecarConfig<'a> {
    pub pod: &'a str,
    pub variant: Variant,
    pub certs: CertFiles,
    pub trust_domain: &'a str,
    /// Every other pod of the mesh this one may call (Istio without a
    /// `Sidecar` scope: all of them).
    pub destinations: &'a [Destination],
    /// SO_MARK on Envoy's upstream sockets: the capture rules' proxy mark.
    pub proxy_mark: u32,
    /// Ports this pod serves over HTTP (the inbound HTTP chains of the L7 variant).
    pub inbound_http_ports: &'a [u16],
}

/// The cluster name of a destination port, in Istio's form.
pub fn cluster_name(dest: &Destination, port: u16) -> String {
    format!("outbound|{port}||{}", dest.name)
}

/// The whole bootstrap as JSON (Envoy reads it with `-c file.json`).
pub fn bootstrap(cfg: &SidecarConfig) -> Value {
    let mut clusters: Vec<Value> = cfg
        .destinations
        .iter()
        .flat_map(|d| {
            d.ports
                .iter()
                .map(move |p| outbound_cluster(cfg, d, p.port))
        })
        .collect();
    clusters.push(passthrough_cluster(
        "PassthroughCluster",
        Some(cfg.proxy_mark),
    ));
    // Inbound to the app in this pod goes over `lo`, which the capture
    // rules leave alone: no mark needed.
    clusters.push(passthrough_cluster("InboundPassthroughCluster", None));
    json!({
        "node": {"id": format!("sidecar~{}", cfg.pod), "cluster": cfg.pod},
        "admin": {"address": socket_address("127.0.0.1", ADMIN_PORT)},
        "static_resources": {
            "listeners": [outbound_listener(cfg), inbound_listener(cfg)],
            "clusters": clusters,
        },
    })
}

pub(crate) fn socket_address(ip: &str, port: u16) -> Value {
    json!({"socket_address": {"address": ip, "port_value": port}})
}

pub(crate) fn original_dst_filter() -> Value {
    json!({
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"},
    })
}

pub(crate) fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        },
    })
}

fn http_connection_manager(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            "route_config": {
                "name": stat_prefix,
                "virtual_hosts": [{
                    "name": "all",
                    "domains": ["*"],
                    // No route timeout: the bench's slow responses are its
                    // own to judge, as with the other columns.
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "0s"}}],
                }],
            },
            "http_filters": [router()],
        },
    })
}

pub(crate) fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    })
}

/// The network filter for a port: HCM on HTTP ports of the L7 variant.
fn port_filter(variant: Variant, protocol: Protocol, stat_prefix: &str, cluster: &str) -> Value {
    match (variant, protocol) {
        (Variant::L7, Protocol::Http) => http_connection_manager(stat_prefix, cluster),
        _ => tcp_proxy(stat_prefix, cluster),
    }
}

fn tls_certificate(c: &CertFiles) -> Value {
    json!({
        "certificate_chain": {"filename": c.chain},
        "private_key": {"filename": c.key},
    })
}

/// The TLS an Envoy speaks to its peers: a sidecar's mTLS (TLS 1.2 and
/// up) or HBONE's (TLS 1.3 only, ALPN h2, no SNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsFlavor {
    Sidecar,
    Hbone,
}

/// A TLS transport socket presenting `certs` and checking the peer's
/// certificate against their root, its URI SAN with `san` (an Envoy string
/// matcher). `listener`: a listener's, which requires the client's
/// certificate; else a cluster's.
pub(crate) fn tls_transport(
    flavor: TlsFlavor,
    listener: bool,
    certs: &CertFiles,
    san: Value,
) -> Value {
    let mut common = json!({
        "tls_certificates": [tls_certificate(certs)],
        "validation_context": {
            "trusted_ca": {"filename": certs.root},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
        },
    });
    match flavor {
        TlsFlavor::Sidecar => {
            common["tls_params"] = json!({"tls_minimum_protocol_version": "TLSv1_2"});
        }
        TlsFlavor::Hbone => {
            common["tls_params"] = json!({"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_3"});
            common["alpn_protocols"] = json!(["h2"]);
        }
    }
    let mut context = if listener {
        json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
        })
    } else {
        json!({"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"})
    };
    context["common_tls_context"] = common;
    json!({"name": "envoy.transport_sockets.tls", "typed_config": context})
}

fn outbound_listener(cfg: &SidecarConfig) -> Value {
    let chains: Vec<Value> = cfg
        .destinations
        .iter()
        .flat_map(|d| {
            d.ports.iter().map(move |p| {
                let cluster = cluster_name(d, p.port);
                json!({
                    "name": cluster,
                    "filter_chain_match": {
                        "prefix_ranges": [{"address_prefix": d.ip.to_string(), "prefix_len": if d.ip.is_ipv4() { 32 } else { 128 }}],
                        "destination_port": p.port,
                    },
                    "filters": [port_filter(cfg.variant, p.protocol, &cluster, &cluster)],
                })
            })
        })
        .collect();
    json!({
        "name": "virtualOutbound",
        "address": socket_address("0.0.0.0", OUTBOUND_PORT),
        "listener_filters": [original_dst_filter()],
        "filter_chains": chains,
        "default_filter_chain": {
            "name": "PassthroughFilterChain",
            "filters": [tcp_proxy("PassthroughCluster", "PassthroughCluster")],
        },
    })
}

fn inbound_listener(cfg: &SidecarConfig) -> Value {
    // PeerAuthentication STRICT: any workload of the trust domain.
    let tls = tls_transport(
        TlsFlavor::Sidecar,
        true,
        &cfg.certs,
        json!({"prefix": format!("spiffe://{}/", cfg.trust_domain)}),
    );
    let mut chains: Vec<Value> = Vec::new();
    if cfg.variant == Variant::L7 {
        for &port in cfg.inbound_http_ports {
            let name = format!("inbound|{port}||");
            chains.push(json!({
                "name": name,
                "filter_chain_match": {"destination_port": port},
                "transport_socket": tls.clone(),
                "filters": [http_connection_manager(&name, "InboundPassthroughCluster")],
            }));
        }
    }
    chains.push(json!({
        "name": "inbound|tcp",
        "transport_socket": tls,
        "filters": [tcp_proxy("inbound|tcp", "InboundPassthroughCluster")],
    }));
    json!({
        "name": "virtualInbound",
        "address": socket_address("0.0.0.0", INBOUND_PORT),
        "listener_filters": [original_dst_filter()],
        "filter_chains": chains,
    })
}

/// Socket options of Envoy's upstream sockets towards other pods: the proxy
/// mark, and no port reservation at bind (connect picks the port, as for an
/// unbound socket, so TIME_WAIT ports are reused as usual).
fn upstream_bind(mark: u32) -> Value {
    json!({
        "source_address": {"address": "0.0.0.0", "port_value": 0},
        "socket_options": [
            {"level": SOL_SOCKET, "name": SO_MARK, "int_value": mark, "state": "STATE_PREBIND"},
            {"level": IPPROTO_IP, "name": IP_BIND_ADDRESS_NO_PORT, "int_value": 1, "state": "STATE_PREBIND"},
        ],
    })
}

fn outbound_cluster(cfg: &SidecarConfig, dest: &Destination, port: u16) -> Value {
    let name = cluster_name(dest, port);
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "lb_policy": "ROUND_ROBIN",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": dest.endpoint_ips().iter().map(|ip| json!({"endpoint": {"address": socket_address(&ip.to_string(), port)}})).collect::<Vec<_>>()}],
        },
        "upstream_bind_config": upstream_bind(cfg.proxy_mark),
        "transport_socket": tls_transport(
            TlsFlavor::Sidecar,
            false,
            &cfg.certs,
            json!({"exact": dest.spiffe_id}),
        ),
    })
}

/// An `ORIGINAL_DST` cluster: to wherever the captured connection was going.
fn passthrough_cluster(name: &str, mark: Option<u32>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
    });
    if let Some(mark) = mark {
        c["upstream_bind_config"] = upstream_bind(mark);
    }
    c
}

#[cfg(test)]
mod tests;
