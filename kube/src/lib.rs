//! A small Kubernetes API client, shared by the controller and the CNI
//! agent.
//!
//! - [`config`]: where the server is and the caller's credentials (a
//!   kubeconfig's current context, or in-cluster).
//! - [`client`]: JSON requests and watch streams over HTTP/1.1 + TLS.
//! - [`watch`]: list-then-watch of one collection, resumed and relisted as
//!   the API server requires, as a stream of [`watch::WatchEvent`]s.
//! - [`backoff`]: jittered retry delays.
//! - [`labels`]: the enrollment rule the controller and the CNI agent share.

pub mod backoff;
pub mod client;
pub mod config;
pub mod labels;
pub mod watch;

pub use backoff::Backoff;
pub use client::{Client, ClientError};
pub use config::{ApiConfig, ConfigError};
pub use watch::{WatchEvent, WatchOptions, WatchTarget};

/// Percent-encodes a query value: resourceVersions, continue tokens
/// (base64) and selectors (`spec.nodeName=node-a`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_encoded() {
        assert_eq!(super::percent_encode("12345"), "12345");
        assert_eq!(super::percent_encode("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
        assert_eq!(
            super::percent_encode("spec.nodeName=node-a"),
            "spec.nodeName%3Dnode-a"
        );
    }
}
