//! The waypoint's L7 request path on outside input: route matching (paths,
//! methods, headers, query, baggage, gRPC), redirects, the header and path
//! rewriting filters, trace header propagation and hop-by-hop stripping.
//!
//! Input: first line `METHOD URI`, second the host, then `name: value` lines.
#![no_main]
use std::sync::OnceLock;

use http::header::HeaderValue;
use http::{Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use trellis_api::config::{parse, LocalConfig};
use trellis_fuzz::head;
use trellis_waypoint::headers::{propagate, strip_hop_by_hop};
use trellis_waypoint::route::{Decision, RequestView, RouteTable};

const CONFIG: &str = include_str!("../waypoint_l7.yaml");

fn table() -> &'static (RouteTable, LocalConfig) {
    static T: OnceLock<(RouteTable, LocalConfig)> = OnceLock::new();
    T.get_or_init(|| {
        let cfg = parse(CONFIG).expect("waypoint_l7.yaml parses");
        trellis_api::config::validate(&cfg).expect("waypoint_l7.yaml validates");
        (RouteTable::build(&cfg), cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut lines = head::lines(data);
    let (method, uri) = head::request_line(lines.next().unwrap_or_default(), b"GET");
    let (Ok(method), Ok(uri)) = (Method::from_bytes(method), Uri::try_from(uri)) else {
        return;
    };
    // The waypoint takes the host from a `host` header it can read as text
    // (proxy::request::host_of), lowercased: never control bytes.
    let Ok(host) = HeaderValue::from_bytes(lines.next().unwrap_or_default()) else {
        return;
    };
    let Ok(host) = host.to_str().map(str::to_ascii_lowercase) else {
        return;
    };
    let headers = head::headers(lines);
    let (table, cfg) = table();
    let view = RequestView {
        method: &method,
        uri: &uri,
        headers: &headers,
        host: &host,
    };
    let roll = f64::from(data.len() as u32 % 100) / 100.0;
    for service in &cfg.services {
        for port in service.ports.iter().map(|p| p.port).chain([1]) {
            match table.decide(service, port, &view, roll) {
                Decision::Forward {
                    rule,
                    backend,
                    prefix,
                } => {
                    assert!(backend < rule.backends.len());
                    let mut req = Request::new(());
                    *req.method_mut() = method.clone();
                    *req.uri_mut() = uri.clone();
                    *req.headers_mut() = headers.clone();
                    let (mut parts, ()) = req.into_parts();
                    rule.filters.apply_request(&mut parts, prefix.as_deref());
                    rule.backends[backend]
                        .filters
                        .apply_request(&mut parts, prefix.as_deref());
                    let mut resp = headers.clone();
                    rule.filters.apply_response(&mut resp);
                }
                Decision::Redirect { location, .. } => {
                    assert!(
                        HeaderValue::try_from(location.as_str()).is_ok(),
                        "{location:?}"
                    );
                }
                _ => {}
            }
        }
    }
    let mut h = headers.clone();
    let mut rng = fastrand::Rng::with_seed(1);
    let _ = propagate(&mut h, &mut rng);
    strip_hop_by_hop(&mut h, data.len().is_multiple_of(2));
    assert!(!h.contains_key(http::header::CONNECTION));
});
