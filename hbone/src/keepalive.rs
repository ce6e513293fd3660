//! HTTP/2 PING keep-alive, shared by the client and server connection drivers.
//!
//! A TCP connection whose peer vanished (node crash, network partition) can
//! look open forever; periodic PINGs detect that so pooled connections are not
//! handed to new tunnels and the server frees the resources of dead clients.

use std::time::Duration;

use h2::{Ping, PingPong};

use crate::error::HboneError;

/// Pings every `interval`; resolves with an error only when the connection must be dropped.
///
/// Never resolves when keep-alive is disabled (zero interval) or unavailable.
pub(crate) async fn run(
    ping_pong: Option<PingPong>,
    interval: Duration,
    timeout: Duration,
) -> HboneError {
    let Some(mut ping_pong) = ping_pong.filter(|_| !interval.is_zero()) else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => tracing::trace!("keep-alive pong received"),
            Ok(Err(e)) => {
                // The connection itself failed; its driver sees and reports the
                // real cause, so stop pinging without competing with it.
                tracing::debug!(error = %e, "keep-alive ping failed");
                return std::future::pending().await;
            }
            Err(_) => {
                tracing::warn!(timeout = ?timeout, "hbone peer did not answer keep-alive ping; closing connection");
                return HboneError::Timeout(
                    "waiting for http/2 keep-alive pong from the hbone peer",
                );
            }
        }
    }
}
