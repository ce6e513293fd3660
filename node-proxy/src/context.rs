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

    /// `find` (which looks up `scope`'s workload) on the current state;
    /// when it finds nothing and [`should_wait`] says so, again at each new
    /// version for up to [`CONFIG_WAIT`]. A pod is enrolled (CNI ADD)
    /// before the controller can know its address (the kubelet writes it
    /// to the pod's status afterwards), so its first connections may arrive
    /// before its config.
    pub async fn find_or_wait<T>(
        &self,
        scope: &Scope,
        find: impl Fn(&ProxyState) -> Option<T>,
    ) -> Option<T> {
        let wait = {
            let state = self.state.load();
            if let Some(found) = find(&state) {
                scope.mark_config_seen();
                return Some(found);
            }
            should_wait(
                self.on_demand.is_some(),
                scope.config_seen.load(Ordering::Relaxed),
                state.workload_by_uid(&scope.uid).is_some(),
            )
        };
        if !wait {
            return None;
        }
        // Boxed: the cold path should not grow every connection's future.
        let found = Box::pin(self.state.wait_for(CONFIG_WAIT, find)).await;
        if found.is_some() {
            scope.mark_config_seen();
        }
        found
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
    /// `--hbone-engine lite`: tunnels whose client socket (counted) the
    /// connection's task owns.
    pub lite_pool: hbone::Pool<LiteClient>,
    pub lb: ActiveConns,
}

/// A pooled `hbone::lite` connection carrying counted client sockets.
pub type LiteClient =
    hbone::lite::Client<trellis_core::metrics::CountedOwned<tokio::net::TcpStream>>;

impl WorkerCtx {
    pub fn new(proxy: Arc<ProxyCtx>, index: usize) -> Self {
        let pool_settings = hbone::PoolSettings {
            h2: proxy.h2.clone(),
            ..Default::default()
        };
        WorkerCtx {
            pool: hbone::Pool::new(pool_settings.clone()),
            lite_pool: hbone::Pool::new(pool_settings),
            proxy,
            index,
            lb: ActiveConns::default(),
        }
    }
}

/// Whether a connection of a scope whose workload lookup found nothing
/// should wait for config ([`CONFIG_WAIT`]):
/// - config from a file: nothing is in flight, a miss is a misconfiguration;
/// - the scope's config never arrived: it may be on its way (a new pod);
/// - it arrived and the workload is still there: an update may be in flight
///   (a new address);
/// - it arrived and the workload is gone: the controller removed it, and
///   waiting only holds the refused client for nothing.
pub fn should_wait(from_controller: bool, scope_config_seen: bool, workload_present: bool) -> bool {
    from_controller && (!scope_config_seen || workload_present)
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
    /// Set once a connection has found this scope's workload in the config
    /// (see [`should_wait`]).
    config_seen: AtomicBool,
}

impl Scope {
    pub fn new(uid: String, netns: Option<NetNs>, transparent: bool) -> Scope {
        Scope {
            uid,
            netns,
            transparent,
            config_seen: AtomicBool::new(false),
        }
    }

    /// Read before written: every connection passes here, and a store on
    /// each would bounce the cache line between the workers' cores.
    fn mark_config_seen(&self) {
        if !self.config_seen.load(Ordering::Relaxed) {
            self.config_seen.store(true, Ordering::Relaxed);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::should_wait;

    #[test]
    fn a_miss_waits_for_config_only_while_it_may_be_in_flight() {
        // (from controller, config seen, workload present) -> wait
        let table = [
            ((false, false, false), false),
            ((false, true, true), false),
            ((true, false, false), true),
            ((true, false, true), true),
            ((true, true, true), true),
            ((true, true, false), false),
        ];
        for ((ctl, seen, present), want) in table {
            assert_eq!(
                should_wait(ctl, seen, present),
                want,
                "from_controller={ctl} seen={seen} present={present}"
            );
        }
    }
}
