//! The HBONE server's reading of a CONNECT request head: method,
//! `:authority`, `forwarded`, `traceparent`, and the `baggage` the node
//! proxy reads the peer's workload from.
//!
//! Input: first line `METHOD AUTHORITY`, then `name: value` lines.
#![no_main]
use hbone::ConnectRequest;
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use trellis_core::baggage::Baggage;
use trellis_fuzz::head;

fuzz_target!(|data: &[u8]| {
    let mut lines = head::lines(data);
    let (method, authority) = head::request_line(lines.next().unwrap_or_default(), b"CONNECT");
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    // h2 hands the server a URI made of the :authority alone (authority form).
    let uri = match http::uri::Authority::try_from(authority) {
        Ok(a) => {
            let mut parts = http::uri::Parts::default();
            parts.authority = Some(a);
            match Uri::from_parts(parts) {
                Ok(u) => u,
                Err(_) => return,
            }
        }
        Err(_) => Uri::default(),
    };
    let headers = head::headers(lines);
    let _ = Baggage::from_headers(&headers);
    match ConnectRequest::from_http(&method, &uri, &headers) {
        Ok(req) => {
            assert_eq!(method, Method::CONNECT);
            assert_ne!(req.target.port(), 0);
            assert!(!req.extra_headers.contains_key(http::header::FORWARDED));
            let _ = Baggage::from_headers(&req.extra_headers);
        }
        Err(e) => {
            // Every refusal has an answer and a message.
            assert!(e.status().is_client_error());
            assert!(!e.to_string().is_empty());
        }
    }
});
