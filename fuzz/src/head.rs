//! The text form of a request head that `hbone_connect` and `waypoint_l7`
//! read their input as: a request line, then `name: value` lines.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// The input's lines, split at `\n`.
pub fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
}

/// A request line `WORD REST` split at its first space; a line without a
/// space is all `REST`, with `default` as the word.
pub fn request_line<'a>(line: &'a [u8], default: &'static [u8]) -> (&'a [u8], &'a [u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (default, line),
    }
}

/// `name: value` lines as a header map, in order; a line without a colon, or
/// with a name or value `http` refuses, is left out (as h2 would refuse the
/// request, the proxies never see it).
pub fn headers<'a>(lines: impl Iterator<Item = &'a [u8]>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(i) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]);
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..i]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}
