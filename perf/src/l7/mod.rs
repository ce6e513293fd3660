//! The waypoint benchmark (`trellis-l7-bench`): the Trellis waypoint against
//! nginx as a plain reverse proxy, on the same machine, cores, upstream
//! servers and load, for HTTP/1.1, HTTP/2 and gRPC unary.
//!
//! * [`bench`](mod@bench): the running setup, the three paths, one checked run on a path.
//! * [`mesh`]: the topology, the mesh config (service, HTTPRoute, GRPCRoute,
//!   L7 AuthorizationPolicy), the waypoint process.
//! * [`envoy_waypoint`]: Envoy as the waypoint of service `web-envoy`, HBONE
//!   in and out, same routes and policy.
//! * [`nginx`]: nginx as a reverse proxy in the proxy pod; which modes the
//!   installed build supports.
//! * [`servers`]: the upstream HTTP/1.1 + HTTP/2 and gRPC servers.
//! * [`grpc`]: the hand-written gRPC service (no protoc).
//! * [`client`]: one client connection and one checked call per protocol.
//! * [`load`]: open-loop fixed-rate and closed-loop maximum-rate load, with
//!   the CPU time of the proxies over the measured window.
//! * [`profile`]: `perf record` of a proxy under load, summarised.
//! * [`report`]: result rows with targets, JSON and Markdown.

pub mod bench;
pub mod client;
pub mod envoy_waypoint;
pub mod grpc;
pub mod load;
pub mod mesh;
pub mod nginx;
mod opts;
pub mod profile;
pub mod program;
pub mod report;
pub mod servers;

/// The proxy under test (the waypoint or nginx) runs alone on this CPU.
pub const PROXY_CPU: usize = crate::SERVER_CPU;
/// The load generator, the upstream servers and the node proxies.
pub const LOAD_CPU: usize = crate::LOADGEN_CPU;

/// Upstream servers' ports, in both server pods.
pub const HTTP_PORT: u16 = 8080;
pub const GRPC_PORT: u16 = 9090;
/// HTTP response body: larger than one TCP segment (MSS 1448 on the
/// topology's veths), sent after the head in a write of its own.
pub const HTTP_BODY_BYTES: usize = 4096;
/// gRPC request and reply payload.
pub const GRPC_PAYLOAD_BYTES: usize = 128;
/// The header both proxies' routes set on the way up; the servers count it.
pub const ROUTE_HEADER: (&str, &str) = ("x-route", "bench");
