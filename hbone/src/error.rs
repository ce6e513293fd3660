//! The crate-wide tunnel error and the mapping of TLS / HTTP/2 failures onto it.
//!
//! Errors carry a hint telling the operator what to check, because most HBONE
//! failures in practice are misconfiguration (trust roots, identities, ports).

use http::StatusCode;
use rustls::{AlertDescription, CertificateError};
use std::io;

use crate::conn_io::TlsFailure;
use crate::identity::Identity;
use crate::request::RequestError;
use crate::tls::TlsError;

/// Which side of a tunnel an error is attributed to.
///
/// `Upstream` is the remote HBONE peer and the network path to it (TLS, HTTP/2,
/// the tunnel's status); `Downstream` is the plain TCP socket handed to
/// [`copy_bidirectional`](crate::stream::copy_bidirectional); `Internal` is our
/// own configuration or state. An inbound proxy, where the HBONE peer is the
/// downstream, should swap the first two when reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorSide {
    /// The local plain-TCP side of the tunnel.
    Downstream,
    /// The remote HBONE peer or the path to it.
    Upstream,
    /// Our own configuration or a local failure.
    Internal,
}

/// Every way establishing or running an HBONE tunnel can fail.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// I/O on the connection to the HBONE peer failed.
    #[error(
        "hbone connection i/o error: {0}; check network connectivity to the peer's port 15008"
    )]
    Io(#[source] io::Error),
    /// I/O on the local plain-TCP side of the tunnel failed.
    #[error("local tcp connection error: {0}")]
    Tcp(#[source] io::Error),
    /// The TLS handshake failed; `hint` says what to check.
    #[error("tls handshake failed: {detail}; {hint}")]
    TlsHandshake {
        /// What rustls (or the socket) reported.
        detail: String,
        /// What the operator should check.
        hint: &'static str,
    },
    /// The client did not offer ALPN `h2`; the server refused it in the TLS handshake.
    #[error("tls handshake refused: the client offered alpn {offered}, but hbone requires alpn h2 (http/2 over mtls); check the client is an hbone client")]
    AlpnNotH2 {
        /// The protocols the client offered, or "none".
        offered: String,
    },
    /// The server's certificate is valid but names an identity we did not ask for.
    #[error("peer presented identity {presented} but expected one of [{}]; check that the address belongs to the intended workload and its service account", join(expected))]
    IdentityMismatch {
        /// Identities the caller accepted.
        expected: Vec<Identity>,
        /// Identity the peer's certificate carries.
        presented: Identity,
    },
    /// Building TLS configuration or reading certificates failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The peer violated HTTP/2 or the connection failed at the HTTP/2 layer.
    #[error("http/2 error on hbone connection: {0}")]
    H2(#[source] h2::Error),
    /// The peer broke HTTP/2's rules (we answered with GOAWAY or RST_STREAM
    /// carrying `reason`), or closed the connection with an error.
    #[error("http/2 protocol error on hbone connection: {detail} ({reason}); the peer is not a conforming hbone endpoint")]
    Protocol {
        /// The HTTP/2 error code sent or received.
        reason: h2::Reason,
        /// What was wrong.
        detail: &'static str,
    },
    /// The peer reset the tunnel stream.
    #[error("peer reset the tunnel stream with {0}; the destination proxy or workload aborted the connection")]
    StreamReset(h2::Reason),
    /// The destination proxy answered the CONNECT with a non-200 status.
    #[error("destination proxy refused the tunnel with status {0}")]
    Status(StatusCode),
    /// The connection ended before the tunnel was established.
    #[error("hbone connection closed by the peer; it may be shutting down or have rejected our certificate")]
    ConnectionClosed,
    /// Something did not happen in time; the field says what.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// HTTP/2 settings are out of the range the protocol allows.
    #[error("invalid http/2 settings: {0}")]
    InvalidSettings(String),
    /// A CONNECT request could not be built or was invalid.
    #[error("invalid hbone request: {0}")]
    InvalidRequest(#[from] RequestError),
}

fn join(ids: &[Identity]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl HboneError {
    /// Which side of the tunnel this error should be attributed to.
    pub fn side(&self) -> ErrorSide {
        match self {
            HboneError::Tcp(_) => ErrorSide::Downstream,
            HboneError::Tls(_) | HboneError::InvalidSettings(_) => ErrorSide::Internal,
            HboneError::Io(_)
            | HboneError::TlsHandshake { .. }
            | HboneError::AlpnNotH2 { .. }
            | HboneError::IdentityMismatch { .. }
            | HboneError::H2(_)
            | HboneError::Protocol { .. }
            | HboneError::StreamReset(_)
            | HboneError::Status(_)
            | HboneError::ConnectionClosed
            | HboneError::Timeout(_)
            | HboneError::InvalidRequest(_) => ErrorSide::Upstream,
        }
    }

    /// A copy for handing one failure to several waiting callers.
    ///
    /// Wrapped `io::Error`s and `h2::Error`s are not `Clone`; their copies keep
    /// the kind/reason and message, which is all callers act on.
    pub(crate) fn duplicate(&self) -> HboneError {
        match self {
            HboneError::Io(e) => HboneError::Io(io::Error::new(e.kind(), e.to_string())),
            HboneError::Tcp(e) => HboneError::Tcp(io::Error::new(e.kind(), e.to_string())),
            HboneError::TlsHandshake { detail, hint } => HboneError::TlsHandshake {
                detail: detail.clone(),
                hint,
            },
            HboneError::AlpnNotH2 { offered } => HboneError::AlpnNotH2 {
                offered: offered.clone(),
            },
            HboneError::IdentityMismatch {
                expected,
                presented,
            } => HboneError::IdentityMismatch {
                expected: expected.clone(),
                presented: presented.clone(),
            },
            HboneError::Tls(e) => HboneError::Tls(e.clone()),
            HboneError::H2(e) => match e.reason() {
                Some(reason) => HboneError::H2(h2::Error::from(reason)),
                None => HboneError::ConnectionClosed,
            },
            HboneError::Protocol { reason, detail } => HboneError::Protocol {
                reason: *reason,
                detail,
            },
            HboneError::StreamReset(r) => HboneError::StreamReset(*r),
            HboneError::Status(s) => HboneError::Status(*s),
            HboneError::ConnectionClosed => HboneError::ConnectionClosed,
            HboneError::Timeout(what) => HboneError::Timeout(what),
            HboneError::InvalidSettings(m) => HboneError::InvalidSettings(m.clone()),
            HboneError::InvalidRequest(e) => HboneError::InvalidRequest(e.clone()),
        }
    }

    /// Maps an h2 error, recognising stream resets and TLS failures surfacing through the socket.
    pub(crate) fn from_h2(e: h2::Error) -> HboneError {
        if e.is_reset() && e.is_remote() {
            if let Some(reason) = e.reason() {
                return HboneError::StreamReset(reason);
            }
        }
        if e.is_io() {
            return match e.into_io() {
                // After the handshake, an EOF is the peer closing an established
                // connection (e.g. a pool dropping it), not a handshake failure.
                Some(io) if io.kind() == io::ErrorKind::UnexpectedEof => {
                    HboneError::ConnectionClosed
                }
                Some(io) => HboneError::from_tls_io(io),
                None => HboneError::ConnectionClosed,
            };
        }
        HboneError::H2(e)
    }

    /// Maps an I/O error from a TLS stream (handshake or later) to a hinted error.
    pub(crate) fn from_tls_io(e: io::Error) -> HboneError {
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return HboneError::from_rustls(tls);
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return HboneError::TlsHandshake {
                detail: e.to_string(),
                hint: "the peer closed the connection during the handshake; it may have rejected our certificate or not be an hbone endpoint",
            };
        }
        HboneError::Io(e)
    }

    /// Maps a rustls failure, recovering our own identity-mismatch error from the verifier.
    pub(crate) fn from_rustls(tls: &rustls::Error) -> HboneError {
        if let rustls::Error::InvalidCertificate(CertificateError::Other(other)) = tls {
            if let Some(TlsError::IdentityMismatch {
                expected,
                presented,
            }) = other.0.downcast_ref::<TlsError>()
            {
                return HboneError::IdentityMismatch {
                    expected: expected.clone(),
                    presented: presented.clone(),
                };
            }
        }
        HboneError::TlsHandshake {
            detail: tls.to_string(),
            hint: hint_for(tls),
        }
    }

    /// Maps an h2 error on a connection whose TLS layer may have failed first.
    ///
    /// h2 keeps only the kind and text of I/O errors, so a TLS alert (e.g. the
    /// peer rejecting our certificate after a TLS 1.3 handshake) would surface
    /// as plain I/O; `tls_failure` is what the connection's I/O wrapper saw.
    pub(crate) fn from_h2_on(e: h2::Error, tls_failure: &TlsFailure) -> HboneError {
        match (HboneError::from_h2(e), tls_failure.get()) {
            (HboneError::Io(_) | HboneError::ConnectionClosed | HboneError::H2(_), Some(tls)) => {
                tls.duplicate()
            }
            (mapped, _) => mapped,
        }
    }
}

fn hint_for(e: &rustls::Error) -> &'static str {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "peer certificate is not signed by the trust bundle; check both nodes share a root CA"
        }
        E::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "peer certificate has expired; check certificate rotation and the clocks on both nodes",
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "peer certificate is not valid yet; check the clocks on both nodes",
        // Roots are matched by subject name first, so a certificate from a
        // different CA with the same name (e.g. two clusters' "O=cluster.local"
        // roots) fails here rather than as an unknown issuer.
        E::InvalidCertificate(CertificateError::BadSignature) => {
            "peer certificate signature does not verify against the trust bundle (likely issued by a different CA with the same name); check both nodes share a root CA"
        }
        E::InvalidCertificate(_) => {
            "peer certificate was rejected; check it carries exactly one spiffe:// uri san and is issued by the trust bundle"
        }
        E::NoCertificatesPresented => {
            "the client presented no certificate; hbone requires mutual tls with a workload certificate"
        }
        // rustls answers a same-named-but-different root with decrypt_error.
        E::AlertReceived(AlertDescription::UnknownCA | AlertDescription::DecryptError) => {
            "the peer does not trust our certificate; check both nodes share a root CA"
        }
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a client certificate; configure a workload certificate"
        }
        E::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate,
        ) => "the peer rejected our certificate; check its validity period and the peer's trust bundle",
        E::AlertReceived(AlertDescription::NoApplicationProtocol) | E::NoApplicationProtocol => {
            "the peer does not speak http/2 over tls (alpn h2); check it is an hbone endpoint"
        }
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the peer did not speak tls; check the address points at an hbone port (15008)"
        }
        E::PeerIncompatible(_) | E::AlertReceived(AlertDescription::HandshakeFailure) => {
            "no common tls parameters; hbone requires tls 1.3 with aes-gcm"
        }
        _ => "check that the peer is an hbone endpoint sharing our trust bundle",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_issuer_gets_the_shared_root_hint() {
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let e = HboneError::from_tls_io(io);
        let msg = e.to_string();
        assert!(msg.starts_with("tls handshake failed:"), "{msg}");
        assert!(msg.contains("check both nodes share a root CA"), "{msg}");
        assert_eq!(e.side(), ErrorSide::Upstream);
    }

    #[test]
    fn plain_io_errors_stay_io() {
        let e = HboneError::from_tls_io(io::Error::from(io::ErrorKind::ConnectionReset));
        assert!(matches!(e, HboneError::Io(_)), "{e:?}");
        assert_eq!(
            HboneError::Tcp(io::ErrorKind::BrokenPipe.into()).side(),
            ErrorSide::Downstream
        );
    }
}
