//! The demo mesh behind `trellis-demo`, kept in the library so an end-to-end
//! test runs exactly what the README's first command runs.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_core::cli::CommonFlags;
use trellis_core::metrics::Metrics;
use trellis_netns::NetNs;
use trellis_node_proxy::app::{self, ProxyHandle};
use trellis_node_proxy::settings::{Mode, OutboundForward, Settings};

use crate::demo_control::ControlPlane;
use crate::demo_waypoint::L7;
use crate::Topology;

const APP_PORTS: [u16; 2] = [8080, 9090];
const CLIENT_LOOPBACK_IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 1, 1));

enum Kind {
    Loopback {
        forwards: Vec<(u16, SocketAddr)>,
    },
    Netns {
        // Boxed: a topology is large, and the loopback mode has none.
        topo: Box<Topology>,
        client: NetNs,
        server_ip: IpAddr,
    },
}

/// A running demo mesh.
pub struct Mesh {
    kind: Kind,
    /// By label: "node1" (client), "node2" (server), then the waypoint's endpoints.
    proxies: Vec<(String, ProxyHandle)>,
    /// The waypoint and its services (loopback mode only).
    l7: Option<L7>,
    /// Serves the proxies' config and certificates; stopped last.
    control: ControlPlane,
    _dir: tempfile::TempDir,
}

/// The proxies of the L4 steps: the client's and the server's.
const L4_PROXIES: [&str; 2] = ["node1", "node2"];

/// A dedicated-mode node proxy on loopback fed by a config file and a dev
/// CA in `dir` (`mesh.yaml`, `ca/`): what tests without a controller use.
pub fn base_settings(dir: &Path, node: &str) -> Settings {
    proxy_settings(
        CommonFlags::loopback(dir.join("mesh.yaml"), dir.join("ca")),
        node,
    )
}

/// A dedicated-mode node proxy with the given config and certificate
/// sources, admin listeners on ephemeral ports, one worker. Callers set the
/// workload and listeners.
pub fn proxy_settings(common: CommonFlags, node: &str) -> Settings {
    Settings {
        common,
        mode: Mode::Dedicated,
        node: node.into(),
        trust_bundle: None,
        workload_uid: None,
        outbound_addr: None,
        hbone_addr: None,
        inbound_plain_addr: None,
        outbound_forwards: vec![],
        capture: false,
        pods: vec![],
        zds_socket: None,
        cluster_id: "Kubernetes".into(),
        hbone_engine: trellis_node_proxy::settings::HboneEngine::H2,
        workers: 1,
        drain_deadline: Duration::from_secs(2),
        access_log: trellis_node_proxy::settings::LogFormat::Text,
        preserve_source_ip: true,
        install_redirect: true,
        // Several proxies in one process: each gets its own lock and socket.
        runtime_dir: std::env::temp_dir()
            .join(format!("trellis-demo-{}-{node}", std::process::id())),
        handover_socket: None,
        takeover: None,
        auto_takeover: false,
        handover_drain_deadline: Duration::from_secs(2),
    }
}

/// The workload uid the controller gives a demo pod (Istio's format).
pub fn pod_uid(name: &str) -> String {
    format!("Kubernetes//Pod/demo/{name}")
}

/// Writes the manifests and starts the controller on them.
fn start_control(
    dir: &Path,
    client_ip: IpAddr,
    server_ip: IpAddr,
    l7: bool,
) -> Result<ControlPlane> {
    let manifests = dir.join("manifests");
    crate::demo_manifests::write(&manifests, client_ip, server_ip, l7)?;
    ControlPlane::start(dir, &manifests)
}

/// Waits until each named readiness endpoint answers 200: the proxies
/// have their first config from the controller.
fn wait_ready(endpoints: &[(String, Option<SocketAddr>)]) -> Result<()> {
    const LIMIT: Duration = Duration::from_secs(10);
    for (who, addr) in endpoints {
        let addr = addr.ok_or_else(|| anyhow!("{who} has no readiness listener"))?;
        let deadline = Instant::now() + LIMIT;
        while !matches!(
            crate::cluster::http(addr, "GET", "/healthz/ready", ""),
            Ok((200, _))
        ) {
            if Instant::now() > deadline {
                bail!("{who} was not ready within {LIMIT:?}: has it reached the controller?");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// A line server: answers each connection with who it is and whom it sees.
fn spawn_app(listener: TcpListener, name: &'static str) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                let port = conn.local_addr().map(|a| a.port()).unwrap_or(0);
                let mut r = BufReader::new(&conn);
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() && !line.is_empty() {
                    let _ = writeln!(&conn, "{name}:{port} got {:?} from {peer}", line.trim());
                }
            });
        }
    });
}

impl Mesh {
    /// Loopback mesh, no root: proxies in dedicated mode with static captures.
    pub fn start_loopback() -> Result<Mesh> {
        let dir = tempfile::tempdir()?;
        let client_ip = CLIENT_LOOPBACK_IP;
        let server_ip: IpAddr = "127.0.2.1".parse()?;
        let control = start_control(dir.path(), client_ip, server_ip, true)?;
        for port in APP_PORTS {
            let l = TcpListener::bind((server_ip, port))
                .with_context(|| format!("binding the demo app on {server_ip}:{port}"))?;
            spawn_app(l, "server");
        }
        let mut server = proxy_settings(control.flags("node2"), "node2");
        server.workload_uid = Some(pod_uid("server"));
        server.hbone_addr = Some(SocketAddr::new(server_ip, 15008));
        let server_h = app::start(server, None).context("starting the server-side proxy")?;
        let (mut l7, endpoint_proxies) = L7::start(
            |node| proxy_settings(control.flags(node), node),
            control.flags("waypoint"),
            client_ip,
        )?;
        let mut client = proxy_settings(control.flags("node1"), "node1");
        client.workload_uid = Some(pod_uid("client"));
        client.hbone_addr = Some(SocketAddr::new(client_ip, 15008));
        // Captures for the server's ports, then for the waypoint's service VIPs.
        let targets = APP_PORTS
            .iter()
            .map(|&p| SocketAddr::new(server_ip, p))
            .chain(L7::forward_targets());
        client.outbound_forwards = targets
            .map(|target| OutboundForward {
                listen: SocketAddr::new(client_ip, 0),
                target,
            })
            .collect();
        let client_h = app::start(client, None).context("starting the client-side proxy")?;
        let bound = &client_h.addrs.forwards;
        let forwards = APP_PORTS
            .iter()
            .copied()
            .zip(bound.iter().copied())
            .collect();
        l7.set_forwards(bound.get(APP_PORTS.len()..).unwrap_or_default());
        let mut proxies = vec![("node1".into(), client_h), ("node2".into(), server_h)];
        proxies.extend(endpoint_proxies);
        let mut ready: Vec<(String, Option<SocketAddr>)> = proxies
            .iter()
            .map(|(n, h)| (format!("proxy {n}"), h.addrs.readiness))
            .collect();
        ready.push(("the waypoint".into(), l7.readiness()));
        wait_ready(&ready)?;
        Ok(Mesh {
            kind: Kind::Loopback { forwards },
            proxies,
            l7: Some(l7),
            control,
            _dir: dir,
        })
    }

    /// Netns mesh (root): two nodes, a pod on each, proxies in shared mode.
    pub fn start_netns() -> Result<Mesh> {
        if !crate::require_root() {
            bail!("the netns demo needs root, ip and nft (TRELLIS_SKIP_NETNS is set)");
        }
        let topo = Topology::builder()
            .node("node1")
            .node("node2")
            .pod("node1", "client")
            .pod("node2", "server")
            .build()?;
        let dir = tempfile::tempdir()?;
        let client = topo.pod("client").ok_or_else(|| anyhow!("no client pod"))?;
        let server = topo.pod("server").ok_or_else(|| anyhow!("no server pod"))?;
        let (client_ip, server_ip) = (client.ip, server.ip);
        let control = start_control(dir.path(), client_ip, server_ip, false)?;
        let server_ns = server.netns()?;
        for port in APP_PORTS {
            let l = server_ns
                .run_in(|| TcpListener::bind((server_ip, port)))?
                .with_context(|| format!("binding the demo app in the server pod on {port}"))?;
            spawn_app(l, "server");
        }
        let mut handles = Vec::new();
        for (node, pod) in [("node1", client), ("node2", server)] {
            let mut s = proxy_settings(control.flags(node), node);
            s.mode = Mode::Shared;
            // Named by workload uid: the controller's name for the pod.
            s.pods = vec![format!(
                "{}={}",
                pod_uid(&pod.name),
                pod.netns_path().display()
            )];
            handles.push((
                node.to_string(),
                app::start(s, None).with_context(|| format!("starting the {node} proxy"))?,
            ));
        }
        let ready: Vec<(String, Option<SocketAddr>)> = handles
            .iter()
            .map(|(n, h)| (format!("proxy {n}"), h.addrs.readiness))
            .collect();
        wait_ready(&ready)?;
        let client_ns = client.netns()?;
        Ok(Mesh {
            kind: Kind::Netns {
                topo: Box::new(topo),
                client: client_ns,
                server_ip,
            },
            proxies: handles,
            l7: None,
            control,
            _dir: dir,
        })
    }

    pub fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Loopback { .. } => "loopback, dedicated mode, no root",
            Kind::Netns { .. } => "network namespaces, shared mode, nftables capture",
        }
    }

    pub fn topology_lines(&self) -> Vec<String> {
        let addrs = self.control.addrs();
        let mut v = vec![format!(
            "controller {} (manifests mode, CA inside; admin {}): every proxy below gets its \
             config over xDS and its certificates from it, and holds no CA key",
            addrs.grpc, addrs.admin
        )];
        match &self.kind {
            Kind::Loopback { forwards } => {
                v.push("client workload 127.0.1.1 (spiffe://cluster.local/ns/demo/sa/client), proxy node1".into());
                v.push("server workload 127.0.2.1 (spiffe://cluster.local/ns/demo/sa/server), proxy node2 hbone 127.0.2.1:15008".into());
                for (port, listen) in forwards {
                    v.push(format!("capture {listen} -> 127.0.2.1:{port}"));
                }
            }
            Kind::Netns {
                topo, server_ip, ..
            } => {
                for p in topo.pods() {
                    v.push(format!("pod {} {} on {}", p.name, p.ip, p.node));
                }
                v.push(format!("server app listens on {server_ip}:8080 and :9090"));
            }
        }
        if let Some(l7) = &self.l7 {
            v.extend(l7.topology_lines());
        }
        for (node, h) in &self.proxies {
            v.push(format!(
                "proxy {node}: admin {} metrics {}",
                shown(h.addrs.admin),
                shown(h.addrs.metrics)
            ));
        }
        v
    }

    /// Sends one line to the server's `port` through the mesh; returns the reply ("" if closed).
    pub fn request(&self, port: u16, msg: &str) -> Result<String> {
        let stream = match &self.kind {
            Kind::Loopback { forwards } => {
                let addr = forwards
                    .iter()
                    .find(|(p, _)| *p == port)
                    .map(|(_, a)| *a)
                    .ok_or_else(|| anyhow!("no capture for port {port}"))?;
                // Connect from the client workload's own address, as the app
                // would, so the server side can name the source workload.
                let sock =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                sock.bind(&SocketAddr::new(CLIENT_LOOPBACK_IP, 0).into())?;
                sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
                TcpStream::from(sock)
            }
            Kind::Netns {
                client, server_ip, ..
            } => {
                let dst = SocketAddr::new(*server_ip, port);
                client.run_in(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))??
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        writeln!(&stream, "{msg}")?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        Ok(line)
    }

    /// The waypoint part, in loopback mode.
    pub fn waypoint(&self) -> Option<&L7> {
        self.l7.as_ref()
    }

    fn metrics(&self) -> impl Iterator<Item = (&str, &Arc<Metrics>)> {
        self.proxies.iter().map(|(n, h)| (n.as_str(), &h.metrics))
    }

    /// Waits until the client's and the server's proxies have recorded `n`
    /// closed connections each.
    pub fn wait_for_closed_connections(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut l4 = self.metrics().filter(|(name, _)| L4_PROXIES.contains(name));
            let done = l4.all(|(_, m)| {
                sum_metric(&m.encode_text(), "istio_tcp_connections_closed_total") >= n as f64
            });
            if done {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("proxies did not record {n} closed connections within 10s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One line per proxy and reporter: who talked to whom, by SPIFFE identity.
    pub fn hop_lines(&self) -> Result<Vec<String>> {
        let mut v = vec![];
        for (node, m) in self.metrics() {
            for line in m.encode_text().lines() {
                if !line.starts_with("istio_tcp_connections_opened_total{") {
                    continue;
                }
                let l = |k: &str| label(line, k).unwrap_or_default();
                let service = match l("destination_service") {
                    s if s.is_empty() || s == trellis_core::metrics::UNKNOWN => String::new(),
                    s => format!(" service={s}"),
                };
                v.push(format!(
                    "{node} reporter={}: {} ({}) -> {} ({}){service} security={}",
                    l("reporter"),
                    l("source_workload"),
                    l("source_principal"),
                    l("destination_workload"),
                    l("destination_principal"),
                    l("connection_security_policy"),
                ));
            }
        }
        Ok(v)
    }

    /// The controller's own counters: streams, pushes, certificates.
    pub fn controller_lines(&self) -> Result<Vec<String>> {
        self.control.summary_lines()
    }

    /// The controller's Prometheus text.
    pub fn controller_metrics(&self) -> Result<String> {
        self.control.metrics_text()
    }

    /// How many proxies the demo runs (the waypoint not counted).
    pub fn proxy_count(&self) -> usize {
        self.proxies.len()
    }

    /// The counters an operator would look at: one line per proxy, then its
    /// non-zero error counters.
    pub fn counter_lines(&self) -> Result<Vec<String>> {
        let mut v = vec![];
        for (node, m) in self.metrics() {
            let text = m.encode_text();
            let [opened, closed, sent, received] = [
                "istio_tcp_connections_opened_total",
                "istio_tcp_connections_closed_total",
                "istio_tcp_sent_bytes_total",
                "istio_tcp_received_bytes_total",
            ]
            .map(|name| sum_metric(&text, name));
            v.push(format!(
                "{node}: istio_tcp_connections opened {opened} closed {closed}, \
                 istio_tcp bytes sent {sent} received {received}"
            ));
            for line in text
                .lines()
                .filter(|l| l.starts_with("trellis_proxy_errors_total{") && !l.ends_with(" 0"))
            {
                v.push(format!("{node} {line}"));
            }
        }
        Ok(v)
    }

    /// Stops everything at once, so the drains overlap, then waits.
    pub fn stop(self) {
        if let Some(l7) = &self.l7 {
            l7.stop();
        }
        for (_, h) in &self.proxies {
            h.stop();
        }
        if let Some(l7) = self.l7 {
            l7.wait();
        }
        for (_, h) in self.proxies {
            h.wait();
        }
        self.control.stop();
    }
}

/// Sum of every sample of a metric in Prometheus text format.
pub fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A label's value in one Prometheus sample line.
pub fn label(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!("{key}=\""))? + key.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_string())
}

/// An optional bound address as an operator reads it.
pub(crate) fn shown(addr: Option<std::net::SocketAddr>) -> String {
    addr.map_or_else(|| "(off)".to_string(), |a| a.to_string())
}
