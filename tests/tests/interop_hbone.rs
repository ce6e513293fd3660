//! HBONE interop with an independent implementation.
//!
//! `interop/hbone_peer.py` speaks HBONE with Python's `ssl` (OpenSSL) and the
//! pure-Python `h2` package, where Trellis uses rustls and the Rust `h2`
//! crate. A node proxy runs in process (dedicated mode, loopback, no root)
//! and the Python peer plays the other side: an HBONE client dialling the
//! proxy's inbound, and an HBONE server the proxy's outbound tunnels to.
//! Istio's ztunnel cannot be built here; this is the closest independent
//! peer available.
//!
//! The tests fail, never skip, without `python3` and `h2` 4.x:
//! `python3 -m pip install 'h2>=4.1,<5'` (`.ci/run` does it).
//!
//! Addresses: 127.0.9.0/24, distinct IPs per test (.1-.3, .11-.13, .21-.23,
//! .31-.32, .41-.43, .51-.53, .61-.62) so parallel tests can use the fixed ports HBONE needs (15008)
//! without colliding.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;
use trellis_e2e::cluster::{http, labels_of};
use trellis_e2e::process::OwnedChild;
use trellis_e2e::{wait_for, TestServer};
use trellis_node_proxy::app::{self, ProxyHandle};
use trellis_node_proxy::settings::{HboneEngine, OutboundForward, Settings};

const TRUST_DOMAIN: &str = "cluster.local";
const NS: &str = "interop";
const APP_PORT: u16 = 8080;
const HBONE_PORT: u16 = 15008;
const PYTHON: &str = "python3";
const PEER_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/interop/hbone_peer.py");
const INSTALL: &str = "python3 -m pip install 'h2>=4.1,<5' \
     (.ci/run does this; the interop tests fail rather than skip without it)";
/// Bound on every wait for the Python peer: a line, or its exit.
const PEER_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on waiting for the proxy's metrics to show a finished connection.
const METRICS_DEADLINE: Duration = Duration::from_secs(10);
/// 32 bytes x 8192: 256 KiB, four times HTTP/2's default 64 KiB window, so
/// both stacks must send WINDOW_UPDATEs for the tunnel to finish.
const PAYLOAD_LINE: &str = "hbone interop 0123456789abcdef\n\n";
const PAYLOAD_REPEAT: usize = 8192;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 9, last))
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{NS}/sa/{sa}")
}

fn payload() -> String {
    PAYLOAD_LINE.repeat(PAYLOAD_REPEAT)
}

/// One Python process, killed and reaped on drop (by `OwnedChild`). Its
/// stdout is read line by line on a thread so every wait has a deadline.
struct Python {
    what: String,
    child: OwnedChild,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: JoinHandle<()>,
}

impl Python {
    fn spawn(what: &str, args: &[String]) -> Python {
        let mut child = Command::new(PYTHON)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {PYTHON} for the {what}: {e}; install Python 3, then run: {INSTALL}")
            });
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr_pipe = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr_pipe);
            let mut line = String::new();
            while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&line);
                line.clear();
            }
        });
        Python {
            what: what.to_string(),
            child: OwnedChild::new(child),
            lines,
            stderr,
            stderr_reader,
        }
    }

    /// Runs the peer script in `mode`.
    fn peer(what: &str, mode: &str, args: Vec<String>) -> Python {
        let mut argv = vec![PEER_SCRIPT.to_string(), mode.to_string()];
        argv.extend(args);
        Python::spawn(what, &argv)
    }

    /// What the process wrote to stderr, after giving it a moment to exit
    /// so a traceback is complete.
    fn stderr(&mut self) -> String {
        if self.child.wait_exit(Duration::from_secs(2)).is_some() {
            // The pipe is closed once it exited: the reader finishes soon.
            let _ = wait_for(Duration::from_secs(1), "stderr reader", || {
                self.stderr_reader.is_finished().then_some(())
            });
        }
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A failure message naming the process, with its stderr.
    fn failure(&mut self, msg: &str) -> String {
        let stderr = self.stderr();
        format!("the {} {msg}; stderr:\n{stderr}", self.what)
    }

    fn next_line(&mut self) -> Result<String, String> {
        match self.lines.recv_timeout(PEER_DEADLINE) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => {
                Err(self.failure(&format!("printed nothing within {PEER_DEADLINE:?}")))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(self.failure("exited without printing a line"))
            }
        }
    }

    fn next_json(&mut self) -> Value {
        let line = self.next_line().unwrap_or_else(|e| panic!("{e}"));
        match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => panic!(
                "{}",
                self.failure(&format!("printed a line that is not JSON ({e}): {line:?}"))
            ),
        }
    }

    fn expect_clean_exit(&mut self) {
        match self.child.wait_exit(PEER_DEADLINE) {
            Some(status) if status.success() => {}
            Some(status) => panic!("{}", self.failure(&format!("exited with {status}"))),
            None => panic!(
                "{}",
                self.failure(&format!("did not exit within {PEER_DEADLINE:?}"))
            ),
        }
    }
}

/// Fails the test unless `python3` can import `h2` 4.1 or later (below 5).
fn require_python_h2() {
    let mut probe = Python::spawn(
        "h2 probe",
        &["-c".into(), "import h2; print(h2.__version__)".into()],
    );
    let version = probe.next_line().unwrap_or_else(|e| {
        panic!("the interop tests need the Python package h2 4.x, and {PYTHON} cannot import it; install it with: {INSTALL}\n{e}")
    });
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().flatten(), parts.next().flatten());
    assert!(
        major == Some(4) && minor.is_some_and(|m| m >= 1),
        "the interop tests need the Python package h2 >= 4.1, < 5, found {version:?}; install it with: {INSTALL}"
    );
    probe.expect_clean_exit();
}

/// A proxy started in process; drained and joined on drop, panicking or not.
struct Proxy(Option<ProxyHandle>);

impl Proxy {
    fn start(settings: Settings) -> Proxy {
        Proxy(Some(app::start(settings, None).expect("node proxy starts")))
    }

    fn handle(&self) -> &ProxyHandle {
        self.0.as_ref().expect("proxy is running until drop")
    }

    fn metrics(&self) -> String {
        let addr = self.handle().addrs.metrics.expect("metrics listener bound");
        let (status, body) = http(addr, "GET", "/metrics", "").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics on {addr}: {body}");
        body
    }

    /// Polls /metrics until `cond` holds; the last scrape is in the panic.
    fn wait_metrics(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        wait_for(METRICS_DEADLINE, what, || {
            last = self.metrics();
            cond(&last).then(|| last.clone())
        })
        .unwrap_or_else(|e| panic!("{e}; last scrape:\n{last}"))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.stop();
            h.wait();
        }
    }
}

/// Sum of the samples of `name` whose labels include every pair in `want`.
fn metric(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            let labels = labels_of(l);
            want.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn settings(dir: &Path, node: &str, workload: &str) -> Settings {
    let mut s = trellis_e2e::demo::base_settings(dir, node);
    s.workload_uid = Some(workload.into());
    // Plain loopback sockets: no transparent source, no redirect rules.
    s.preserve_source_ip = false;
    s.install_redirect = false;
    s
}

fn workload_yaml(sa: &str, addr: IpAddr, node: &str, policies: &[&str]) -> String {
    let policies = policies
        .iter()
        .map(|p| format!("{NS}/{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "  - uid: {NS}/{sa}\n    name: {sa}\n    namespace: {NS}\n    serviceAccount: {sa}\n    \
         addresses: [{addr}]\n    node: {node}\n    protocol: HBONE\n    \
         authorizationPolicies: [{policies}]\n"
    )
}

fn policy_yaml(name: &str, action: &str, principal_sa: &str, port: Option<u16>) -> String {
    let port_rule = port
        .map(|p| format!("          - matches:\n              - destinationPorts: [{p}]\n"))
        .unwrap_or_default();
    format!(
        "  - name: {name}\n    namespace: {NS}\n    scope: WORKLOAD_SELECTOR\n    action: {action}\n    \
         groups:\n      - rules:\n          - matches:\n              \
         - principals: [\"{TRUST_DOMAIN}/ns/{NS}/sa/{principal_sa}\"]\n{port_rule}"
    )
}

/// Writes a certificate for `ns/interop/sa/<sa>` issued by `ca`; returns
/// the chain and key paths.
fn peer_cert(dir: &Path, ca: &hbone::DevCa, sa: &str) -> (PathBuf, PathBuf) {
    let id = hbone::Identity::new(TRUST_DOMAIN, NS, sa);
    let cert = ca
        .issue(&id, Duration::from_secs(3600))
        .expect("issue peer cert");
    let chain = dir.join(format!("{sa}-chain.pem"));
    let key = dir.join(format!("{sa}-key.pem"));
    std::fs::write(&chain, cert.chain_pem()).expect("write chain");
    std::fs::write(&key, cert.key_pem()).expect("write key");
    (chain, key)
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// How the foreign client's certificate is made.
enum ClientCert {
    /// Issued by the mesh's CA.
    MeshCa,
    /// Issued by an unrelated CA (the client still trusts the mesh's root,
    /// so only the proxy's check of the client can fail).
    OtherCa,
}

/// Addresses of one inbound test, from `base` up: the Trellis workload, the
/// foreign node the Python client dials from, and the foreign pod it speaks
/// for. As with ztunnel, the tunnel comes from the node's address and the
/// pod's address travels in `forwarded`, so metrics naming the pod's
/// workload show Trellis read that header.
#[derive(Clone, Copy)]
struct Ips {
    server: IpAddr,
    peer_node: IpAddr,
    peer_pod: IpAddr,
    /// The proxy's HBONE engine.
    engine: HboneEngine,
}

impl Ips {
    fn from(base: u8) -> Ips {
        Ips {
            server: ip(base),
            peer_node: ip(base + 1),
            peer_pod: ip(base + 2),
            engine: HboneEngine::H2,
        }
    }

    fn lite(self) -> Ips {
        Ips {
            engine: HboneEngine::Lite,
            ..self
        }
    }

    fn forwarded_for(&self) -> SocketAddr {
        SocketAddr::new(self.peer_pod, 40000)
    }
}

/// The inbound side: a proxy serving workload `server`, an echo app behind
/// it, and the foreign client's files. Policy ALLOWs `sa/foreign` on 8080;
/// `deny` adds a DENY for `sa/foreign`, which wins over the ALLOW.
struct Inbound {
    ips: Ips,
    echo: TestServer,
    proxy: Proxy,
    trust: PathBuf,
    chain: PathBuf,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Inbound {
    fn start(ips: Ips, deny: bool, cert: ClientCert) -> Inbound {
        Inbound::start_with(ips, deny, cert, true)
    }

    /// `foreign_known`: whether the proxy's config holds the foreign
    /// client's workload (with on-demand state, a remote one may be missing).
    fn start_with(ips: Ips, deny: bool, cert: ClientCert, foreign_known: bool) -> Inbound {
        require_python_h2();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = hbone::DevCa::generate(TRUST_DOMAIN).expect("dev CA");
        ca.write_to_dir(&dir.path().join("ca")).expect("write CA");
        let mut policies = vec!["allow-foreign"];
        let mut policy_text = policy_yaml("allow-foreign", "ALLOW", "foreign", Some(APP_PORT));
        if deny {
            policies.push("deny-foreign");
            policy_text += &policy_yaml("deny-foreign", "DENY", "foreign", None);
        }
        // The foreign client is a mesh member on a node Trellis does not
        // run, as a ztunnel-served pod would be.
        let yaml = format!(
            "workloads:\n{}{}policies:\n{policy_text}",
            workload_yaml("server", ips.server, "trellis-node", &policies),
            if foreign_known {
                workload_yaml("foreign", ips.peer_pod, "foreign-node", &[])
            } else {
                String::new()
            },
        );
        std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write config");
        let (chain, key) = match cert {
            ClientCert::MeshCa => peer_cert(dir.path(), &ca, "foreign"),
            ClientCert::OtherCa => {
                let other = hbone::DevCa::generate(TRUST_DOMAIN).expect("other CA");
                peer_cert(dir.path(), &other, "foreign")
            }
        };
        let trust = dir.path().join("mesh-root.pem");
        std::fs::write(&trust, ca.root_cert_pem()).expect("write root");
        let echo = TestServer::echo(None, SocketAddr::new(ips.server, APP_PORT)).expect("echo app");
        let mut s = settings(dir.path(), "trellis-node", &format!("{NS}/server"));
        s.hbone_engine = ips.engine;
        s.hbone_addr = Some(SocketAddr::new(ips.server, HBONE_PORT));
        let proxy = Proxy::start(s);
        Inbound {
            ips,
            echo,
            proxy,
            trust,
            chain,
            key,
            _dir: dir,
        }
    }

    /// Runs the Python client once and returns its report.
    fn run_client(&self) -> Value {
        self.run_client_with(Vec::new())
    }

    /// Runs the Python client with `extra` arguments.
    fn run_client_with(&self, extra: Vec<String>) -> Value {
        let mut args: Vec<String> = vec![
            "--ca".into(),
            path_arg(&self.trust),
            "--cert".into(),
            path_arg(&self.chain),
            "--key".into(),
            path_arg(&self.key),
            "--connect".into(),
            SocketAddr::new(self.ips.server, HBONE_PORT).to_string(),
            "--bind".into(),
            self.ips.peer_node.to_string(),
            "--forwarded-for".into(),
            self.ips.forwarded_for().to_string(),
            "--target".into(),
            SocketAddr::new(self.ips.server, APP_PORT).to_string(),
            "--expect-server-id".into(),
            spiffe("server"),
            "--payload".into(),
            PAYLOAD_LINE.into(),
            "--repeat".into(),
            PAYLOAD_REPEAT.to_string(),
        ];
        args.extend(extra);
        let mut client = Python::peer("python hbone client", "client", args);
        let report = client.next_json();
        eprintln!("python client report: {}", brief(&report));
        client.expect_clean_exit();
        report
    }
}

/// The report without the (long) echo, for assertion messages.
fn brief(report: &Value) -> Value {
    let mut r = report.clone();
    if let Some(echo) = r.get_mut("echo") {
        let len = echo.as_str().map_or(0, str::len);
        *echo = Value::String(format!("<{len} bytes>"));
    }
    r
}

fn str_field<'a>(report: &'a Value, key: &str) -> Option<&'a str> {
    report.get(key).and_then(Value::as_str)
}

#[test]
fn openssl_h2_client_tunnels_through_the_trellis_inbound() {
    client_tunnels_through_the_inbound(Ips::from(1));
}

/// The same with `hbone::lite` serving the inbound.
#[test]
fn openssl_h2_client_tunnels_through_the_lite_inbound() {
    client_tunnels_through_the_inbound(Ips::from(51).lite());
}

fn client_tunnels_through_the_inbound(ips: Ips) {
    let inbound = Inbound::start(ips, false, ClientCert::MeshCa);
    let report = inbound.run_client();
    let r = brief(&report);
    assert!(report.get("error").is_none(), "client failed: {r}");
    assert_eq!(report["status"], 200, "{r}");
    assert_eq!(str_field(&report, "tls_version"), Some("TLSv1.3"), "{r}");
    assert_eq!(str_field(&report, "alpn"), Some("h2"), "{r}");
    assert_eq!(
        str_field(&report, "server_uri"),
        Some(spiffe("server").as_str()),
        "{r}"
    );
    assert!(
        str_field(&report, "echo") == Some(payload().as_str()),
        "the echo differs from the {} byte payload: {r}",
        payload().len()
    );
    assert_eq!(
        report["server_ended"], true,
        "the proxy must end the stream after the app closes: {r}"
    );
    assert_eq!(inbound.echo.accepted(), 1, "one tunnel reached the app");

    // The proxy verified the foreign certificate: its metrics name the
    // caller by the SPIFFE ID OpenSSL presented, and by the workload at the
    // address in `forwarded` (the dialling node's address has none).
    let foreign = spiffe("foreign");
    let server = spiffe("server");
    let labels = [
        ("reporter", "destination"),
        ("source_principal", foreign.as_str()),
        ("source_workload", "foreign"),
        ("destination_principal", server.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    let text = inbound
        .proxy
        .wait_metrics("the foreign connection to close", |t| {
            metric(t, "istio_tcp_connections_closed_total", &labels) >= 1.0
        });
    let len = payload().len() as f64;
    for (name, want) in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
        ("istio_tcp_received_bytes_total", len),
        ("istio_tcp_sent_bytes_total", len),
    ] {
        assert_eq!(metric(&text, name, &labels), want, "{name}:\n{text}");
    }
}

/// A caller the proxy's state does not hold is labelled from the `baggage`
/// on its CONNECT, as ztunnel does; the 200 carries the server's baggage.
#[test]
fn openssl_h2_client_unknown_to_the_state_is_labelled_from_its_baggage() {
    let inbound = Inbound::start_with(Ips::from(41), false, ClientCert::MeshCa, false);
    let report = inbound.run_client_with(vec![
        "--baggage".into(),
        "k8s.cluster.name=far-away,k8s.namespace.name=claimed,k8s.deployment.name=foreign-deploy,\
         service.name=foreign-svc,service.version=v7,other.key=ignored"
            .into(),
    ]);
    let r = brief(&report);
    assert!(report.get("error").is_none(), "client failed: {r}");
    assert_eq!(report["status"], 200, "{r}");
    assert_eq!(
        str_field(&report, "response_baggage"),
        Some("k8s.namespace.name=interop,k8s.pod.name=server,service.name=server,service.version=latest"),
        "{r}"
    );
    let foreign = spiffe("foreign");
    let labels = [
        ("reporter", "destination"),
        ("source_principal", foreign.as_str()),
        ("source_workload", "foreign-deploy"),
        ("source_canonical_service", "foreign-svc"),
        ("source_canonical_revision", "v7"),
        // The verified certificate names the namespace, not the baggage.
        ("source_workload_namespace", NS),
        ("source_cluster", "far-away"),
        ("destination_workload", "server"),
    ];
    let text = inbound
        .proxy
        .wait_metrics("the foreign connection to close", |t| {
            metric(t, "istio_tcp_connections_closed_total", &labels) >= 1.0
        });
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &labels),
        1.0,
        "{text}"
    );
}

#[test]
fn openssl_h2_client_denied_by_policy_gets_a_non_200_status() {
    let inbound = Inbound::start(Ips::from(11), true, ClientCert::MeshCa);
    let report = inbound.run_client();
    let r = brief(&report);
    assert!(report.get("error").is_none(), "client failed: {r}");
    // TLS and HTTP/2 worked; the refusal is the CONNECT's answer.
    assert_eq!(str_field(&report, "tls_version"), Some("TLSv1.3"), "{r}");
    let status = report["status"]
        .as_u64()
        .unwrap_or_else(|| panic!("no status: {r}"));
    assert!(
        (400..500).contains(&status),
        "a denied CONNECT must get a 4xx, got {status}: {r}"
    );
    assert!(report.get("echo").is_none(), "{r}");
    let foreign = spiffe("foreign");
    let text = inbound.proxy.wait_metrics("the denial to be counted", |t| {
        metric(
            t,
            "trellis_proxy_errors_total",
            &[("reason", "policy_denied")],
        ) >= 1.0
    });
    assert_eq!(
        metric(
            &text,
            "istio_tcp_received_bytes_total",
            &[("source_principal", foreign.as_str())]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(inbound.echo.accepted(), 0, "nothing may reach the app");
}

#[test]
fn openssl_client_with_another_trust_root_is_refused() {
    let inbound = Inbound::start(Ips::from(21), false, ClientCert::OtherCa);
    let report = inbound.run_client();
    let r = brief(&report);
    let refused =
        report.get("error").is_some() || report["status"].as_u64().is_some_and(|s| s != 200);
    assert!(refused, "a client from another trust root got in: {r}");
    assert_ne!(report["status"], 200, "{r}");
    assert!(report.get("echo").is_none(), "{r}");
    // RFC 8446 6.2: a fatal error SHOULD be reported with an alert. The
    // client reads it either directly or after its next write fails.
    let said = ["error", "then_read"].map(|k| str_field(&report, k).unwrap_or_default());
    assert!(
        said.iter().any(|s| s.contains("ALERT")),
        "the proxy must refuse with a TLS alert, not a silent close: {r}"
    );
    let foreign = spiffe("foreign");
    let text = inbound
        .proxy
        .wait_metrics("the refusal to be counted", |t| {
            metric(
                t,
                "trellis_proxy_errors_total",
                &[("reason", "unknown_identity")],
            ) >= 1.0
        });
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[("source_principal", foreign.as_str())]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(inbound.echo.accepted(), 0, "nothing may reach the app");
}

#[test]
fn trellis_outbound_tunnels_to_an_openssl_h2_server() {
    outbound_tunnels_to_an_openssl_server(ip(31), ip(32), HboneEngine::H2);
}

/// The same with `hbone::lite` opening the tunnel.
#[test]
fn lite_outbound_tunnels_to_an_openssl_h2_server() {
    outbound_tunnels_to_an_openssl_server(ip(61), ip(62), HboneEngine::Lite);
}

fn outbound_tunnels_to_an_openssl_server(client_ip: IpAddr, dest_ip: IpAddr, engine: HboneEngine) {
    require_python_h2();
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = hbone::DevCa::generate(TRUST_DOMAIN).expect("dev CA");
    ca.write_to_dir(&dir.path().join("ca")).expect("write CA");
    // The destination is a mesh workload on a node served by the other
    // implementation: Trellis must tunnel to its 15008 and expect sa/server.
    let yaml = format!(
        "workloads:\n{}{}",
        workload_yaml("client", client_ip, "trellis-node", &[]),
        workload_yaml("server", dest_ip, "peer-node", &[]),
    );
    std::fs::write(dir.path().join("mesh.yaml"), yaml).expect("write config");
    let (chain, key) = peer_cert(dir.path(), &ca, "server");
    let trust = dir.path().join("mesh-root.pem");
    std::fs::write(&trust, ca.root_cert_pem()).expect("write root");

    let listen = SocketAddr::new(dest_ip, HBONE_PORT);
    let mut server = Python::peer(
        "python hbone server",
        "server",
        vec![
            "--ca".into(),
            path_arg(&trust),
            "--cert".into(),
            path_arg(&chain),
            "--key".into(),
            path_arg(&key),
            "--listen".into(),
            listen.to_string(),
            "--expect-client-id".into(),
            spiffe("client"),
        ],
    );
    let ready = server.next_json();
    assert_eq!(ready["listening"], true, "python server: {ready}");

    let target = SocketAddr::new(dest_ip, APP_PORT);
    let mut s = settings(dir.path(), "trellis-node", &format!("{NS}/client"));
    s.hbone_engine = engine;
    s.outbound_forwards = vec![OutboundForward {
        listen: SocketAddr::new(client_ip, 0),
        target,
    }];
    let proxy = Proxy::start(s);
    let forward = proxy.handle().addrs.forwards[0];

    // The application: connects from the client workload's address, as a
    // captured pod would, writes the payload and half-closes, reading the
    // echo at the same time.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::new(client_ip, 0).into())
        .expect("bind client address");
    sock.connect_timeout(&forward.into(), Duration::from_secs(5))
        .expect("connect to the outbound forward");
    let app = TcpStream::from(sock);
    app.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    app.set_write_timeout(Some(Duration::from_secs(10)))
        .expect("write timeout");
    let app_addr = app.local_addr().expect("local addr");
    let mut writer = app.try_clone().expect("clone");
    let sent = payload();
    let to_send = sent.clone();
    let writing = std::thread::spawn(move || {
        writer.write_all(to_send.as_bytes())?;
        writer.shutdown(Shutdown::Write)
    });
    let mut echo = Vec::new();
    let read = (&app).read_to_end(&mut echo);
    writing
        .join()
        .expect("writer thread")
        .expect("write the payload");
    read.expect("read the echo until the tunnel closes");
    assert!(
        echo == sent.as_bytes(),
        "echo of {} bytes differs from the {} byte payload",
        echo.len(),
        sent.len()
    );

    let report = server.next_json();
    eprintln!("python server report: {report}");
    assert!(
        report.get("error").is_none(),
        "python server failed: {report}"
    );
    assert_eq!(
        str_field(&report, "client_uri"),
        Some(spiffe("client").as_str()),
        "{report}"
    );
    assert_eq!(str_field(&report, "method"), Some("CONNECT"), "{report}");
    assert_eq!(
        str_field(&report, "authority"),
        Some(target.to_string().as_str()),
        "{report}"
    );
    let forwarded = str_field(&report, "forwarded").unwrap_or_default();
    assert!(
        forwarded.starts_with(&format!("for=\"{client_ip}:")),
        "forwarded must name the client workload: {report}"
    );
    assert_eq!(forwarded, format!("for=\"{app_addr}\""), "{report}");
    // ztunnel's metadata: the source workload's baggage and a fresh
    // version-00 trace context (no `;host=`: the target is a pod, not a service).
    assert_eq!(
        str_field(&report, "baggage"),
        Some("k8s.namespace.name=interop,k8s.pod.name=client,service.name=client,service.version=latest"),
        "{report}"
    );
    let traceparent = str_field(&report, "traceparent").unwrap_or_default();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert!(
        matches!(parts.as_slice(), ["00", t, p, "00"] if t.len() == 32 && p.len() == 16
            && t.bytes().chain(p.bytes()).all(|b| b.is_ascii_hexdigit())),
        "traceparent must be W3C version 00: {report}"
    );
    // RFC 9113 8.5: a CONNECT carries no :scheme or :path.
    let names: Vec<&str> = report["header_names"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&":scheme") && !names.contains(&":path"),
        "{report}"
    );
    assert_eq!(
        str_field(&report, "tls_version"),
        Some("TLSv1.3"),
        "{report}"
    );
    assert_eq!(str_field(&report, "alpn"), Some("h2"), "{report}");
    assert_eq!(report["bytes"], sent.len(), "{report}");
    server.expect_clean_exit();

    let client = spiffe("client");
    let dest = spiffe("server");
    let labels = [
        ("reporter", "source"),
        ("source_principal", client.as_str()),
        ("destination_principal", dest.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    let text = proxy.wait_metrics("the outbound connection to close", |t| {
        metric(t, "istio_tcp_connections_closed_total", &labels) >= 1.0
    });
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &labels),
        1.0,
        "{text}"
    );
}
