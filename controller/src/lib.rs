//! The Trellis controller.
//!
//! Kubernetes objects (from the API server, or a folder of manifests) are
//! translated into the mesh's config model ([`trellis_api::config`]); the
//! result is served to node proxies and waypoints over Istio's delta
//! workload xDS, and workload certificates are issued over Istio's
//! CreateCertificate, both on one TLS gRPC port (15012).
//!
//! - [`auth`]: who a caller is, from its bearer token.
//! - [`ca`]: the certificate authority and its node authorization.
//! - [`kube`]: the API server as the source of objects (Kubernetes mode).
//! - [`objects`]: Kubernetes objects, the manifests folder, and their
//!   translation into the config model.
//! - [`xds`]: the delta ADS server.
//! - [`waypoints`]: in Kubernetes mode, the waypoint Deployments, Services
//!   and status of waypoint Gateways.
//! - [`serve`]: the TLS gRPC port (handshake, then tonic).
//! - [`cli`] and [`run`]: the `trellis-controller` binary's command line,
//!   and wiring the above into a running controller.

pub mod auth;
pub mod ca;
pub mod cli;
pub mod kube;
pub mod objects;
pub mod run;
pub mod serve;
pub mod waypoints;
pub mod xds;
