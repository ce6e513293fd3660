//! The controller's metrics, in Prometheus text. xDS counters use istiod's
//! names (`pilot_xds`, `pilot_xds_pushes`, `pilot_total_xds_rejects`) so
//! Istio's control-plane dashboards show them; the rest are Trellis's own.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use trellis_api::config::LocalConfig;

use crate::ca::CaMetricsSnapshot;
use crate::waypoints::WaypointMetricsSnapshot;
use crate::xds::XdsMetricsSnapshot;

/// Counters and gauges of the objects → config → snapshot path.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Objects in the store (accepted, or kept from their last good version).
    pub objects: AtomicU64,
    /// Current problems with manifests: rejected documents and duplicates.
    pub object_errors: AtomicU64,
    /// Objects (or parts) left out by the last translation.
    pub translation_errors: AtomicU64,
    /// Configs published (the first one included).
    pub publishes: AtomicU64,
    /// Configs that could not be encoded as an xDS snapshot.
    pub snapshot_failures: AtomicU64,
    workloads: AtomicU64,
    services: AtomicU64,
    version: Mutex<String>,
}

/// A copy of [`Metrics`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub objects: u64,
    pub object_errors: u64,
    pub translation_errors: u64,
    pub publishes: u64,
    pub snapshot_failures: u64,
    pub workloads: u64,
    pub services: u64,
    /// Version of the published snapshot; empty before the first.
    pub version: String,
}

impl Metrics {
    pub fn set(&self, gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }

    /// Records a publish of `config` as snapshot `version`.
    pub fn published(&self, config: &LocalConfig, version: &str) {
        self.set(&self.workloads, config.workloads.len());
        self.set(&self.services, config.services.len());
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = version.to_string();
        self.publishes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            objects: get(&self.objects),
            object_errors: get(&self.object_errors),
            translation_errors: get(&self.translation_errors),
            publishes: get(&self.publishes),
            snapshot_failures: get(&self.snapshot_failures),
            workloads: get(&self.workloads),
            services: get(&self.services),
            version: self
                .version
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// The Prometheus text exposition of both sets of metrics.
pub fn render(
    m: &MetricsSnapshot,
    xds: &XdsMetricsSnapshot,
    ca: &CaMetricsSnapshot,
    wp: &WaypointMetricsSnapshot,
) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    };
    metric(
        "trellis_controller_objects",
        "gauge",
        "Kubernetes objects in the store, accepted or kept from their last good version.",
        m.objects,
    );
    metric(
        "trellis_controller_object_errors",
        "gauge",
        "Current problems with manifests: rejected documents and duplicate definitions.",
        m.object_errors,
    );
    metric(
        "trellis_controller_translation_errors",
        "gauge",
        "Objects, or parts of them, left out by the last translation.",
        m.translation_errors,
    );
    metric(
        "trellis_controller_config_publishes_total",
        "counter",
        "Configs published to the xDS streams and the CA.",
        m.publishes,
    );
    metric(
        "trellis_controller_snapshot_failures_total",
        "counter",
        "Configs that could not be encoded as an xDS snapshot (the last one stayed).",
        m.snapshot_failures,
    );
    metric(
        "trellis_controller_workloads",
        "gauge",
        "Workloads in the published config.",
        m.workloads,
    );
    metric(
        "trellis_controller_services",
        "gauge",
        "Services in the published config.",
        m.services,
    );
    metric(
        "pilot_xds",
        "gauge",
        "Delta xDS streams open now.",
        xds.connected,
    );
    metric(
        "pilot_xds_pushes",
        "counter",
        "xDS responses sent.",
        xds.pushes,
    );
    metric(
        "pilot_total_xds_rejects",
        "counter",
        "xDS responses rejected by clients (NACKs).",
        xds.nacks,
    );
    metric(
        "trellis_controller_xds_streams_total",
        "counter",
        "Delta xDS streams accepted since start.",
        xds.streams_total,
    );
    metric(
        "trellis_controller_xds_refused_total",
        "counter",
        "xDS streams refused for want of a valid token.",
        xds.refused,
    );
    // istiod's CA counter names, for the same dashboards.
    metric(
        "citadel_server_success_cert_issuance_count",
        "counter",
        "Workload certificates signed.",
        ca.issued,
    );
    metric(
        "trellis_controller_cert_refused_total",
        "counter",
        "Certificate requests refused: invalid token, identity not on the caller's node, or a bad CSR.",
        ca.refused,
    );
    metric(
        "trellis_controller_waypoints_programmed",
        "gauge",
        "Waypoint Gateways whose ServiceAccount, ConfigMap, Deployment and Service are applied, with an address.",
        wp.programmed,
    );
    metric(
        "trellis_controller_waypoint_applies_total",
        "counter",
        "Waypoint objects applied (server-side apply).",
        wp.applies,
    );
    metric(
        "trellis_controller_waypoint_apply_errors_total",
        "counter",
        "Failed waypoint API calls (apply, read, list, delete, Gateway status) and name conflicts; each is logged and retried.",
        wp.apply_errors,
    );
    metric(
        "trellis_controller_waypoint_deletes_total",
        "counter",
        "Left-over waypoint objects deleted (their Gateway gone or no longer a waypoint).",
        wp.deletes,
    );
    metric(
        "trellis_controller_waypoint_status_writes_total",
        "counter",
        "Gateway status writes by the waypoint manager.",
        wp.status_writes,
    );
    if !m.version.is_empty() {
        let name = "trellis_controller_snapshot_info";
        let _ = writeln!(out, "# HELP {name} The published xDS snapshot's version.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", m.version);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_once_with_its_type() {
        let m = MetricsSnapshot {
            objects: 9,
            publishes: 2,
            version: "abc".into(),
            ..Default::default()
        };
        let xds = XdsMetricsSnapshot {
            connected: 1,
            pushes: 4,
            ..Default::default()
        };
        let ca = CaMetricsSnapshot {
            issued: 3,
            refused: 1,
        };
        let wp = WaypointMetricsSnapshot {
            apply_errors: 2,
            ..Default::default()
        };
        let text = render(&m, &xds, &ca, &wp);
        for line in [
            "trellis_controller_objects 9",
            "trellis_controller_config_publishes_total 2",
            "pilot_xds 1",
            "pilot_xds_pushes 4",
            "# TYPE pilot_xds_pushes counter",
            "trellis_controller_snapshot_info{version=\"abc\"} 1",
            "citadel_server_success_cert_issuance_count 3",
            "trellis_controller_cert_refused_total 1",
            "trellis_controller_waypoint_apply_errors_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        let types = text.lines().filter(|l| l.starts_with("# TYPE")).count();
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(types, samples);
    }
}
