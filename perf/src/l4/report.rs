//! Results: the comparison rows with their targets, as JSON and Markdown.

use serde_json::{json, Value};

use crate::harness::hist::{round2, Summary};
use crate::l4::conn_rate::ConnRateResult;
use crate::l4::http_load::RateResult;
use crate::l4::throughput::IperfResult;

/// The targets, against direct in the same run.
pub mod targets {
    /// Trellis throughput at least this share of direct.
    pub const THROUGHPUT_RATIO: f64 = 0.35;
    /// Both proxies' CPU seconds per GB (1e9 bytes) moved.
    pub const CPU_S_PER_GB: f64 = 1.0;
    /// Added round-trip latency, microseconds.
    pub const ADDED_P50_US: f64 = 40.0;
    pub const ADDED_P99_US: f64 = 100.0;
    /// New connections per second at least this share of direct, with no errors.
    pub const CONN_RATE_RATIO: f64 = 0.30;
    /// Per proxy, idle, one pod enrolled.
    pub const IDLE_RSS_MIB: f64 = 10.0;
    pub const RSS_PER_POD_KIB: f64 = 64.0;
    /// Both proxies together, per open idle connection through the mesh.
    pub const RSS_PER_CONN_KIB: f64 = 16.0;
}

/// Busy time of the server CPU (CPU 1: the server, the proxies and the
/// kernel's softirq work there) per unit of work, from /proc/stat.
#[derive(Debug, Clone, Default)]
pub struct ServerCpu {
    pub s_per_gb: f64,
    pub us_per_rtt: f64,
    pub s_per_1k_req: f64,
    pub us_per_conn: f64,
}

impl ServerCpu {
    pub fn to_json(&self) -> Value {
        json!({
            "s_per_gb": round3(self.s_per_gb),
            "us_per_rtt": round2(self.us_per_rtt),
            "s_per_1k_req": round3(self.s_per_1k_req),
            "us_per_conn": round2(self.us_per_conn),
        })
    }
}

/// One path's results (direct or through Trellis).
#[derive(Debug, Clone, Default)]
pub struct PathResults {
    pub throughput: IperfResult,
    pub rtt: Summary,
    pub http: RateResult,
    pub conn: ConnRateResult,
    pub server_cpu: ServerCpu,
}

impl PathResults {
    pub fn to_json(&self) -> Value {
        json!({
            "throughput": self.throughput.to_json(),
            "rtt": self.rtt.to_json(),
            "http_fixed_rate": self.http.to_json(),
            "conn_rate": self.conn.to_json(),
            "server_cpu_busy": self.server_cpu.to_json(),
        })
    }
}

/// What only the mesh has: proxy CPU and memory.
#[derive(Debug, Clone, Default)]
pub struct ProxyCosts {
    /// Both proxies, during the throughput run.
    pub cpu_s_throughput: f64,
    pub cpu_s_per_gb: f64,
    /// Both proxies, during the fixed-rate HTTP run.
    pub cpu_s_http: f64,
    pub cpu_s_per_1k_req: f64,
    /// Both proxies, during the connection-rate run.
    pub cpu_s_conn: f64,
    pub cpu_s_per_1k_conn: f64,
    /// (node, KiB) right after start with one pod enrolled.
    pub idle_rss_kib: Vec<(String, u64)>,
    pub extra_pods: usize,
    pub rss_per_pod_kib: f64,
    pub idle_conns: usize,
    /// (node, KiB delta) for the measured batch of idle connections.
    pub conn_rss_delta_kib: Vec<(String, i64)>,
    /// Per connection of the measured (second) batch: the marginal cost.
    pub rss_per_conn_kib: f64,
    /// Per connection of the first batch, which partly reuses heap freed by
    /// earlier phases (so it reads lower).
    pub first_batch_rss_per_conn_kib: f64,
}

impl ProxyCosts {
    pub fn to_json(&self) -> Value {
        json!({
            "cpu_s_throughput": round2(self.cpu_s_throughput),
            "cpu_s_per_gb": round3(self.cpu_s_per_gb),
            "cpu_s_http": round2(self.cpu_s_http),
            "cpu_s_per_1k_req": round3(self.cpu_s_per_1k_req),
            "cpu_s_conn": round2(self.cpu_s_conn),
            "cpu_s_per_1k_conn": round3(self.cpu_s_per_1k_conn),
            "idle_rss_kib": self.idle_rss_kib.iter().map(|(n, k)| json!({"node": n, "kib": k})).collect::<Vec<_>>(),
            "extra_pods": self.extra_pods,
            "rss_per_pod_kib": round2(self.rss_per_pod_kib),
            "idle_conns": self.idle_conns,
            "conn_rss_delta_kib": self.conn_rss_delta_kib.iter().map(|(n, k)| json!({"node": n, "kib": k})).collect::<Vec<_>>(),
            "rss_per_conn_kib": round2(self.rss_per_conn_kib),
            "first_batch_rss_per_conn_kib": round2(self.first_batch_rss_per_conn_kib),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub direct: String,
    pub trellis: String,
    pub compare: String,
    pub target: String,
    /// None: informational, no target.
    pub pass: Option<bool>,
}

fn f(x: f64, decimals: usize) -> String {
    format!("{x:.decimals$}")
}

fn row(
    metric: &str,
    direct: String,
    trellis: String,
    compare: String,
    target: &str,
    pass: Option<bool>,
) -> Row {
    Row {
        metric: metric.into(),
        direct,
        trellis,
        compare,
        target: target.into(),
        pass,
    }
}

fn pct(t: f64, d: f64) -> String {
    if d > 0.0 {
        format!("{:.1}%", 100.0 * t / d)
    } else {
        "n/a".into()
    }
}

fn delta_us(t: f64, d: f64) -> String {
    format!("{:+.1} µs", t - d)
}

const NA: &str = "—";

/// The comparison table.
pub fn rows(d: &PathResults, t: &PathResults, c: &ProxyCosts) -> Vec<Row> {
    use targets::*;
    let mut v = Vec::new();
    let (dg, tg) = (d.throughput.gbit_per_s, t.throughput.gbit_per_s);
    v.push(row(
        "TCP throughput, 1 stream (Gbit/s)",
        f(dg, 2),
        f(tg, 2),
        pct(tg, dg),
        &format!("≥ {:.0}% of direct", THROUGHPUT_RATIO * 100.0),
        Some(dg > 0.0 && tg / dg >= THROUGHPUT_RATIO),
    ));
    v.push(row(
        "proxy CPU per GB, both proxies (s/GB)",
        NA.into(),
        f(c.cpu_s_per_gb, 3),
        format!(
            "{:.2} s over {:.2} GB",
            c.cpu_s_throughput,
            t.throughput.bytes as f64 / 1e9
        ),
        &format!("≤ {CPU_S_PER_GB:.1} s/GB"),
        Some(c.cpu_s_per_gb <= CPU_S_PER_GB),
    ));
    v.push(row(
        "CPU 1 busy per GB: server + proxies + softirq (s/GB)",
        f(d.server_cpu.s_per_gb, 3),
        f(t.server_cpu.s_per_gb, 3),
        format!("{:+.3} s/GB", t.server_cpu.s_per_gb - d.server_cpu.s_per_gb),
        NA,
        None,
    ));
    v.push(row(
        "RTT p50, 64 B ping-pong (µs)",
        f(d.rtt.p50_us, 1),
        f(t.rtt.p50_us, 1),
        delta_us(t.rtt.p50_us, d.rtt.p50_us),
        &format!("≤ +{ADDED_P50_US:.0} µs"),
        Some(t.rtt.p50_us - d.rtt.p50_us <= ADDED_P50_US),
    ));
    v.push(row(
        "RTT p99 (µs)",
        f(d.rtt.p99_us, 1),
        f(t.rtt.p99_us, 1),
        delta_us(t.rtt.p99_us, d.rtt.p99_us),
        &format!("≤ +{ADDED_P99_US:.0} µs"),
        Some(t.rtt.p99_us - d.rtt.p99_us <= ADDED_P99_US),
    ));
    v.push(row(
        "RTT p99.9 (µs)",
        f(d.rtt.p999_us, 1),
        f(t.rtt.p999_us, 1),
        delta_us(t.rtt.p999_us, d.rtt.p999_us),
        NA,
        None,
    ));
    v.push(row(
        "CPU 1 busy per round trip (µs)",
        f(d.server_cpu.us_per_rtt, 1),
        f(t.server_cpu.us_per_rtt, 1),
        delta_us(t.server_cpu.us_per_rtt, d.server_cpu.us_per_rtt),
        NA,
        None,
    ));
    let (dh, th) = (&d.http, &t.http);
    v.push(row(
        &format!("HTTP at {:.0} req/s: achieved (req/s)", dh.target_rps),
        f(dh.achieved_rps, 0),
        f(th.achieved_rps, 0),
        pct(th.achieved_rps, dh.achieved_rps),
        NA,
        None,
    ));
    for (name, a, b) in [
        ("HTTP p50 (µs)", dh.latency.p50_us, th.latency.p50_us),
        ("HTTP p99 (µs)", dh.latency.p99_us, th.latency.p99_us),
        ("HTTP p99.9 (µs)", dh.latency.p999_us, th.latency.p999_us),
    ] {
        v.push(row(name, f(a, 1), f(b, 1), delta_us(b, a), NA, None));
    }
    v.push(row(
        "HTTP errors",
        dh.errors.to_string(),
        th.errors.to_string(),
        format!("{:+}", th.errors as i64 - dh.errors as i64),
        NA,
        None,
    ));
    v.push(row(
        "proxy CPU per 1,000 requests, both proxies (s)",
        NA.into(),
        f(c.cpu_s_per_1k_req, 3),
        format!("{:.2} s over {} requests", c.cpu_s_http, th.ok),
        NA,
        None,
    ));
    let (dc, tc) = (&d.conn, &t.conn);
    v.push(row(
        "new connections per second (conn/s)",
        f(dc.conns_per_s, 0),
        f(tc.conns_per_s, 0),
        pct(tc.conns_per_s, dc.conns_per_s),
        &format!("≥ {:.0}% of direct", CONN_RATE_RATIO * 100.0),
        Some(dc.conns_per_s > 0.0 && tc.conns_per_s / dc.conns_per_s >= CONN_RATE_RATIO),
    ));
    v.push(row(
        "new connection errors",
        dc.errors.to_string(),
        tc.errors.to_string(),
        format!("{:+}", tc.errors as i64 - dc.errors as i64),
        "0",
        Some(tc.errors == 0 && dc.errors == 0),
    ));
    v.push(row(
        "new connection p99 / max, connect to close (µs)",
        format!("{:.0} / {:.0}", dc.latency.p99_us, dc.latency.max_us),
        format!("{:.0} / {:.0}", tc.latency.p99_us, tc.latency.max_us),
        format!(
            "in flight at the window's end, not counted: {} / {}",
            dc.late, tc.late
        ),
        NA,
        None,
    ));
    v.push(row(
        "CPU 1 busy per new connection (µs)",
        f(d.server_cpu.us_per_conn, 1),
        f(t.server_cpu.us_per_conn, 1),
        delta_us(t.server_cpu.us_per_conn, d.server_cpu.us_per_conn),
        NA,
        None,
    ));
    v.push(row(
        "proxy CPU per 1,000 new connections, both proxies (s)",
        NA.into(),
        f(c.cpu_s_per_1k_conn, 3),
        format!("{:.2} s over {} connections", c.cpu_s_conn, tc.ok),
        NA,
        None,
    ));
    for (node, kib) in &c.idle_rss_kib {
        let mib = *kib as f64 / 1024.0;
        v.push(row(
            &format!("idle RSS, {node} proxy (MiB)"),
            NA.into(),
            f(mib, 2),
            NA.into(),
            &format!("≤ {IDLE_RSS_MIB:.0} MiB"),
            Some(mib <= IDLE_RSS_MIB),
        ));
    }
    v.push(row(
        "RSS per extra enrolled pod (KiB)",
        NA.into(),
        f(c.rss_per_pod_kib, 1),
        format!("over {} pods", c.extra_pods),
        &format!("≤ {RSS_PER_POD_KIB:.0} KiB"),
        Some(c.rss_per_pod_kib <= RSS_PER_POD_KIB),
    ));
    v.push(row(
        "RSS per idle proxied connection, both proxies (KiB)",
        NA.into(),
        f(c.rss_per_conn_kib, 2),
        format!(
            "second batch of {} conns ({}); first batch {:.2} KiB",
            c.idle_conns,
            c.conn_rss_delta_kib
                .iter()
                .map(|(n, k)| format!("{n} {k:+} KiB"))
                .collect::<Vec<_>>()
                .join(", "),
            c.first_batch_rss_per_conn_kib
        ),
        &format!("≤ {RSS_PER_CONN_KIB:.0} KiB"),
        Some(c.rss_per_conn_kib <= RSS_PER_CONN_KIB),
    ));
    v
}

pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "metric": r.metric,
                    "direct": r.direct,
                    "trellis": r.trellis,
                    "ratio_or_delta": r.compare,
                    "target": r.target,
                    "pass": r.pass,
                })
            })
            .collect(),
    )
}

/// The Markdown table (plus a header of `notes` lines).
pub fn markdown(title: &str, notes: &[String], rows: &[Row]) -> String {
    let mut s = format!("# {title}\n\n");
    for n in notes {
        s += &format!("- {n}\n");
    }
    s += "\n| metric | direct | trellis | ratio/delta | target | pass? |\n|---|---:|---:|---:|---|:---:|\n";
    for r in rows {
        let pass = match r.pass {
            Some(true) => "PASS",
            Some(false) => "**FAIL**",
            None => "—",
        };
        s += &format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.metric, r.direct, r.trellis, r.compare, r.target, pass
        );
    }
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.pass == Some(false))
        .map(|r| r.metric.as_str())
        .collect();
    let passed = rows.iter().filter(|r| r.pass == Some(true)).count();
    s += &format!("\n{} of {} targets pass", passed, passed + failed.len());
    if failed.is_empty() {
        s += ".\n";
    } else {
        s += &format!("; failing: {}.\n", failed.join("; "));
    }
    s
}
