//! Shared context: what every connection handler can reach.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use trellis_core::drain::DrainWatcher;
use trellis_core::limits::ConnLimits;
use trellis_core::metrics::Metrics;
use trellis_core::state::{ProxyState, StateStore};

use crate::certs::CertManager;
use crate::lb::ActiveConns;
use crate::settings::{Mode, Settings};
use trellis_netns::NetNs;

/// How long a pod's connection waits for the config that names the pod,
/// when config comes from the controller (see [`ProxyCtx::find_or_wait`]).
pub const CONFIG_WAIT: Duration = Duration::from_secs(5);

/// Process-wide context, shared read-only by the workers.
pub struct ProxyCtx {
    pub settings: Settings,
    pub state: Arc<StateStore>,
    pub metrics: Arc<Metrics>,
    pub certs: Arc<CertManager>,
    pub drain: DrainWatcher,
    /// Bounds on connections and pending handshakes, shared by every worker.
    pub limits: Arc<ConnLimits>,
    /// Cancelled when draining is over (or its deadline passed): workers stop.
    pub shutdown: CancellationToken,
    pub h2: hbone::H2Settings,
    /// Cleared after the first failed transparent connect, so a kernel or
    /// namespace that refuses IP_TRANSPARENT costs one failed attempt, not one per connection.
    pub transparent_ok: AtomicBool,
    /// Set when config comes from the controller: the data path asks it for
    /// destinations the state does not hold yet.
    pub on_demand: Option<trellis_core::source::OnDemand>,
}

impl ProxyCtx {
    pub fn shared_mode(&self) -> bool {
        self.settings.mode == Mode::Shared
    }

    /// Whether to connect to a local workload from the client's IP: where
    /// the capture rules route the replies back (a pod's netns, or the
    /// proxy's own with `--capture`).
    pub fn try_transparent(&self) -> bool {
        (self.shared_mode() || self.settings.capture)
            && self.settings.preserve_source_ip
            && self.transparent_ok.load(Ordering::Relaxed)
    }

    /// `find` on the current state; when it finds nothing and config comes
    /// from the controller, again at each new version for up to
    /// [`CONFIG_WAIT`]. A pod is enrolled (CNI ADD) before the controller
    /// can know its address (the kubelet writes it to the pod's status
    /// afterwards), so its first connections may arrive before its config.
    /// From a file nothing is in flight: a miss is a misconfiguration and
    /// fails at once.
    pub async fn find_or_wait<T>(&self, find: impl Fn(&ProxyState) -> Option<T>) -> Option<T> {
        if let Some(found) = find(&self.state.load()) {
            return Some(found);
        }
        self.on_demand.as_ref()?;
        // Boxed: the cold path should not grow every connection's future.
        Box::pin(self.state.wait_for(CONFIG_WAIT, find)).await
    }

    pub fn transparent_failed(&self) {
        if self.transparent_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                "cannot preserve client source ips (IP_TRANSPARENT connect failed); \
                 connecting to pods from their own address instead"
            );
        }
    }
}

/// Per-worker context: the shared one plus what this worker owns alone.
pub struct WorkerCtx {
    pub proxy: Arc<ProxyCtx>,
    pub index: usize,
    pub pool: hbone::Pool,
    pub lb: ActiveConns,
}

impl WorkerCtx {
    pub fn new(proxy: Arc<ProxyCtx>, index: usize) -> Self {
        let pool = hbone::Pool::new(hbone::PoolSettings {
            h2: proxy.h2.clone(),
            ..Default::default()
        });
        WorkerCtx {
            proxy,
            index,
            pool,
            lb: ActiveConns::default(),
        }
    }
}

/// Who a listener serves: one enrolled pod (shared mode) or the dedicated workload.
pub struct Scope {
    /// Workload uid, as in the config.
    pub uid: String,
    /// The pod's network namespace; sockets for it are created inside. None in dedicated mode.
    pub netns: Option<NetNs>,
    /// Whether this pod's netns routes replies to foreign source IPs back to
    /// the proxy (set up with the capture rules), so IP_TRANSPARENT can work.
    pub transparent: bool,
}

/// What a listener does with accepted connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerKind {
    /// 15001: captured outbound, original destination from SO_ORIGINAL_DST.
    Outbound,
    /// Dedicated mode static capture: the original destination is fixed.
    OutboundForward(SocketAddr),
    /// 15006: plaintext inbound from non-mesh clients.
    InboundPlain,
    /// 15008: HBONE inbound.
    Hbone,
}

impl ListenerKind {
    pub fn name(&self) -> &'static str {
        match self {
            ListenerKind::Outbound => "outbound",
            ListenerKind::OutboundForward(_) => "outbound_forward",
            ListenerKind::InboundPlain => "inbound_plain",
            ListenerKind::Hbone => "inbound_hbone",
        }
    }
}
