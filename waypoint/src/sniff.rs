//! Decides the protocol of a tunnelled stream from its first bytes, so HTTP
//! gets L7 handling and anything else is forwarded as TCP.
//!
//! A stream that is HTTP but is taken for TCP would skip L7 policy, so the
//! rules lean towards HTTP: leading empty lines (which HTTP/1 servers skip)
//! are skipped here too, and a client that stalls mid-way through something
//! that could still be HTTP gets an error, not a TCP verdict.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol a stream's first bytes show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// Starts with the HTTP/2 client connection preface (prior knowledge).
    Http2,
    /// Starts with an HTTP/1 request line.
    Http1,
    Tcp,
    /// Could still be HTTP; read more.
    NeedMore,
}

/// Bytes after which a decision must be made: [`sniff`] never answers
/// `NeedMore` for a prefix this long.
pub const MAX_SNIFF: usize = 24 * 4;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods recognised on the space that follows them.
const KNOWN_METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Longest other method token taken for HTTP (e.g. WebDAV's PROPFIND).
const MAX_METHOD: usize = 20;

/// Why [`peek`] gave up on a stream.
#[derive(Debug, thiserror::Error)]
pub enum SniffError {
    #[error(
        "client sent {bytes} byte(s) that could begin an HTTP request, then nothing for \
         {waited:?}; closing rather than forwarding it as TCP, which would skip L7 policy \
         (if clients are this slow, raise the sniff timeout)"
    )]
    Stalled { bytes: usize, waited: Duration },
}

/// Classifies a stream from its first bytes.
pub fn sniff(prefix: &[u8]) -> Sniffed {
    if prefix.len() >= H2_PREFACE.len() {
        if prefix.starts_with(H2_PREFACE) {
            return Sniffed::Http2;
        }
    } else if H2_PREFACE.starts_with(prefix) {
        return Sniffed::NeedMore;
    }
    match http1(prefix) {
        Sniffed::NeedMore if prefix.len() >= MAX_SNIFF => Sniffed::Tcp,
        verdict => verdict,
    }
}

fn http1(prefix: &[u8]) -> Sniffed {
    // RFC 9112 §2.2: servers should ignore empty lines before the request
    // line; a request hidden behind them must not pass as TCP.
    let Some(start) = prefix.iter().position(|b| !matches!(b, b'\r' | b'\n')) else {
        return Sniffed::NeedMore;
    };
    let line = &prefix[start..];
    let Some(len) = line.iter().position(|&b| b == b' ') else {
        return if line.len() <= MAX_METHOD && is_method_start(line) {
            Sniffed::NeedMore
        } else {
            Sniffed::Tcp
        };
    };
    let method = &line[..len];
    if method.is_empty() || len > MAX_METHOD || !is_method_start(method) {
        return Sniffed::Tcp;
    }
    if KNOWN_METHODS.contains(&method) {
        return Sniffed::Http1;
    }
    // Other upper-case words followed by a space are common in text
    // protocols (e.g. Redis inline `SET key v`), so an unknown method also
    // needs a request target: origin form, `*`, or an absolute http(s) URI.
    let target = &line[len + 1..];
    match target.first() {
        None => Sniffed::NeedMore,
        Some(b'/' | b'*') => Sniffed::Http1,
        Some(_) => absolute_uri(target),
    }
}

/// Upper-case letters, with '-' after the first (WebDAV's VERSION-CONTROL).
fn is_method_start(token: &[u8]) -> bool {
    token.first().is_none_or(u8::is_ascii_uppercase)
        && token.iter().all(|&b| b.is_ascii_uppercase() || b == b'-')
}

fn absolute_uri(target: &[u8]) -> Sniffed {
    let mut verdict = Sniffed::Tcp;
    for scheme in [&b"http://"[..], b"https://"] {
        let n = scheme.len().min(target.len());
        if target[..n].eq_ignore_ascii_case(&scheme[..n]) {
            if target.len() >= scheme.len() {
                return Sniffed::Http1;
            }
            verdict = Sniffed::NeedMore;
        }
    }
    verdict
}

/// Reads from `r` until [`sniff`] decides, and returns the verdict with every
/// byte read, for the caller to replay. Each wait for bytes is bounded by
/// `timeout`: with nothing received it means a server-first protocol (MySQL,
/// SMTP), so TCP; after a partial HTTP-like prefix it is a
/// [`SniffError::Stalled`] error (kind `TimedOut`). End of stream means TCP.
pub async fn peek<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> io::Result<(Sniffed, Bytes)> {
    let mut buf = BytesMut::with_capacity(MAX_SNIFF);
    loop {
        match tokio::time::timeout(timeout, r.read_buf(&mut buf)).await {
            Err(_) if buf.is_empty() => return Ok((Sniffed::Tcp, buf.freeze())),
            Err(_) => {
                let err = SniffError::Stalled {
                    bytes: buf.len(),
                    waited: timeout,
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, err));
            }
            Ok(Ok(0)) => return Ok((Sniffed::Tcp, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        match sniff(&buf) {
            Sniffed::NeedMore => continue,
            verdict => return Ok((verdict, buf.freeze())),
        }
    }
}

#[cfg(test)]
mod tests;
