//! Request and response heads as HTTP/2 header fields, both ways.
//!
//! The CONNECT request's meaning (authority, `forwarded`, `traceparent`)
//! stays in [`crate::request`]; here only the field list's shape is checked
//! (RFC 9113 §8.2-8.3): lowercase names, pseudo-headers first and known,
//! none twice, no connection-specific headers.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri};

use super::conn::Fields;
use crate::request::{ConnectRequest, RequestError};

/// Why a header list is malformed (answered with RST_STREAM PROTOCOL_ERROR).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("header name {0:?} is not a lowercase http token")]
    BadName(String),
    #[error("header {0:?} has a value that is not allowed")]
    BadValue(String),
    #[error("pseudo-header {0:?} is unknown, repeated or after a regular header")]
    BadPseudo(String),
    #[error("connection-specific header {0:?} is not allowed in http/2")]
    ConnectionHeader(String),
    #[error("the head has no {0} pseudo-header")]
    Missing(&'static str),
}

/// The pseudo-headers and the regular headers of a field list.
#[derive(Debug, Default)]
struct Split {
    method: Option<Vec<u8>>,
    authority: Option<Vec<u8>>,
    scheme: Option<Vec<u8>>,
    path: Option<Vec<u8>>,
    protocol: Option<Vec<u8>>,
    status: Option<Vec<u8>>,
    headers: HeaderMap,
}

fn split(fields: &Fields) -> Result<Split, HeadError> {
    let mut s = Split::default();
    let mut regular = false;
    for (name, value) in fields {
        let text = || String::from_utf8_lossy(name).into_owned();
        if let Some(pseudo) = name.strip_prefix(b":") {
            let slot = match pseudo {
                b"method" => &mut s.method,
                b"authority" => &mut s.authority,
                b"scheme" => &mut s.scheme,
                b"path" => &mut s.path,
                b"protocol" => &mut s.protocol,
                b"status" => &mut s.status,
                _ => return Err(HeadError::BadPseudo(text())),
            };
            if regular || slot.is_some() {
                return Err(HeadError::BadPseudo(text()));
            }
            *slot = Some(value.to_vec());
            continue;
        }
        regular = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err(HeadError::BadName(text()));
        }
        let n = HeaderName::from_bytes(name).map_err(|_| HeadError::BadName(text()))?;
        let connection_specific = matches!(
            n.as_str(),
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) || (n == http::header::TE && value.as_ref() != b"trailers");
        if connection_specific {
            return Err(HeadError::ConnectionHeader(text()));
        }
        let v = HeaderValue::from_bytes(value).map_err(|_| HeadError::BadValue(text()))?;
        s.headers.append(n, v);
    }
    Ok(s)
}

/// Reads a request head (server side). A well-formed head that is not a
/// usable CONNECT gives `Ok(Err(_))`, answered with its status as before.
pub(crate) fn request(fields: &Fields) -> Result<Result<ConnectRequest, RequestError>, HeadError> {
    let s = split(fields)?;
    if s.status.is_some() {
        return Err(HeadError::BadPseudo(":status".into()));
    }
    let method = s.method.ok_or(HeadError::Missing(":method"))?;
    let method = Method::from_bytes(&method).map_err(|_| HeadError::BadValue(":method".into()))?;
    let uri = match (&method, &s.authority) {
        (&Method::CONNECT, Some(a)) if s.scheme.is_none() && s.path.is_none() => {
            // Only an authority: a whole URI here (`http://ip:port/x`)
            // would otherwise give its authority as the target.
            match Uri::builder().authority(a.as_slice()).build() {
                Ok(u) => u,
                Err(_) => {
                    let a = String::from_utf8_lossy(a).into_owned();
                    return Ok(Err(RequestError::BadAuthority(a)));
                }
            }
        }
        (&Method::CONNECT, None) => return Ok(Err(RequestError::MissingAuthority)),
        // Any other method, or extended CONNECT: well-formed, not HBONE.
        _ => Uri::default(),
    };
    Ok(ConnectRequest::from_http(&method, &uri, &s.headers))
}

/// Reads a response head (client side).
pub(crate) fn response(fields: &Fields) -> Result<(StatusCode, HeaderMap), HeadError> {
    let s = split(fields)?;
    if s.method.is_some() || s.authority.is_some() || s.scheme.is_some() || s.path.is_some() {
        return Err(HeadError::BadPseudo(
            "request pseudo-header in a response".into(),
        ));
    }
    let status = s.status.ok_or(HeadError::Missing(":status"))?;
    let status =
        StatusCode::from_bytes(&status).map_err(|_| HeadError::BadValue(":status".into()))?;
    Ok((status, s.headers))
}

/// Owned name and value bytes of a head to send.
pub(crate) type OwnedFields = Vec<(Vec<u8>, Vec<u8>)>;

/// The CONNECT request's fields (client side).
pub(crate) fn request_fields(req: &ConnectRequest) -> Result<OwnedFields, RequestError> {
    let http = req.to_http()?;
    let authority = http
        .uri()
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(2 + http.headers().len());
    out.push((b":method".to_vec(), b"CONNECT".to_vec()));
    out.push((b":authority".to_vec(), authority));
    push_headers(&mut out, http.headers());
    Ok(out)
}

/// A response's fields (server side).
pub(crate) fn response_fields(status: StatusCode, headers: &HeaderMap) -> OwnedFields {
    let mut out = Vec::with_capacity(1 + headers.len());
    out.push((b":status".to_vec(), status.as_str().as_bytes().to_vec()));
    push_headers(&mut out, headers);
    out
}

fn push_headers(out: &mut OwnedFields, headers: &HeaderMap) {
    for (n, v) in headers {
        out.push((n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec()));
    }
}

/// Borrowed view for [`super::conn::Conn::open`] and `respond`.
pub(crate) fn borrow(fields: &OwnedFields) -> Vec<(&[u8], &[u8])> {
    fields
        .iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect()
}

#[cfg(test)]
mod tests;
