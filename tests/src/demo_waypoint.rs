//! The waypoint half of the loopback demo: an in-process waypoint on
//! 127.0.3.1:15008 in front of two services, their endpoints (one app server
//! and one dedicated node proxy each, HBONE on `<endpoint ip>:15008`), and the
//! HTTP steps the demo runs through it.
//!
//! The client reaches the services' VIPs through its own node proxy's static
//! captures; the VIPs are never dialled, the node proxy sees the service has
//! a waypoint and tunnels to it with the client's identity.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::header::{HOST, RETRY_AFTER};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use trellis_core::cli::CommonFlags;
use trellis_node_proxy::app::{self, ProxyHandle};
use trellis_node_proxy::settings::Settings as ProxySettings;
use trellis_waypoint::app::WaypointHandle;
use trellis_waypoint::settings::Settings;

use crate::demo::{label, sum_metric};
use crate::l7kit::{HttpServer, Mode, SERVER_HEADER};

pub const WAYPOINT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1));
pub const WAYPOINT_PRINCIPAL: &str = "spiffe://cluster.local/ns/demo/sa/waypoint";
pub const REVIEWS_HOST: &str = "reviews.demo.svc.cluster.local";
pub const RATINGS_HOST: &str = "ratings.demo.svc.cluster.local";
const REVIEWS_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10));
const RATINGS_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 96, 0, 20));
const SERVICE_PORT: u16 = 80;
const APP_PORT: u16 = 8080;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One endpoint workload: name, address, service account, and whether its app always answers 503.
pub(crate) struct Endpoint {
    pub(crate) name: &'static str,
    pub(crate) ip: Ipv4Addr,
    pub(crate) sa: &'static str,
    failing: bool,
}

pub(crate) const ENDPOINTS: [Endpoint; 4] = [
    Endpoint {
        name: "reviews-v1",
        ip: Ipv4Addr::new(127, 0, 2, 11),
        sa: "reviews",
        failing: false,
    },
    Endpoint {
        name: "reviews-v2",
        ip: Ipv4Addr::new(127, 0, 2, 12),
        sa: "reviews",
        failing: false,
    },
    Endpoint {
        name: "ratings-1",
        ip: Ipv4Addr::new(127, 0, 2, 21),
        sa: "ratings",
        failing: false,
    },
    Endpoint {
        name: "ratings-2",
        ip: Ipv4Addr::new(127, 0, 2, 22),
        sa: "ratings",
        failing: true,
    },
];

/// The services the client calls, in the order of [`L7::forward_targets`].
const CALLED: [(&str, IpAddr); 2] = [(REVIEWS_HOST, REVIEWS_VIP), (RATINGS_HOST, RATINGS_VIP)];

/// One HTTP answer, as the demo reports it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The app server that answered (its `x-server` header); None for the waypoint's own answers.
    pub server: Option<String>,
    pub retry_after: Option<String>,
    pub body: String,
}

/// What the retry step saw.
#[derive(Debug, Clone)]
pub struct RetryOutcome {
    /// Status code → number of answers the client got.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests each ratings endpoint received (tries and retries).
    pub hits: Vec<(String, usize, bool)>,
    /// `trellis_waypoint_retries_total` for the rule.
    pub retries: f64,
}

/// The running waypoint, endpoint apps, and the client's captures for the services' VIPs.
pub struct L7 {
    waypoint: WaypointHandle,
    servers: Vec<HttpServer>,
    /// Client-side capture address per called service host.
    forwards: Vec<(&'static str, SocketAddr)>,
    client_ip: IpAddr,
}

impl L7 {
    /// The VIP:port targets the client proxy must capture, in order; pass its
    /// bound listen addresses back to [`L7::set_forwards`].
    pub fn forward_targets() -> Vec<SocketAddr> {
        CALLED
            .iter()
            .map(|&(_, vip)| SocketAddr::new(vip, SERVICE_PORT))
            .collect()
    }

    /// Starts the endpoint apps, their node proxies and the waypoint. `base`
    /// gives a node's dedicated-mode proxy settings (its control plane
    /// flags, ports on 0); `waypoint` is the waypoint's control plane flags.
    pub fn start(
        base: impl Fn(&str) -> ProxySettings,
        waypoint: CommonFlags,
        client_ip: IpAddr,
    ) -> Result<(L7, Vec<(String, ProxyHandle)>)> {
        let mut servers = Vec::new();
        let mut proxies = Vec::new();
        for e in &ENDPOINTS {
            let addr = SocketAddr::new(IpAddr::V4(e.ip), APP_PORT);
            let s = HttpServer::start(None, addr, e.name)
                .with_context(|| format!("binding the {} app on {addr}", e.name))?;
            if e.failing {
                s.set_mode(Mode::Status(503));
            }
            servers.push(s);
            let mut p = base("node2");
            p.workload_uid = Some(crate::demo::pod_uid(e.name));
            p.hbone_addr = Some(SocketAddr::new(IpAddr::V4(e.ip), 15008));
            let h = app::start(p, None)
                .with_context(|| format!("starting the {} node proxy", e.name))?;
            proxies.push((e.name.to_string(), h));
        }
        let waypoint = trellis_waypoint::app::start(waypoint_settings(waypoint), None)
            .context("starting the waypoint")?;
        let l7 = L7 {
            waypoint,
            servers,
            forwards: vec![],
            client_ip,
        };
        Ok((l7, proxies))
    }

    /// The client proxy's bound capture addresses for [`L7::forward_targets`], in order.
    pub fn set_forwards(&mut self, listen: &[SocketAddr]) {
        self.forwards = CALLED
            .iter()
            .map(|&(h, _)| h)
            .zip(listen.iter().copied())
            .collect();
    }

    pub fn topology_lines(&self) -> Vec<String> {
        let mut v = vec![format!(
            "waypoint demo/waypoint {} ({WAYPOINT_PRINCIPAL}), in process, metrics {}",
            self.waypoint
                .addrs
                .hbone
                .map(|a| a.to_string())
                .unwrap_or_default(),
            crate::demo::shown(self.waypoint.addrs.metrics),
        )];
        for e in &ENDPOINTS {
            v.push(format!(
                "endpoint {} app {}:{APP_PORT}{}, proxy hbone {}:15008 (spiffe://cluster.local/ns/demo/sa/{})",
                e.name,
                e.ip,
                if e.failing { " (always 503)" } else { "" },
                e.ip,
                e.sa
            ));
        }
        for (host, vip) in CALLED {
            let listen = self
                .forward(host)
                .map(|a| a.to_string())
                .unwrap_or_default();
            v.push(format!(
                "capture {listen} -> {host} {vip}:{SERVICE_PORT} (via the waypoint)"
            ));
        }
        v
    }

    /// The waypoint's readiness probe address.
    pub fn readiness(&self) -> Option<SocketAddr> {
        self.waypoint.addrs.readiness
    }

    fn forward(&self, host: &str) -> Result<SocketAddr> {
        self.forwards
            .iter()
            .find(|(h, _)| *h == host)
            .map(|(_, a)| *a)
            .ok_or_else(|| anyhow!("no capture for {host}"))
    }

    /// GETs `paths` in turn on one kept-alive connection from the client
    /// workload to `host`, through its node proxy and the waypoint.
    pub fn get(&self, host: &str, paths: &[&str]) -> Result<Vec<Reply>> {
        get_all(Some(self.client_ip), self.forward(host)?, host, paths)
    }

    /// `n` requests to `reviews`: how many each version answered.
    pub fn canary(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let mut counts = BTreeMap::new();
        for r in self.get(REVIEWS_HOST, &vec!["/"; n])? {
            let who = match (r.status, r.server) {
                (200, Some(s)) => s,
                (status, _) => format!("status {status}"),
            };
            *counts.entry(who).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The deny step: `GET /admin` (denied by path) then `GET /`, to `reviews`.
    pub fn deny(&self) -> Result<Vec<(&'static str, Reply)>> {
        let paths = ["/admin", "/"];
        Ok(paths
            .into_iter()
            .zip(self.get(REVIEWS_HOST, &paths)?)
            .collect())
    }

    /// The rate-limit step: `n` requests at once to the rate-limited rule.
    pub fn rate_limit(&self, n: usize) -> Result<Vec<Reply>> {
        self.get(REVIEWS_HOST, &vec!["/limited"; n])
    }

    /// `n` requests to `ratings`, whose second endpoint always answers 503.
    pub fn retry(&self, n: usize) -> Result<RetryOutcome> {
        for s in &self.servers {
            s.reset_count();
        }
        let mut statuses = BTreeMap::new();
        for r in self.get(RATINGS_HOST, &vec!["/"; n])? {
            *statuses.entry(r.status).or_insert(0) += 1;
        }
        let hits = self
            .servers
            .iter()
            .zip(&ENDPOINTS)
            .filter(|(_, e)| e.sa == "ratings")
            .map(|(s, e)| (e.name.to_string(), s.count(), e.failing))
            .collect();
        let retries = label_sum(
            &self.metrics_text()?,
            "trellis_waypoint_retries_total",
            "rule",
            "demo/ratings/retry",
        );
        Ok(RetryOutcome {
            statuses,
            hits,
            retries,
        })
    }

    /// The waypoint's Prometheus text.
    pub fn metrics_text(&self) -> Result<String> {
        let addr = self
            .waypoint
            .addrs
            .metrics
            .ok_or_else(|| anyhow!("the waypoint has no metrics listener"))?;
        let r = get_all(None, addr, "localhost", &["/metrics"])?;
        let r = r.into_iter().next().ok_or_else(|| anyhow!("no answer"))?;
        if r.status != 200 {
            bail!("waypoint /metrics answered {}", r.status);
        }
        Ok(r.body)
    }

    /// Waits until the waypoint has recorded `n` requests: a request is
    /// recorded when its response body ends, just after the client has it.
    pub fn wait_for_requests(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = sum_metric(&self.metrics_text()?, "istio_requests_total");
            if seen >= n as f64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the waypoint recorded {seen} requests, not {n}, within 5s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `istio_requests_total` in brief: caller identity, service, endpoint, code, flags, count.
    pub fn request_lines(&self) -> Result<Vec<String>> {
        let text = self.metrics_text()?;
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|line| {
                let l = |k: &str| label(line, k).unwrap_or_default();
                format!(
                    "{} -> {} ({}) code={} flags={} x{}",
                    l("source_principal"),
                    l("destination_service"),
                    l("destination_workload"),
                    l("response_code"),
                    l("response_flags"),
                    line.rsplit(' ').next().unwrap_or("?"),
                )
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Stops the waypoint (without waiting); see [`L7::wait`].
    pub fn stop(&self) {
        self.waypoint.stop();
    }

    pub fn wait(self) {
        self.waypoint.wait();
    }
}

fn waypoint_settings(common: CommonFlags) -> Settings {
    Settings {
        common,
        name: "demo/waypoint".into(),
        service_account: "waypoint".into(),
        trust_domain: "cluster.local".into(),
        listen: SocketAddr::new(WAYPOINT_IP, 15008),
        workers: 1,
        drain_deadline: Duration::from_secs(1),
        access_log: false,
        sniff_timeout: Duration::from_secs(1),
        max_header_bytes: 64 * 1024,
        max_concurrent_streams: 256,
        handover_socket: None,
        takeover: None,
        handover_drain_deadline: Duration::from_secs(3600),
    }
}

/// Sum of the samples of `name` whose label `key` is `value`.
fn label_sum(text: &str, name: &str, key: &str, value: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| label(l, key).as_deref() == Some(value))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GETs `paths` in turn on one HTTP/1.1 keep-alive connection to `dst`,
/// from `src` when given (the client workload's own address, so the mesh
/// sees the real source), bounded by [`CLIENT_TIMEOUT`].
fn get_all(src: Option<IpAddr>, dst: SocketAddr, host: &str, paths: &[&str]) -> Result<Vec<Reply>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client's runtime")?;
    let exchange = async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = src {
            sock.bind(SocketAddr::new(ip, 0))?;
        }
        let tcp = sock
            .connect(dst)
            .await
            .with_context(|| format!("connecting to {dst}"))?;
        tcp.set_nodelay(true)?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let mut replies = Vec::with_capacity(paths.len());
        for path in paths {
            send.ready().await?;
            let req = http::Request::get(*path)
                .header(HOST, host)
                .body(Empty::<Bytes>::new())?;
            let resp = send.send_request(req).await?;
            let text = |name| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let (status, server, retry_after) = (
                resp.status().as_u16(),
                text(SERVER_HEADER),
                text(RETRY_AFTER.as_str()),
            );
            let body = resp.into_body().collect().await?.to_bytes();
            replies.push(Reply {
                status,
                server,
                retry_after,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        anyhow::Ok(replies)
    };
    rt.block_on(async {
        tokio::time::timeout(CLIENT_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer from {dst} within {CLIENT_TIMEOUT:?}"))?
    })
    .with_context(|| format!("GET {host} via {dst}"))
}
