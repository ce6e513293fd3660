//! Istio-compatible TCP metrics and proxy error counters.
//!
//! Each [`Metrics`] owns its registry (no globals), so several proxies can
//! run in one process. Connection metrics are recorded by a
//! [`ConnectionGuard`]: labels are resolved to counters once when the
//! connection opens; bytes are counted as they flow (see [`Counted`]), so
//! dashboards see long-lived connections and a connection that ends in an
//! error keeps its counts; the close counter and the access log line are
//! written once when the guard drops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::error;

use crate::accesslog::AccessLogEntry;
pub use crate::accesslog::AccessLogFormat;
use crate::source::ConfigMetrics;

mod counted;
mod labels;
pub use counted::{Counted, CountedIo, CountedOwned, GuardTally, OwnedTally, Side, Tally};
pub use labels::{ConnectionLabels, PeerFacts, Reporter, SecurityPolicy, LABEL_NAMES, UNKNOWN};

/// Why the proxy refused or failed a connection, for
/// `trellis_proxy_errors_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    PlaintextOnHbonePort,
    UnknownIdentity,
    IdentityMismatch,
    MalformedConnect,
    PolicyDenied,
    UpstreamConnectFailed,
    NoHealthyEndpoint,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 7] = [
        ErrorReason::PlaintextOnHbonePort,
        ErrorReason::UnknownIdentity,
        ErrorReason::IdentityMismatch,
        ErrorReason::MalformedConnect,
        ErrorReason::PolicyDenied,
        ErrorReason::UpstreamConnectFailed,
        ErrorReason::NoHealthyEndpoint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::PlaintextOnHbonePort => "plaintext_on_hbone_port",
            ErrorReason::UnknownIdentity => "unknown_identity",
            ErrorReason::IdentityMismatch => "identity_mismatch",
            ErrorReason::MalformedConnect => "malformed_connect",
            ErrorReason::PolicyDenied => "policy_denied",
            ErrorReason::UpstreamConnectFailed => "upstream_connect_failed",
            ErrorReason::NoHealthyEndpoint => "no_healthy_endpoint",
        }
    }
}

/// A proxy's metrics and its access log setting.
pub struct Metrics {
    registry: Registry,
    opened: IntCounterVec,
    closed: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
    /// Indexed like [`ErrorReason::ALL`]; resolved up front so recording an
    /// error is one atomic add and every reason is exported from the start.
    errors: Vec<IntCounter>,
    config: Arc<ConfigMetrics>,
    access_log: AtomicU8,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("access_log", &self.access_log_format())
            .finish_non_exhaustive()
    }
}

/// Builds a counter vector from a fixed definition in this file. Failure
/// means the definition itself is wrong (a bug caught by the tests), not
/// anything a user supplied.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition is valid")
}

/// Registers `c`; a failure (a duplicate name) is logged and the metric
/// still counts, it is just not exported.
pub fn register<C: Collector + Clone + 'static>(registry: &Registry, c: &C) {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        error!(error = %e, "cannot register metric; it will be missing from /metrics");
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let tcp = |name: &str, help: &str| {
            let c = counter_vec(name, help, &LABEL_NAMES);
            register(&registry, &c);
            c
        };
        let opened = tcp(
            "istio_tcp_connections_opened_total",
            "Total TCP connections opened",
        );
        let closed = tcp(
            "istio_tcp_connections_closed_total",
            "Total TCP connections closed",
        );
        let sent = tcp(
            "istio_tcp_sent_bytes_total",
            "Bytes sent back to the client (response direction) on TCP connections",
        );
        let received = tcp(
            "istio_tcp_received_bytes_total",
            "Bytes received from the client (request direction) on TCP connections",
        );
        let errors_vec = counter_vec(
            "trellis_proxy_errors_total",
            "Connections the proxy refused or failed, by reason",
            &["reason"],
        );
        register(&registry, &errors_vec);
        let errors = ErrorReason::ALL
            .iter()
            .map(|r| errors_vec.with_label_values(&[r.as_str()]))
            .collect();
        let config = Arc::new(ConfigMetrics::new(&registry));
        Arc::new(Metrics {
            registry,
            opened,
            closed,
            sent,
            received,
            errors,
            config,
            access_log: AtomicU8::new(0),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything in the registry in Prometheus text format.
    pub fn encode_text(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The config reload counters, for the config file watcher.
    pub fn config_metrics(&self) -> Arc<ConfigMetrics> {
        self.config.clone()
    }

    pub fn set_access_log_format(&self, format: AccessLogFormat) {
        let v = match format {
            AccessLogFormat::Text => 0,
            AccessLogFormat::Json => 1,
        };
        self.access_log.store(v, Ordering::Relaxed);
    }

    pub fn access_log_format(&self) -> AccessLogFormat {
        match self.access_log.load(Ordering::Relaxed) {
            1 => AccessLogFormat::Json,
            _ => AccessLogFormat::Text,
        }
    }

    pub fn record_error(&self, reason: ErrorReason) {
        if let Some(c) = self.errors.get(reason as usize) {
            c.inc();
        }
    }

    /// Counts a connection as opened and returns the guard that records its
    /// close. `direction` names the listener ("inbound", "outbound", ...)
    /// in the access log.
    pub fn connection_opened(
        self: &Arc<Self>,
        labels: ConnectionLabels,
        src: SocketAddr,
        dst: SocketAddr,
        direction: &'static str,
    ) -> ConnectionGuard {
        let values = labels.values();
        self.opened.with_label_values(&values).inc();
        let close = CloseCounters::resolve(self, &values);
        ConnectionGuard {
            inner: Box::new(Open {
                metrics: self.clone(),
                close,
                close_flags: labels.response_flags,
                labels,
                src,
                dst,
                direction,
                started: Instant::now(),
                sent: 0,
                received: 0,
                owned_totals: None,
                error: None,
            }),
        }
    }
}

/// The counters a close writes to, resolved from one label set.
struct CloseCounters {
    closed: IntCounter,
    sent: IntCounter,
    received: IntCounter,
}

impl CloseCounters {
    fn resolve(m: &Metrics, values: &[&str]) -> CloseCounters {
        CloseCounters {
            closed: m.closed.with_label_values(values),
            sent: m.sent.with_label_values(values),
            received: m.received.with_label_values(values),
        }
    }
}

/// Records one connection's close when dropped. A single pointer, so it is
/// cheap to move into the task that copies the bytes.
#[must_use = "dropping the guard at once records the connection as closed"]
pub struct ConnectionGuard {
    inner: Box<Open>,
}

struct Open {
    metrics: Arc<Metrics>,
    close: CloseCounters,
    /// The response flags `close` was resolved with; `set_response_flags`
    /// re-resolves when they change.
    close_flags: &'static str,
    labels: ConnectionLabels,
    src: SocketAddr,
    dst: SocketAddr,
    direction: &'static str,
    started: Instant,
    sent: u64,
    received: u64,
    /// Bytes counted by an owned socket wrapper ([`CountedOwned`]), added
    /// to `sent`/`received` when the guard drops.
    owned_totals: Option<Arc<counted::Totals>>,
    error: Option<String>,
}

impl Open {
    /// `sent`: bytes sent back to the client (response direction);
    /// `received`: bytes received from the client (request direction).
    /// As Istio's istio_tcp_sent_bytes_total / istio_tcp_received_bytes_total.
    /// Published at once; the totals also go into the access log line.
    fn add_bytes(&mut self, sent: u64, received: u64) {
        if sent > 0 {
            self.sent += sent;
            self.close.sent.inc_by(sent);
        }
        if received > 0 {
            self.received += received;
            self.close.received.inc_by(received);
        }
    }
}

impl ConnectionGuard {
    /// Counts bytes moved outside a [`Counted`] socket (`sent` back to the
    /// client, `received` from it), published at once.
    pub fn add_bytes(&mut self, sent: u64, received: u64) {
        self.inner.add_bytes(sent, received);
    }

    /// Why the connection failed or was refused, for the access log.
    pub fn set_error(&mut self, error: impl Into<String>) {
        self.inner.error = Some(error.into());
    }

    /// Envoy-style response flags ("UF", "UH", "DENY", ...), reported on
    /// the close and byte counters. Set them before bytes flow: bytes
    /// already counted stay under the flags they were counted with.
    pub fn set_response_flags(&mut self, flags: &'static str) {
        let o = &mut *self.inner;
        o.labels.response_flags = flags;
        if flags != o.close_flags {
            o.close = CloseCounters::resolve(&o.metrics, &o.labels.values());
            o.close_flags = flags;
        }
    }

    pub fn labels(&self) -> &ConnectionLabels {
        &self.inner.labels
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let o = &mut *self.inner;
        if let Some(t) = &o.owned_totals {
            let (sent, received) = t.get();
            o.sent += sent;
            o.received += received;
        }
        o.close.closed.inc();
        let l = &o.labels;
        AccessLogEntry {
            src_addr: o.src,
            dst_addr: o.dst,
            src_workload: &l.source_workload,
            dst_workload: &l.destination_workload,
            src_identity: &l.source_principal,
            dst_identity: &l.destination_principal,
            direction: o.direction,
            bytes_sent: o.sent,
            bytes_received: o.received,
            duration: o.started.elapsed(),
            response_flags: l.response_flags,
            error: o.error.as_deref(),
        }
        .emit(o.metrics.access_log_format());
    }
}

#[cfg(test)]
mod tests;
