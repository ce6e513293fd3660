//! Config from the controller over Istio's delta ADS (port 15012): the
//! wildcard types a proxy subscribes to, on-demand lookups of destinations
//! it does not hold yet, ACK/NACK, and reconnects that keep the last good
//! state and resume with `initial_resource_versions`.
//!
//! Decisions live in [`tracker`]; this module only moves messages between
//! the gRPC stream, the [`UpdateSink`] and the data path's [`OnDemand`]
//! handle.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{debug, info, warn};
use trellis_api::pb::envoy::config::core::v3::Node;
use trellis_api::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use trellis_api::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::{Source, UpdateSink};
use crate::certs::ca_client::backoff;
use tracker::{Lookup, Tracker};

pub mod tracker;

/// The largest response accepted. tonic's default (4 MiB) is far below a
/// waypoint's or a first sync's size at 100k workloads (~25 MiB); the
/// controller is authenticated, so this guards against bugs, not attackers.
pub const MAX_RESPONSE_BYTES: usize = 1 << 30;

/// How long the data path waits for an on-demand answer before it treats
/// the destination as unknown.
pub const ON_DEMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the controller is and what to ask it for.
#[derive(Clone, PartialEq)]
pub struct XdsSpec {
    /// `host:port` of the controller's TLS gRPC port.
    pub address: String,
    /// The DNS name in the controller's serving certificate.
    pub server_name: String,
    /// The mesh root(s), PEM, trusted for the controller.
    pub root_pem: String,
    /// Sent as `authorization: Bearer <token>` (a file is read per stream).
    pub token: crate::control::Token,
    /// Sent as the node id (the controller authorizes by token, not by this).
    pub node_id: String,
    /// The type URLs subscribed by wildcard.
    pub types: Vec<&'static str>,
    /// SO_MARK of the connections to the controller (see
    /// [`crate::control::channel`]).
    pub socket_mark: Option<u32>,
}

impl std::fmt::Debug for XdsSpec {
    // Never print the token or the roots.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsSpec")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("node_id", &self.node_id)
            .field("types", &self.types)
            .field("socket_mark", &self.socket_mark)
            .finish_non_exhaustive()
    }
}

type Waiters = HashMap<String, Vec<oneshot::Sender<()>>>;
/// One on-demand ask: the name, and where to say it was answered.
type Ask = (String, oneshot::Sender<()>);
type Asks = mpsc::UnboundedReceiver<Ask>;

/// The data path's way to ask for a destination it does not hold: by
/// `network/ip` (a workload or a service VIP) or `namespace/hostname`.
#[derive(Clone, Debug)]
pub struct OnDemand {
    tx: mpsc::UnboundedSender<Ask>,
    rx: Arc<Mutex<Option<Asks>>>,
}

impl Default for OnDemand {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        OnDemand {
            tx,
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }
}

impl OnDemand {
    /// Asks for `name` and waits until the controller has answered (found
    /// or not) or [`ON_DEMAND_TIMEOUT`] passes. Returns whether it was
    /// answered; either way the caller looks in the state again.
    pub async fn fetch(&self, name: String) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((name, tx)).is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(ON_DEMAND_TIMEOUT, rx).await,
            Ok(Ok(()))
        )
    }

    /// The receiving side, for the one xDS source that serves it.
    fn take(&self) -> Option<Asks> {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The running xDS client.
pub struct XdsSource {
    pub spec: XdsSpec,
    pub on_demand: Option<OnDemand>,
}

/// Why one session with the controller ended (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot set up the channel: {0}")]
    Channel(#[from] crate::control::ChannelError),
    #[error("the controller refused the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
    #[error("the mesh root pem is unusable: {0}")]
    Roots(#[from] hbone::TlsError),
}

impl Source for XdsSource {
    fn run(self: Box<Self>, sink: UpdateSink) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let node = Node {
                id: self.spec.node_id.clone(),
                ..Default::default()
            };
            let mut tracker = Tracker::new(node, &self.spec.types);
            let mut asks = self.on_demand.as_ref().and_then(OnDemand::take);
            let mut waiters = Waiters::new();
            let mut failures = 0u32;
            loop {
                let started = tokio::time::Instant::now();
                let err = session(&self.spec, &mut tracker, &sink, &mut asks, &mut waiters).await;
                // A session that lived a while was healthy: start the
                // backoff over, so a controller restart costs one short wait.
                if started.elapsed() > Duration::from_secs(30) {
                    failures = 0;
                }
                let wait = backoff(failures, 0.5 + fastrand::f64() / 2.0);
                failures = failures.saturating_add(1);
                warn!(controller = %self.spec.address, error = %err, retry_in = ?wait, "xds stream to the controller ended; keeping the last good config");
                tokio::time::sleep(wait).await;
            }
        })
    }
}

/// One stream: subscribe, then apply responses and answer them, and send
/// on-demand asks, until the stream breaks.
async fn session(
    spec: &XdsSpec,
    tracker: &mut Tracker,
    sink: &UpdateSink,
    asks: &mut Option<Asks>,
    waiters: &mut Waiters,
) -> SessionError {
    match session_inner(spec, tracker, sink, asks, waiters).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn session_inner(
    spec: &XdsSpec,
    tracker: &mut Tracker,
    sink: &UpdateSink,
    asks: &mut Option<Asks>,
    waiters: &mut Waiters,
) -> Result<std::convert::Infallible, SessionError> {
    let bundle = hbone::TrustBundle::from_pem(&spec.root_pem)?;
    let channel =
        crate::control::channel(&spec.address, &spec.server_name, &bundle, spec.socket_mark)?;
    let (tx, rx) = mpsc::unbounded_channel::<DeltaDiscoveryRequest>();
    for req in tracker.initial_requests() {
        let _ = tx.send(req);
    }
    let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert("authorization", spec.token.bearer()?);
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(MAX_RESPONSE_BYTES)
        .delta_aggregated_resources(request)
        .await?
        .into_inner();
    info!(controller = %spec.address, "xds stream open");
    loop {
        tokio::select! {
            msg = responses.message() => {
                let Some(resp) = msg? else { return Err(SessionError::Closed) };
                let handled = tracker.on_response(&resp, |t, n, any| {
                    trellis_api::xds::decode(t, n, any).map_err(|e| e.to_string())
                });
                let mut errors = handled.errors;
                if let Some(update) = handled.update {
                    if let Err(e) = sink.apply(update) {
                        tracker.refused();
                        errors.push(e.to_string());
                    }
                } else if !errors.is_empty() {
                    sink.rejected();
                }
                let error = (!errors.is_empty()).then(|| errors.join("; "));
                if let Some(e) = &error {
                    warn!(type_url = %handled.type_url, error = %e, "xds response refused (NACK); keeping the last good config");
                } else {
                    debug!(type_url = %handled.type_url, nonce = %handled.nonce, "xds response applied (ACK)");
                }
                if tracker.synced() && !sink.store().is_synced() {
                    info!(version = sink.store().version(), "first config from the controller applied");
                    sink.store().mark_synced();
                }
                for name in handled.answered {
                    for w in waiters.remove(&name).unwrap_or_default() {
                        let _ = w.send(());
                    }
                }
                let _ = tx.send(Tracker::answer(&handled.type_url, &handled.nonce, error));
            }
            ask = next_ask(asks) => {
                let Some((name, waiter)) = ask else { continue };
                match tracker.lookup(&name) {
                    Some(Lookup::Answered) => { let _ = waiter.send(()); }
                    Some(Lookup::Pending) => waiters.entry(name).or_default().push(waiter),
                    None => {
                        if let Some(req) = tracker.subscribe(&name) {
                            let _ = tx.send(req);
                        }
                        waiters.entry(name).or_default().push(waiter);
                    }
                }
            }
        }
    }
}

/// The next on-demand ask, or never if there is no on-demand handle (or
/// every handle is gone).
async fn next_ask(asks: &mut Option<Asks>) -> Option<Ask> {
    match asks {
        Some(rx) => match rx.recv().await {
            Some(a) => Some(a),
            None => {
                *asks = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}
