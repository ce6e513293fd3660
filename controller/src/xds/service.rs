//! The gRPC face of [`super::delta`]: authenticates each stream, then runs
//! one task per stream that feeds the engine the client's requests and every
//! new snapshot, and sends what it decides.
//!
//! A slow client only slows its own task: the response channel is bounded,
//! and while the task waits on it, newer snapshots coalesce in the watch
//! channel (only the latest matters).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use trellis_api::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};

use super::delta::{self, Event};
use super::snapshot::Snapshot;
use crate::auth::{bearer, Authenticator, Caller};

/// Responses queued per stream before the stream's task waits for the client.
const STREAM_BUFFER: usize = 16;

/// The largest request accepted from a client (see [`XdsService::into_server`]).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Counters of the xDS server, for the lead's metrics and tests.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    connected: AtomicU64,
    streams_total: AtomicU64,
    refused: AtomicU64,
    pushes: AtomicU64,
    nacks: AtomicU64,
}

/// A copy of [`XdsMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdsMetricsSnapshot {
    /// Delta streams open now.
    pub connected: u64,
    /// Delta streams accepted since start.
    pub streams_total: u64,
    /// Streams refused for want of a valid token.
    pub refused: u64,
    /// Responses sent.
    pub pushes: u64,
    /// NACKs received.
    pub nacks: u64,
}

impl XdsMetrics {
    pub fn read(&self) -> XdsMetricsSnapshot {
        XdsMetricsSnapshot {
            connected: self.connected.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            pushes: self.pushes.load(Ordering::Relaxed),
            nacks: self.nacks.load(Ordering::Relaxed),
        }
    }
}

/// Decrements the connected gauge however the stream task ends.
struct Connected(Arc<XdsMetrics>);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The delta ADS service.
#[derive(Clone)]
pub struct XdsService {
    auth: Arc<dyn Authenticator>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<XdsMetrics>,
}

impl XdsService {
    /// Serves the snapshots published on `snapshots` to callers that
    /// `auth` accepts.
    pub fn new(auth: Arc<dyn Authenticator>, snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        XdsService {
            auth,
            snapshots,
            metrics: Arc::default(),
        }
    }

    /// The counters, shared with every stream.
    pub fn metrics(&self) -> Arc<XdsMetrics> {
        self.metrics.clone()
    }

    /// The tonic service, to add to a router.
    /// Requests may be large: a waypoint reconnecting sends the versions of
    /// everything it holds (~6 MiB at 100k workloads), above tonic's 4 MiB.
    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let value = request
            .metadata()
            .get("authorization")
            .map(|v| {
                v.to_str().map_err(|_| {
                    Status::unauthenticated("xds: the authorization header is not ASCII")
                })
            })
            .transpose()?;
        let result = match bearer(value) {
            Ok(token) => self.auth.authenticate(token).await,
            Err(e) => Err(e),
        };
        result.map_err(|e| {
            self.metrics.refused.fetch_add(1, Ordering::Relaxed);
            info!(peer.addr = ?request.remote_addr(), error = %e, "xds stream refused");
            Status::unauthenticated(format!("xds: {e}"))
        })
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        _request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "state-of-the-world ADS is not served; use DeltaAggregatedResources",
        ))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let caller = self.authenticate(&request).await?;
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        self.metrics.streams_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.connected.fetch_add(1, Ordering::Relaxed);
        let guard = Connected(self.metrics.clone());
        let span = tracing::info_span!("xds", caller = ?caller, peer.addr = ?peer);
        let run = StreamTask {
            stream: delta::Stream::new(caller, format!("{:016x}", fastrand::u64(..))),
            requests: request.into_inner(),
            snapshots: self.snapshots.clone(),
            tx,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(
            async move {
                let _guard = guard;
                debug!("xds stream opened");
                run.run().await;
                debug!("xds stream closed");
            }
            .instrument(span),
        );
        let out = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

struct StreamTask {
    stream: delta::Stream,
    requests: Streaming<DeltaDiscoveryRequest>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    metrics: Arc<XdsMetrics>,
}

impl StreamTask {
    async fn run(mut self) {
        // Marks the current snapshot as seen: the first request is answered
        // against it, so its change notification would only repeat that.
        self.snapshots.borrow_and_update();
        let mut snapshots_open = true;
        loop {
            tokio::select! {
                msg = self.requests.message() => {
                    let req = match msg {
                        Ok(Some(req)) => req,
                        Ok(None) => return,
                        Err(status) => {
                            // A broken frame or message ends the stream with a
                            // reason; a client that went away reads nothing.
                            debug!(error = %status, "xds stream ended by a transport or decode error");
                            let _ = self.tx.send(Err(Status::invalid_argument(format!(
                                "xds: cannot read the request stream: {}",
                                status.message()
                            )))).await;
                            return;
                        }
                    };
                    let snap = self.snapshots.borrow_and_update().clone();
                    match self.stream.on_request(&snap, req) {
                        Ok(out) => {
                            if !self.emit(out).await {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "xds stream ended: protocol violation");
                            let _ = self.tx.send(Err(Status::invalid_argument(format!("xds: {e}")))).await;
                            return;
                        }
                    }
                }
                changed = self.snapshots.changed(), if snapshots_open => {
                    if changed.is_err() {
                        // The publisher is gone; keep serving the last one.
                        snapshots_open = false;
                        continue;
                    }
                    let snap = self.snapshots.borrow_and_update().clone();
                    let out = self.stream.on_snapshot(&snap);
                    if !self.emit(out).await {
                        return;
                    }
                }
            }
        }
    }

    /// Logs the events and sends the responses; false once the client is gone.
    async fn emit(&mut self, out: delta::Output) -> bool {
        for event in out.events {
            match event {
                Event::Ack { type_url } => debug!(type_url, "xds ack"),
                Event::Nack { type_url, message } => {
                    self.metrics.nacks.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        type_url,
                        error = message,
                        "xds nack: the client rejected the config"
                    );
                }
                Event::StaleNonce { type_url, nonce } => debug!(type_url, nonce, "xds stale nonce"),
                Event::UnknownType { type_url } => {
                    info!(type_url, "xds request for an unknown type ignored")
                }
                Event::LateInitialVersions { type_url } => {
                    debug!(
                        type_url,
                        "xds initial_resource_versions after the first request ignored"
                    )
                }
            }
        }
        for response in out.responses {
            debug!(
                type_url = response.type_url,
                resources = response.resources.len(),
                removed = response.removed_resources.len(),
                nonce = response.nonce,
                "xds push"
            );
            if self.tx.send(Ok(response)).await.is_err() {
                return false;
            }
            self.metrics.pushes.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}
