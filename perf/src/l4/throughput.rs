//! Single-stream TCP throughput with iperf3 (client in the client pod).

use std::net::SocketAddr;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use trellis_e2e::Topology;

#[derive(Debug, Clone, Default)]
pub struct IperfResult {
    pub gbit_per_s: f64,
    /// Bytes received by the server.
    pub bytes: u64,
    pub seconds: f64,
    pub retransmits: u64,
    /// iperf3's own CPU figures (percent of one CPU).
    pub client_cpu_pct: f64,
    pub server_cpu_pct: f64,
}

impl IperfResult {
    pub fn to_json(&self) -> Value {
        json!({
            "gbit_per_s": crate::harness::hist::round2(self.gbit_per_s),
            "bytes": self.bytes,
            "seconds": self.seconds,
            "retransmits": self.retransmits,
            "iperf_client_cpu_pct": crate::harness::hist::round2(self.client_cpu_pct),
            "iperf_server_cpu_pct": crate::harness::hist::round2(self.server_cpu_pct),
        })
    }
}

/// `iperf3 -c <server> -t <secs> -J`, pinned to `cpu`, in pod `client`.
pub fn run(
    topo: &Topology,
    client: &str,
    server: SocketAddr,
    secs: u32,
    cpu: usize,
) -> Result<IperfResult> {
    let cpu_s = cpu.to_string();
    let ip_s = server.ip().to_string();
    let port_s = server.port().to_string();
    let secs_s = secs.to_string();
    let out = topo
        .exec(
            client,
            &[
                "taskset", "-c", &cpu_s, "iperf3", "-c", &ip_s, "-p", &port_s, "-t", &secs_s, "-J",
            ],
        )
        .context("running the iperf3 client")?;
    let v: Value = serde_json::from_str(&out).context("parsing iperf3 -J output")?;
    if let Some(e) = v["error"].as_str() {
        return Err(anyhow!("iperf3: {e}"));
    }
    let end = &v["end"];
    let recv = &end["sum_received"];
    let f = |x: &Value| x.as_f64().unwrap_or(0.0);
    Ok(IperfResult {
        gbit_per_s: f(&recv["bits_per_second"]) / 1e9,
        bytes: recv["bytes"].as_u64().unwrap_or(0),
        seconds: f(&recv["seconds"]),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
        client_cpu_pct: f(&end["cpu_utilization_percent"]["host_total"]),
        server_cpu_pct: f(&end["cpu_utilization_percent"]["remote_total"]),
    })
}
