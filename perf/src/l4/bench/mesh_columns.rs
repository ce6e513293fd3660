//! Starting the Envoy sidecar and Trellis columns on the bench's topology.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::proc_stats;
use crate::harness::run::say;
use crate::harness::topo::BenchTopo;
use crate::l4::latency;
use crate::l4::report::{PathResults, ProxyCosts};
use crate::sidecars::bootstrap::{PortSpec, Protocol, Variant};
use crate::sidecars::envoy::Envoy;
use crate::sidecars::mesh::{start_mesh, MeshPod, MeshSpec};
use crate::sidecars::trellis_columns::{self, L4Topo, Shape};
use crate::{LOADGEN_CPU, SERVER_CPU};
use anyhow::{bail, Context, Result};

use super::*;

/// One Envoy sidecar column: its results and the configs it ran.
pub(super) struct EnvoyColumn {
    pub(super) variant: Variant,
    pub(super) results: PathResults,
    pub(super) costs: ProxyCosts,
    /// (pod, bootstrap) of each sidecar.
    pub(super) configs: Vec<(String, serde_json::Value)>,
}

/// The ports the server pod declares to the Envoy mesh: iperf3 and the
/// echo server as TCP, nginx as HTTP (Istio: a port named `http`).
pub(super) fn server_ports() -> Vec<PortSpec> {
    vec![
        PortSpec {
            port: IPERF_PORT,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            port: ECHO_PORT,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            port: HTTP_PORT,
            protocol: Protocol::Http,
        },
    ]
}

/// The four load phases through Envoy sidecars in the client and server
/// pods, for one variant; checks first that the traffic really crosses both
/// sidecars over mTLS.
pub(super) fn envoy_column(
    o: &Opts,
    bt: &BenchTopo,
    envoy: &Envoy,
    variant: Variant,
) -> Result<EnvoyColumn> {
    let label = variant.name();
    say(format!(
        "{label}: starting Envoy sidecars in the client and server pods (--concurrency 1, pinned to CPU 1)"
    ));
    let dir = bt.dir().join(label);
    let spec = MeshSpec::bench(variant, SERVER_CPU, &dir);
    let mesh = [
        MeshPod {
            pod: bt.client.clone(),
            service_account: "client".into(),
            ports: vec![],
        },
        MeshPod {
            pod: bt.server.clone(),
            service_account: "server".into(),
            ports: server_ports(),
        },
    ];
    let ca = hbone::DevCa::load_from_dir(&bt.dir().join("ca")).context("loading the dev CA")?;
    let mut sidecars = start_mesh(envoy, &bt.topo, &ca, &spec, &mesh)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts::default();
    for sc in &sidecars {
        let kib = proc_stats::rss_kib(sc.pid)
            .with_context(|| format!("reading the RSS of {}'s Envoy", sc.pod))?;
        say(format!("{label}: idle RSS {}'s Envoy: {kib} KiB", sc.pod));
        costs.idle_rss_kib.push((sc.pod.clone(), kib));
    }
    let client_ns = bt.client.netns()?;
    let echo_addr = SocketAddr::new(bt.server.ip, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(15))?;
    let handshakes = (
        sidecars[0].stat(&format!(
            "cluster.outbound|{ECHO_PORT}||server.ssl.handshake"
        ))?,
        sidecars[1].stat("listener.0.0.0.0_15006.ssl.handshake")?,
    );
    if handshakes.0 < 1 || handshakes.1 < 1 {
        bail!(
            "{label}: the sidecars counted {handshakes:?} TLS handshakes (client, server): traffic is not going through them; logs:\n{}\n{}",
            sidecars[0].log(),
            sidecars[1].log()
        );
    }
    let results = run_path(o, bt, label, bt.server.ip, &mut sidecars, &mut costs)?;
    if variant == Variant::L7 {
        let rq = sidecars[0].stat(&format!(
            "http.outbound|{HTTP_PORT}||server.downstream_rq_2xx"
        ))?;
        if rq < 1 {
            bail!("{label}: the client's Envoy counted no HTTP request on port {HTTP_PORT}: the HTTP connection manager was not in the path");
        }
    }
    let configs = sidecars
        .iter()
        .map(|sc| {
            let text = std::fs::read_to_string(&sc.config_path)
                .with_context(|| format!("reading {}", sc.config_path.display()))?;
            Ok((sc.pod.clone(), serde_json::from_str(&text)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EnvoyColumn {
        variant,
        results,
        costs,
        configs,
    })
}

/// One of the Trellis columns beside ambient: its results and costs.
pub(super) struct TrellisColumn {
    pub(super) shape: Shape,
    pub(super) results: PathResults,
    pub(super) costs: ProxyCosts,
}

/// The four load phases through `shape`'s mesh on the bench's topology;
/// checks before and after that the traffic crossed every one of its
/// processes.
pub(super) fn trellis_column(
    o: &Opts,
    l4: &L4Topo,
    shape: Shape,
    proxy_bin: &std::path::Path,
    waypoint_bin: &std::path::Path,
) -> Result<TrellisColumn> {
    let label = shape.column().key();
    say(format!(
        "{label}: starting {} (--workers 1, pinned to CPU {SERVER_CPU})",
        trellis_columns::processes(shape)
    ));
    let mut mesh = l4.start(shape, proxy_bin, waypoint_bin, SERVER_CPU)?;
    std::thread::sleep(Duration::from_secs(1));
    let mut costs = ProxyCosts {
        idle_rss_kib: trellis_columns::idle_rss(&mesh)?,
        ..Default::default()
    };
    for (who, kib) in &costs.idle_rss_kib {
        say(format!("{label}: idle RSS {who}: {kib} KiB"));
    }
    let server = l4.server_addr(shape);
    let client_ns = l4.bt.client.netns()?;
    let echo_addr = SocketAddr::new(server, ECHO_PORT);
    latency::wait_echo(&client_ns, LOADGEN_CPU, echo_addr, Duration::from_secs(15))?;
    trellis_columns::check_carried(shape, &mesh, false)?;
    let results = run_path(o, &l4.bt, label, server, &mut mesh, &mut costs)?;
    trellis_columns::check_carried(shape, &mesh, true)?;
    Ok(TrellisColumn {
        shape,
        results,
        costs,
    })
}
