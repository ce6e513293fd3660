//! The L7 test kit: HTTP and gRPC servers and clients for waypoint tests,
//! usable inside a pod's netns without any subprocess.
//!
//! Servers, like [`crate::servers`], create their listener in the namespace
//! and serve it from a tokio runtime on a background thread; they stop on
//! drop. Their behaviour is switched at runtime through the handle, so one
//! server can play a healthy, a failing and a slow backend in turn.
//!
//! Clients are blocking (the e2e tests are plain `#[test]` functions): each
//! call creates its socket inside the given netns, runs on a short-lived
//! current-thread runtime and is bounded by [`CLIENT_TIMEOUT`]. Do not call
//! them from inside a tokio runtime.

pub mod client;
pub mod grpc;
mod http_server;

use std::time::Duration;

use crate::servers::ServerThread;

pub use client::{
    grpc_say, grpc_say_with, grpc_stream, http1_keepalive, http1_request, http2_request,
    upgrade_echo, ClientError, GrpcOpts, HttpReply,
};
pub use grpc::{EchoReply, EchoRequest, GrpcMode, GrpcServer};
pub use http_server::{HttpServer, Mode, SERVER_HEADER};

/// Upper bound for one client call, connect to last byte. Longer than any
/// delay a test asks a server for, so a timeout always means a hang.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Locks a server's shared state, also after a panic elsewhere: the state is
/// plain values that a panic cannot leave half-written.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a background server: `serve` on a current-thread runtime on its own
/// thread, until `stop` fires (or the handle is dropped).
fn spawn_server<F>(
    what: &str,
    port: u16,
    serve: impl FnOnce(tokio::sync::oneshot::Receiver<()>) -> F + Send + 'static,
) -> std::io::Result<ServerThread>
where
    F: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    ServerThread::spawn(format!("{what}-{port}"), move |stopped| {
        rt.block_on(serve(stopped))
    })
}
