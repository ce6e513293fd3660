//! The controller's certificate authority: Istio's CreateCertificate.
//!
//! - [`keys`]: the CA's key material in Istio's "cacerts" layout, and `ca init`.
//! - [`sign`]: a CSR in, a leaf with only its SPIFFE URI SAN out.
//! - [`authorize`]: which caller may have which identity (a pure decision).
//! - [`serving`]: the controller's own TLS certificate for port 15012.
//! - [`service`]: the gRPC service tying the three to the caller's token.

pub mod authorize;
pub mod keys;
pub mod secret;
pub mod service;
pub mod serving;
pub mod sign;

pub use authorize::{authorize, requested_identity, Denied, MeshIndex, IMPERSONATED_IDENTITY};
pub use keys::{init, Ca, KeyFiles, KeysError};
pub use secret::SecretError;
pub use service::{CaMetrics, CaMetricsSnapshot, CaService, DEFAULT_MAX_VALIDITY};
pub use serving::ServingError;
pub use sign::{Csr, SignError};
