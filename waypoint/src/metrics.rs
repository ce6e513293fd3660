//! Istio's L7 metrics with Istio's label set (reporter "waypoint"), the
//! waypoint's own resilience counters, and the per-request JSON access log.
//!
//! A [`RequestRecord`] is filled in as the request goes and recorded once,
//! when it drops, so every exit path (early 403, 429, upstream failure, client
//! gone mid-body) is counted exactly once.

use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use ahash::AHashMap;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec};
use trellis_core::metrics::{counter_vec, register, Metrics};
use trellis_core::metrics::{ConnectionLabels, LABEL_NAMES};
use trellis_core::WorkloadIdentity;

/// The TCP label set plus the two L7-only labels, in this order.
const L7_EXTRA: [&str; 2] = ["response_code", "grpc_response_status"];

/// Request duration buckets in milliseconds (Istio's defaults).
const DURATION_MS: [f64; 14] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
];

/// Body size buckets in bytes (Istio's: exponential from 1 to 10^8).
const SIZE_BYTES: [f64; 9] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

pub struct WaypointMetrics {
    pub core: Arc<Metrics>,
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    pub retries: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub ejections: IntCounterVec,
    pub overloaded: IntCounterVec,
    pub adaptive_limit: IntGaugeVec,
    access_log: bool,
    /// Resolved series by label set, so recording a request is one hash
    /// lookup instead of hashing 25 label values for each of 4 metrics.
    series: RwLock<AHashMap<SeriesKey, Arc<Series>>>,
    hasher: ahash::RandomState,
}

/// At most this many label sets are cached; beyond it the cache starts over
/// (Prometheus keeps the series themselves either way).
const MAX_SERIES: usize = 8192;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SeriesKey {
    /// Hash of the connection's labels (see [`WaypointMetrics::labels_key`]).
    conn: u64,
    /// Hash of the destination workload's uid, 0 for none.
    workload: u64,
    status: u16,
    grpc: Option<u32>,
    flags: &'static str,
    protocol: &'static str,
}

/// The four series of one label set.
struct Series {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl std::fmt::Debug for WaypointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaypointMetrics").finish_non_exhaustive()
    }
}

fn l7_label_names() -> Vec<&'static str> {
    LABEL_NAMES.iter().chain(L7_EXTRA.iter()).copied().collect()
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &l7_label_names(),
    )
    .expect("static metric definition is valid")
}

impl WaypointMetrics {
    pub fn new(access_log: bool) -> Arc<WaypointMetrics> {
        let core = Metrics::new();
        let reg = core.registry();
        let labels = l7_label_names();
        let requests = counter_vec("istio_requests_total", "Requests served", &labels);
        let duration = histogram(
            "istio_request_duration_milliseconds",
            "Request duration, first byte in to last byte out",
            &DURATION_MS,
        );
        let request_bytes = histogram(
            "istio_request_bytes",
            "Request size: headers and body",
            &SIZE_BYTES,
        );
        let response_bytes = histogram(
            "istio_response_bytes",
            "Response size: headers and body",
            &SIZE_BYTES,
        );
        let retries = counter_vec(
            "trellis_waypoint_retries_total",
            "Retry attempts sent, by route rule",
            &["rule"],
        );
        let rate_limited = counter_vec(
            "trellis_waypoint_rate_limited_total",
            "Requests answered 429, by route rule and limit (total, route, caller)",
            &["rule", "limit"],
        );
        let ejections = counter_vec(
            "trellis_waypoint_outlier_ejections_total",
            "Endpoints ejected by outlier detection",
            &["rule", "endpoint"],
        );
        let overloaded = counter_vec(
            "trellis_waypoint_overloaded_total",
            "Requests shed with 503, by rule and cause (adaptive, circuit_breaker, pending_timeout)",
            &["rule", "cause"],
        );
        let adaptive_limit = IntGaugeVec::new(
            prometheus::Opts::new(
                "trellis_waypoint_adaptive_concurrency_limit",
                "The concurrency limit the adaptive limiter has learnt, by rule",
            ),
            &["rule"],
        )
        .expect("static metric definition is valid");
        register(reg, &requests);
        register(reg, &duration);
        register(reg, &request_bytes);
        register(reg, &response_bytes);
        register(reg, &retries);
        register(reg, &rate_limited);
        register(reg, &ejections);
        register(reg, &overloaded);
        register(reg, &adaptive_limit);
        Arc::new(WaypointMetrics {
            core,
            requests,
            duration,
            request_bytes,
            response_bytes,
            retries,
            rate_limited,
            ejections,
            overloaded,
            adaptive_limit,
            access_log,
            series: RwLock::new(AHashMap::new()),
            hasher: ahash::RandomState::new(),
        })
    }

    /// A key for a connection's labels, computed once per connection.
    pub fn labels_key(&self, labels: &ConnectionLabels) -> u64 {
        self.hasher.hash_one(labels.values())
    }

    fn series(&self, key: SeriesKey, values: impl FnOnce() -> Vec<String>) -> Arc<Series> {
        if let Some(s) = self
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let values = values();
        let v: Vec<&str> = values.iter().map(String::as_str).collect();
        let s = Arc::new(Series {
            requests: self.requests.with_label_values(&v),
            duration: self.duration.with_label_values(&v),
            request_bytes: self.request_bytes.with_label_values(&v),
            response_bytes: self.response_bytes.with_label_values(&v),
        });
        let mut map = self.series.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SERIES {
            map.clear();
        }
        map.insert(key, s.clone());
        s
    }

    pub fn encode_text(&self) -> String {
        self.core.encode_text()
    }
}

/// What is known of one request; recorded on drop.
pub struct RequestRecord {
    metrics: Arc<WaypointMetrics>,
    start: Instant,
    /// Wall-clock start, read only when the access log is on.
    start_wall: Option<SystemTime>,
    pub labels: Arc<ConnectionLabels>,
    labels_key: u64,
    /// "http" or "grpc".
    pub protocol: &'static str,
    pub method: http::Method,
    pub path: String,
    pub authority: String,
    pub status: u16,
    /// gRPC status from headers or trailers; None for plain HTTP.
    pub grpc_status: Option<u32>,
    /// Envoy-style response flags: "-", "NR", "UF", "UO", "URX", "UT", "RL", "DI", "FI", "DC", "UC".
    pub flags: &'static str,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream: Option<std::net::SocketAddr>,
    pub destination_workload: Option<Arc<trellis_api::config::Workload>>,
    pub route: Arc<str>,
    pub attempts: u32,
    pub request_id: String,
    pub trace_id: String,
    pub denied_by: Option<String>,
}

impl RequestRecord {
    pub fn new(
        metrics: Arc<WaypointMetrics>,
        labels: Arc<ConnectionLabels>,
        labels_key: u64,
        method: http::Method,
    ) -> RequestRecord {
        RequestRecord {
            start: Instant::now(),
            start_wall: metrics.access_log.then(SystemTime::now),
            metrics,
            labels,
            labels_key,
            protocol: "http",
            method,
            path: String::new(),
            authority: String::new(),
            status: 0,
            grpc_status: None,
            flags: "-",
            request_bytes: 0,
            response_bytes: 0,
            upstream: None,
            destination_workload: None,
            route: Arc::from(""),
            attempts: 0,
            request_id: String::new(),
            trace_id: String::new(),
            denied_by: None,
        }
    }

    /// Whether this request gets an access-log line (so the fields only the
    /// log reads are worth filling in).
    pub fn logged(&self) -> bool {
        self.metrics.access_log
    }

    pub fn metrics(&self) -> &Arc<WaypointMetrics> {
        &self.metrics
    }

    fn flags(&self) -> &'static str {
        if self.status == 0 && self.flags == "-" {
            // The client went away before any response: Envoy's 0 + "DC".
            "DC"
        } else {
            self.flags
        }
    }

    /// The connection's labels with this request's protocol, flags and
    /// destination workload (the endpoint that answered).
    fn full_labels(&self) -> ConnectionLabels {
        let mut labels = (*self.labels).clone();
        labels.request_protocol = self.protocol;
        labels.response_flags = self.flags();
        if let Some(w) = &self.destination_workload {
            labels.destination_workload = w.name.clone();
            labels.destination_workload_namespace = w.namespace.clone();
            labels.destination_canonical_service = w.canonical_name().to_string();
            labels.destination_canonical_revision = w.canonical_revision().to_string();
            labels.destination_app = labels.destination_canonical_service.clone();
            labels.destination_version = labels.destination_canonical_revision.clone();
            labels.destination_principal = w.identity().to_string();
        }
        labels
    }

    fn record(&self) {
        let m = &self.metrics;
        let key = SeriesKey {
            conn: self.labels_key,
            workload: self
                .destination_workload
                .as_ref()
                .map(|w| m.hasher.hash_one(&w.uid))
                .unwrap_or(0),
            status: self.status,
            grpc: self.grpc_status,
            flags: self.flags(),
            protocol: self.protocol,
        };
        let series = m.series(key, || {
            let labels = self.full_labels();
            let mut v: Vec<String> = labels.values().iter().map(|s| s.to_string()).collect();
            v.push(self.status.to_string());
            v.push(
                self.grpc_status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".to_string()),
            );
            v
        });
        let elapsed = self.start.elapsed();
        series.requests.inc();
        series.duration.observe(elapsed.as_secs_f64() * 1000.0);
        series.request_bytes.observe(self.request_bytes as f64);
        series.response_bytes.observe(self.response_bytes as f64);
        if m.access_log {
            self.log(&self.full_labels(), elapsed);
        }
    }

    fn log(&self, labels: &ConnectionLabels, elapsed: std::time::Duration) {
        let start_ms = self
            .start_wall
            .unwrap_or_else(SystemTime::now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line = serde_json::json!({
            "start_time_ms": start_ms,
            "duration_ms": elapsed.as_secs_f64() * 1000.0,
            "method": self.method.as_str(),
            "path": self.path,
            "authority": self.authority,
            "protocol": self.protocol,
            "response_code": self.status,
            "grpc_status": self.grpc_status,
            "response_flags": labels.response_flags,
            "bytes_received": self.request_bytes,
            "bytes_sent": self.response_bytes,
            "upstream_host": self.upstream.map(|a| a.to_string()),
            "source_principal": labels.source_principal,
            "source_workload": labels.source_workload,
            "destination_service": labels.destination_service,
            "destination_workload": labels.destination_workload,
            "route": &*self.route,
            "attempts": self.attempts,
            "x_request_id": self.request_id,
            "trace_id": self.trace_id,
            "denied_by": self.denied_by,
        });
        tracing::info!(target: "access", "{line}");
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        self.record();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_core::metrics::{Reporter, SecurityPolicy};

    fn sample(text: &str, needle: &[&str]) -> f64 {
        text.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter(|l| needle.iter().all(|n| l.contains(n)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    #[test]
    fn requests_are_counted_per_label_set_through_the_series_cache() {
        let m = WaypointMetrics::new(false);
        let labels = Arc::new(ConnectionLabels::new(
            Reporter::Waypoint,
            None,
            None,
            None,
            None,
            None,
            SecurityPolicy::MutualTls,
        ));
        let key = m.labels_key(&labels);
        let record = |status: u16, grpc: Option<u32>| {
            let mut r = RequestRecord::new(m.clone(), labels.clone(), key, http::Method::GET);
            r.status = status;
            r.grpc_status = grpc;
            if grpc.is_some() {
                r.protocol = "grpc";
            }
        };
        record(200, None);
        record(200, None);
        record(503, None);
        record(200, Some(14));
        record(0, None);
        let text = m.encode_text();
        let ok = [r#"response_code="200""#, r#"grpc_response_status="-""#];
        assert_eq!(sample(&text, &ok), 2.0, "{text}");
        assert_eq!(sample(&text, &[r#"response_code="503""#]), 1.0);
        let grpc = [r#"grpc_response_status="14""#, r#"request_protocol="grpc""#];
        assert_eq!(sample(&text, &grpc), 1.0);
        let gone = [r#"response_code="0""#, r#"response_flags="DC""#];
        assert_eq!(sample(&text, &gone), 1.0);
        assert_eq!(sample(&text, &[r#"reporter="waypoint""#]), 5.0);
    }
}
