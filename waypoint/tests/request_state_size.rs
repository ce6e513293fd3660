//! Per-request state must stay small: hyper spawns one task per HTTP/2
//! stream holding the request future, and moving a large future into its
//! task is a memcpy of its whole size per request (seen at 3% of the
//! waypoint's CPU in the HTTP/2 profile). The sizes are printed; the bounds
//! leave headroom and catch an accidental inline buffer.

use std::future::Future;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use trellis_waypoint::proxy::{self, ConnCtx};

/// The size of the future a function returns, without calling it.
fn returned_future_size<F, Fut>(_: F) -> usize
where
    F: Fn(Arc<ConnCtx>, Request<Incoming>) -> Fut,
    Fut: Future,
{
    std::mem::size_of::<Fut>()
}

/// Today about 3 KiB (from 19 KiB before the dial and attempt paths were
/// boxed); most of it is the request head and the record.
const MAX_REQUEST_FUTURE: usize = 4096;

#[test]
fn the_request_future_stays_small() {
    let n = returned_future_size(proxy::handle);
    println!("proxy::handle future: {n} bytes");
    assert!(
        n <= MAX_REQUEST_FUTURE,
        "proxy::handle's future is {n} bytes (bound {MAX_REQUEST_FUTURE}); box the large inner state"
    );
}
