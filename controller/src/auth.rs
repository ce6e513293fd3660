//! Who a caller of the controller is. Both xDS and the CA take
//! `authorization: Bearer <token>`; an [`Authenticator`] turns the token into
//! a [`Caller`], and each service decides what that caller may have.

pub mod token_file;
pub mod token_review;

pub use token_file::{TokenFile, TokenFileError};
pub use token_review::{TokenReview, TokenReviewConfig};

use std::future::Future;
use std::pin::Pin;

/// An authenticated client of the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A node proxy: it may have the state and the certificates of the pods
    /// scheduled on `node`, and nothing of other nodes' pods.
    NodeProxy { node: String },
    /// A caller with one identity of its own, its service account's: a
    /// waypoint, or the dedicated node proxy of a VM or bare host (whose
    /// token is its WorkloadEntry's service account's, not pod-bound). It
    /// may have its own identity's certificate only; its xDS wildcard
    /// covers the whole mesh.
    Waypoint { spiffe_id: String },
}

/// Why a caller was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no bearer token; send `authorization: Bearer <token>`")]
    Missing,
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// Checks bearer tokens. In manifests mode against a bootstrap token file,
/// in Kubernetes mode with a TokenReview.
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>>;
}

/// The token from an `authorization` metadata value.
pub fn bearer(value: Option<&str>) -> Result<&str, AuthError> {
    let v = value.ok_or(AuthError::Missing)?.trim();
    match v.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(AuthError::Missing),
    }
}
