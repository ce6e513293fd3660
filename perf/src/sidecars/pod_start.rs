//! Time from a pod's start until its first meshed request succeeds (issue
//! 15, section 2.5): the sidecar's start against ambient enrollment.
//!
//! For each shape, fresh idle pods on node1 (never captured before) each
//! get, at t0, what the mesh does when a pod starts, and a client in the
//! pod then tries an echo through the mesh to the server pod on node2
//! every millisecond until one succeeds (t1):
//!
//! * **Trellis ambient**: the node's running proxy enrolls the pod (`POST
//!   /pods` on its admin API, as the CNI agent's hand-over does over ZDS):
//!   listeners in the pod's netns and its capture rules.
//! * **Trellis sidecar-shaped**: a dedicated-mode node proxy starts in the
//!   pod (`--capture`) and loads its config and certificate.
//! * **Envoy sidecar** (L7): the pod's capture rules, its certificate and
//!   bootstrap written, and Envoy started in the pod (what an injected
//!   sidecar does before the app's first request can pass).
//!
//! A success counts only if the mesh carried it: the proxy that captured
//! the pod must have counted the connection (Trellis: an outbound
//! connection from the pod's workload; Envoy: a TLS handshake on its
//! cluster to the server). The server side is a node proxy (Trellis) or
//! an Envoy sidecar (Envoy), started before the trials.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::bootstrap::{PortSpec, Protocol, Variant};
use super::envoy::Envoy;
use super::mesh::{destinations, MeshPod, MeshSpec, Sidecar};
use crate::harness::run::say;
use crate::harness::sys;
use crate::harness::topo::{BenchTopo, NodeProxy};

/// A pod's first request gives up after this (an error, not a sample).
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Between two tries of the first request.
const RETRY: Duration = Duration::from_millis(1);

/// One shape's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct PodStart {
    pub shape: &'static str,
    /// t1 - t0 of each trial, in ms.
    pub samples_ms: Vec<f64>,
}

impl PodStart {
    pub fn median_ms(&self) -> f64 {
        let mut v = self.samples_ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn max_ms(&self) -> f64 {
        self.samples_ms.iter().copied().fold(0.0, f64::max)
    }

    pub fn to_json(&self) -> Value {
        let r = |x: f64| (x * 100.0).round() / 100.0;
        json!({
            "shape": self.shape,
            "median_ms": r(self.median_ms()),
            "max_ms": r(self.max_ms()),
            "samples_ms": self.samples_ms.iter().map(|&x| r(x)).collect::<Vec<_>>(),
        })
    }
}

pub fn markdown(rows: &[PodStart]) -> String {
    let mut md =
        String::from("| shape | median (ms) | max (ms) | trials (ms) |\n|---|---:|---:|---|\n");
    for r in rows {
        let trials: Vec<String> = r.samples_ms.iter().map(|x| format!("{x:.1}")).collect();
        md += &format!(
            "| {} | {:.1} | {:.1} | {} |\n",
            r.shape,
            r.median_ms(),
            r.max_ms(),
            trials.join(", ")
        );
    }
    md
}

/// Tries an echo to `dst` from inside `ns` every [`RETRY`] until one
/// succeeds; the time of that success.
fn first_echo(pod: &trellis_e2e::Pod, dst: SocketAddr, cpu: usize) -> Result<Instant> {
    let ns = pod.netns()?;
    sys::on_pinned_thread("pod-start", cpu, &ns, move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + FIRST_REQUEST_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let attempt = (|| -> std::io::Result<()> {
                let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_secs(1))?;
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })();
            match attempt {
                Ok(()) => return Ok(Instant::now()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(RETRY);
        }
        bail!("no echo from {dst} within {FIRST_REQUEST_TIMEOUT:?}: {last}")
    })
}

/// Runs `trials` of each shape on fresh extra pods of `bt` (it needs
/// `3 * trials`), the echo server at `echo` in the server pod.
pub fn measure(
    bt: &BenchTopo,
    proxy_bin: &std::path::Path,
    envoy: &Envoy,
    echo: SocketAddr,
    trials: usize,
    cpu: usize,
) -> Result<Vec<PodStart>> {
    if bt.extra.len() < 3 * trials {
        bail!(
            "pod start: {trials} trials of 3 shapes need {} fresh pods, the topology has {}",
            3 * trials,
            bt.extra.len()
        );
    }
    let (ambient_pods, rest) = bt.extra.split_at(trials);
    let (shaped_pods, envoy_pods) = rest.split_at(trials);
    let mut out = Vec::new();
    {
        let node1 = bt.start_proxy(proxy_bin, "node1", &bt.client, cpu)?;
        let _node2 = bt.start_proxy(proxy_bin, "node2", &bt.server, cpu)?;
        let mut ambient = PodStart {
            shape: "Trellis ambient (enrolled by the node proxy)",
            samples_ms: vec![],
        };
        for p in ambient_pods {
            let t0 = Instant::now();
            node1.enroll(&p.name, p.netns_path())?;
            let t1 = first_echo(p, echo, cpu)?;
            meshed_by_trellis(&node1, &p.name)?;
            ambient.samples_ms.push((t1 - t0).as_secs_f64() * 1e3);
        }
        say(format!(
            "  {}: {:.1} ms median",
            ambient.shape,
            ambient.median_ms()
        ));
        out.push(ambient);

        let mut shaped = PodStart {
            shape: "Trellis sidecar-shaped (a proxy started in the pod)",
            samples_ms: vec![],
        };
        let mut keep = Vec::new();
        for p in shaped_pods {
            let t0 = Instant::now();
            let proxy = bt.start_sidecar_proxy(proxy_bin, p, cpu)?;
            let t1 = first_echo(p, echo, cpu)?;
            meshed_by_trellis(&proxy, &p.name)?;
            shaped.samples_ms.push((t1 - t0).as_secs_f64() * 1e3);
            keep.push(proxy);
        }
        say(format!(
            "  {}: {:.1} ms median",
            shaped.shape,
            shaped.median_ms()
        ));
        out.push(shaped);
    }

    // The node proxies are gone; the server pod gets its Envoy sidecar.
    let dir = bt.dir().join("pod-start-envoy");
    let spec = MeshSpec::bench(Variant::L7, cpu, &dir);
    let server = MeshPod {
        pod: bt.server.clone(),
        service_account: "server".into(),
        ports: vec![PortSpec {
            port: echo.port(),
            protocol: Protocol::Tcp,
        }],
    };
    let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca")).context("loading the dev CA")?;
    let all: Vec<MeshPod> = std::iter::once(server.clone())
        .chain(envoy_pods.iter().map(|p| MeshPod {
            pod: p.clone(),
            service_account: "extra".into(),
            ports: vec![],
        }))
        .collect();
    let dests = destinations(&spec, &all);
    let _server_envoy = Sidecar::start(envoy, &bt.topo, &ca, &spec, &server, &dests)?;
    let mut env = PodStart {
        shape: "Envoy sidecar (L7, started in the pod)",
        samples_ms: vec![],
    };
    let mut keep = Vec::new();
    for me in &all[1..] {
        let t0 = Instant::now();
        let sc = Sidecar::spawn(envoy, &bt.topo, &ca, &spec, me, &dests)?;
        let t1 = first_echo(&me.pod, echo, cpu)?;
        let handshakes = sc.stat(&format!(
            "cluster.outbound|{}||server.ssl.handshake",
            echo.port()
        ))?;
        if handshakes < 1 {
            bail!(
                "{}'s first echo did not go through its Envoy (no TLS handshake to the server); log:\n{}",
                me.pod.name,
                sc.log()
            );
        }
        env.samples_ms.push((t1 - t0).as_secs_f64() * 1e3);
        keep.push(sc);
    }
    say(format!("  {}: {:.1} ms median", env.shape, env.median_ms()));
    out.push(env);
    Ok(out)
}

/// The proxy counted an outbound connection from `workload`.
fn meshed_by_trellis(proxy: &NodeProxy, workload: &str) -> Result<()> {
    let text = proxy.metrics_text()?;
    let counted = text.lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("reporter=\"source\"")
            && l.contains(&format!("source_workload=\"{workload}\""))
            && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) >= Some(1.0)
    });
    if !counted {
        bail!("{workload}'s first echo was not counted by its node proxy: it did not go through the mesh");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_max_of_the_trials() {
        // (samples, median, max)
        let cases: [(&[f64], f64, f64); 4] = [
            (&[3.0, 1.0, 2.0], 2.0, 3.0),
            (&[4.0, 1.0, 3.0, 2.0], 2.5, 4.0),
            (&[7.5], 7.5, 7.5),
            (&[], 0.0, 0.0),
        ];
        for (samples, median, max) in cases {
            let r = PodStart {
                shape: "s",
                samples_ms: samples.to_vec(),
            };
            assert_eq!((r.median_ms(), r.max_ms()), (median, max), "{samples:?}");
        }
    }
}
