//! HBONE: HTTP/2 CONNECT tunnels inside mutual TLS, as used by Istio ambient (port 15008).
//!
//! The crate is transport only: it knows certificates, identities, TLS, HTTP/2
//! and tunnels, and nothing about configuration files, xDS or Kubernetes.
//!
//! - [`identity`]: SPIFFE identities.
//! - [`tls`]: trust bundles, workload certificates, rustls configs.
//! - [`ca`]: a development CA.
//! - [`client`] / [`server`]: the two ends of a tunnel; [`pool`] shares client connections.
//! - [`stream`]: the tunnel byte stream and the fast copy loop.
//! - [`lite`]: the same tunnels from one task per connection, without h2.
//! - [`quiet`]: a future wrapper that is polled only when its own waker fired.

#![warn(missing_docs)]

mod batch;
pub mod ca;
pub mod client;
mod conn_io;
mod copy;
pub mod error;
pub mod flood;
mod frames;
pub mod goaway;
pub mod identity;
mod keepalive;
pub mod lite;
pub mod pool;
pub mod quiet;
mod request;
pub mod server;
pub mod settings;
pub mod stream;
#[cfg(test)]
mod test_h2;
pub mod tls;
pub mod transport;

pub use ca::{CaError, DevCa};
pub use client::{tls_connect, ClientConn, ConnectRequest};
pub use error::{ErrorSide, HboneError};
pub use goaway::GoAwaySignal;
pub use identity::{Identity, IdentityError};
pub use pool::{Pool, PoolKey, PoolSettings, PoolStats};
pub use quiet::quiet;
pub use request::{RequestError, TRACEPARENT};
pub use server::{serve, serve_with_shutdown, tls_accept, IncomingRequest, PREFACE_TIMEOUT};
pub use settings::H2Settings;
pub use stream::{copy_bidirectional, H2Stream};
pub use tls::{client_config, peer_identity, server_config, TlsError, TrustBundle, WorkloadCert};
pub use transport::{transport, ClientTls, ServerTls, Transport};
