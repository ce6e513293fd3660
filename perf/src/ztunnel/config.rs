//! What the ztunnel column decides apart from I/O: which binary a run
//! uses, the environment each ztunnel runs with, what its version line
//! says, and whether a run really went through both ztunnels.

use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use trellis_e2e::cluster::sum_samples;

/// The environment variable naming the ztunnel binary when `--ztunnel` is not given.
pub const ENV_VAR: &str = "TRELLIS_ZTUNNEL";

/// The name in the controller's serving certificate: ztunnel checks an IP
/// against IP SANs, which the certificate has none of (README, "Istio ztunnel").
pub const SERVER_NAME: &str = "istiod.istio-system.svc";

/// ztunnel's readiness and stats ports (its defaults), in the node netns.
pub const READINESS_PORT: u16 = 15021;
pub const STATS_PORT: u16 = 15020;

/// Which ztunnel binary the run uses: `--ztunnel PATH` first, then
/// `$TRELLIS_ZTUNNEL`. None when no ztunnel column is asked for (a path
/// given anyway is ignored); an error naming both ways to give one when
/// the column is asked for without either.
pub fn choose_binary(
    wanted: bool,
    flag: Option<&Path>,
    env: Option<&OsStr>,
) -> Result<Option<PathBuf>, String> {
    if !wanted {
        return Ok(None);
    }
    let env = env.filter(|v| !v.is_empty()).map(PathBuf::from);
    match flag.map(Path::to_path_buf).or(env) {
        Some(p) => Ok(Some(p)),
        None => Err(format!(
            "the ztunnel column needs an Istio ztunnel binary: pass --ztunnel PATH or set {ENV_VAR}=PATH \
             (it is not built by this project; see perf/README.md, \"The ztunnel column\")"
        )),
    }
}

/// What one node's ztunnel is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnv {
    pub node: String,
    /// The controller's xDS and CA address (TLS gRPC).
    pub controller: SocketAddr,
    /// The controller CA's root certificate.
    pub root_cert: PathBuf,
    /// A file holding the node's bootstrap token, no trailing newline.
    pub token: PathBuf,
    /// The ZDS socket the bench serves the node's pods on.
    pub zds_socket: PathBuf,
}

/// ztunnel's environment, in shared mode with one worker thread, fed by
/// `trellis-controller` (xDS and CA) and by the bench's ZDS server.
pub fn env(n: &NodeEnv) -> Vec<(&'static str, String)> {
    let url = format!("https://{}", n.controller);
    let path = |p: &Path| p.display().to_string();
    vec![
        ("XDS_ADDRESS", url.clone()),
        ("CA_ADDRESS", url),
        ("ALT_XDS_HOSTNAME", SERVER_NAME.into()),
        ("ALT_CA_HOSTNAME", SERVER_NAME.into()),
        ("XDS_ROOT_CA", path(&n.root_cert)),
        ("CA_ROOT_CA", path(&n.root_cert)),
        ("AUTH_TOKEN", path(&n.token)),
        ("CLUSTER_ID", "Kubernetes".into()),
        ("NODE_NAME", n.node.clone()),
        ("POD_NAME", format!("ztunnel-{}", n.node)),
        ("POD_NAMESPACE", "istio-system".into()),
        // A node proxy's wildcard holds only its own node's pods: without
        // on-demand lookups ztunnel would not know the server pod and would
        // pass the flow through unmeshed.
        ("XDS_ON_DEMAND", "true".into()),
        // ztunnel's DNS proxy refuses to start in on-demand mode.
        (
            "PROXY_CONFIG",
            r#"{"proxyMetadata":{"DNS_CAPTURE":"false"}}"#.into(),
        ),
        ("PROXY_MODE", "shared".into()),
        ("INPOD_UDS", path(&n.zds_socket)),
        // Like Trellis's --workers 1.
        ("ZTUNNEL_WORKER_THREADS", "1".into()),
        ("RUST_LOG", "info".into()),
    ]
}

/// The environment as the report shows it: `K=V` pairs, the paths of the
/// bench's temp dir left as they were.
pub fn env_line(env: &[(&'static str, String)]) -> String {
    env.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The version in `ztunnel version`'s line
/// (`version.BuildInfo{Version:"1.28.10", ..., CryptoProvider:"tls-ring"}`),
/// with the crypto provider when it is given.
pub fn parse_version(out: &str) -> Option<String> {
    let field = |name: &str| {
        let start = out.find(&format!("{name}:\""))? + name.len() + 2;
        let len = out[start..].find('"')?;
        Some(out[start..start + len].to_string())
    };
    let version = field("Version").filter(|v| !v.is_empty())?;
    Some(match field("CryptoProvider") {
        Some(c) if !c.is_empty() => format!("{version} ({c})"),
        _ => version,
    })
}

/// One ztunnel's traffic counters, as its `/metrics` on the stats port
/// reports them for one side (`reporter`): source on the client's node,
/// destination on the server's.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub opened: f64,
    /// Of `opened`, those with `connection_security_policy="mutual_tls"`.
    pub mtls_opened: f64,
    /// Sent plus received: the counters grow while a connection carries bytes.
    pub bytes: f64,
}

const OPENED: &str = "istio_tcp_connections_opened_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";

impl Counters {
    pub fn parse(text: &str, reporter: Reporter) -> Counters {
        let r = ("reporter", reporter.label());
        let sum = |name: &str| sum_samples(text, name, &[r]);
        Counters {
            opened: sum(OPENED),
            mtls_opened: sum_samples(
                text,
                OPENED,
                &[r, ("connection_security_policy", "mutual_tls")],
            ),
            bytes: sum(SENT) + sum(RECEIVED),
        }
    }
}

/// Which side of a connection a ztunnel reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

impl Reporter {
    pub fn label(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

impl fmt::Display for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// Fails unless a ztunnel opened an mTLS (HBONE) connection during the run
/// and its counters grew by at least `bytes`: traffic that bypassed it, or
/// that it passed through in plain text, fails the run.
pub fn check_meshed(
    node: &str,
    reporter: Reporter,
    before: Counters,
    after: Counters,
    bytes: u64,
) -> Result<(), String> {
    let opened = after.opened - before.opened;
    let mtls = after.mtls_opened - before.mtls_opened;
    let carried = after.bytes - before.bytes;
    if opened < 1.0 {
        return Err(format!(
            "the {node} ztunnel ({reporter} side) opened no connection during iperf3: the flow bypassed the mesh"
        ));
    }
    if mtls < 1.0 {
        return Err(format!(
            "the {node} ztunnel ({reporter} side) opened {opened} connection(s), none with mutual TLS: the flow was not tunnelled"
        ));
    }
    if carried < bytes as f64 {
        return Err(format!(
            "the {node} ztunnel ({reporter} side) counted {carried} bytes, fewer than the {bytes} iperf3's data stream carried: the flow bypassed it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_from_the_flag_then_the_environment() {
        let p = |s: &str| Some(PathBuf::from(s));
        let flag = Path::new("/opt/zt/flag");
        let env = OsStr::new("/opt/zt/env");
        // (wanted, flag, env, result)
        type Case<'a> = (
            bool,
            Option<&'a Path>,
            Option<&'a OsStr>,
            Result<Option<PathBuf>, ()>,
        );
        let cases: [Case; 6] = [
            (true, Some(flag), Some(env), Ok(p("/opt/zt/flag"))),
            (true, None, Some(env), Ok(p("/opt/zt/env"))),
            (true, Some(flag), None, Ok(p("/opt/zt/flag"))),
            (true, None, None, Err(())),
            (true, None, Some(OsStr::new("")), Err(())),
            (false, Some(flag), Some(env), Ok(None)),
        ];
        for (wanted, flag, env, want) in cases {
            let got = choose_binary(wanted, flag, env);
            match (&got, &want) {
                (Err(e), Err(())) => {
                    assert!(e.contains("--ztunnel PATH") && e.contains(ENV_VAR), "{e}")
                }
                _ => assert_eq!(got.map_err(|_| ()), want, "{wanted} {flag:?} {env:?}"),
            }
        }
    }

    #[test]
    fn shared_mode_with_one_worker_and_the_controller() {
        let n = NodeEnv {
            node: "node2".into(),
            controller: "198.19.255.1:15012".parse().unwrap(),
            root_cert: "/t/ca/root-cert.pem".into(),
            token: "/t/node2.token".into(),
            zds_socket: "/t/node2-zds.sock".into(),
        };
        let e = env(&n);
        let get = |k: &str| {
            let found: Vec<&str> = e
                .iter()
                .filter(|(n, _)| *n == k)
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(found.len(), 1, "{k} set {} times", found.len());
            found[0].to_string()
        };
        let want = [
            ("PROXY_MODE", "shared"),
            ("ZTUNNEL_WORKER_THREADS", "1"),
            ("XDS_ON_DEMAND", "true"),
            ("XDS_ADDRESS", "https://198.19.255.1:15012"),
            ("CA_ADDRESS", "https://198.19.255.1:15012"),
            ("ALT_XDS_HOSTNAME", SERVER_NAME),
            ("ALT_CA_HOSTNAME", SERVER_NAME),
            ("XDS_ROOT_CA", "/t/ca/root-cert.pem"),
            ("CA_ROOT_CA", "/t/ca/root-cert.pem"),
            ("AUTH_TOKEN", "/t/node2.token"),
            ("NODE_NAME", "node2"),
            ("INPOD_UDS", "/t/node2-zds.sock"),
        ];
        for (k, v) in want {
            assert_eq!(get(k), v, "{k}");
        }
        assert!(get("PROXY_CONFIG").contains(r#""DNS_CAPTURE":"false""#));
        assert!(env_line(&e).starts_with("XDS_ADDRESS=https://198.19.255.1:15012 CA_ADDRESS="));
    }

    #[test]
    fn version_lines() {
        let cases = [
            (
                r#"version.BuildInfo{Version:"1.28.10", GitRevision:"unknown", RustVersion:"1.95.0", BuildProfile:"release", BuildStatus:"Modified", IstioVersion:"unknown", CryptoProvider:"tls-ring"}"#,
                Some("1.28.10 (tls-ring)"),
            ),
            (r#"version.BuildInfo{Version:"1.24.0"}"#, Some("1.24.0")),
            (r#"version.BuildInfo{Version:""}"#, None),
            ("unknown command: version", None),
            ("", None),
        ];
        for (out, want) in cases {
            assert_eq!(parse_version(out).as_deref(), want, "{out}");
        }
    }

    const METRICS: &str = "\
# HELP istio_tcp_connections_opened The total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client\",connection_security_policy=\"mutual_tls\"} 2
istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"client\",connection_security_policy=\"mutual_tls\"} 5
istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client\",connection_security_policy=\"unknown\"} 1
istio_tcp_sent_bytes_total{reporter=\"source\",source_workload=\"client\"} 100
istio_tcp_received_bytes_total{reporter=\"source\",source_workload=\"client\"} 5000000
istio_tcp_received_bytes_total{reporter=\"destination\",source_workload=\"client\"} 7
";

    #[test]
    fn counters_per_reporter() {
        let s = Counters::parse(METRICS, Reporter::Source);
        assert_eq!(
            s,
            Counters {
                opened: 3.0,
                mtls_opened: 2.0,
                bytes: 5_000_100.0
            }
        );
        let d = Counters::parse(METRICS, Reporter::Destination);
        assert_eq!(
            d,
            Counters {
                opened: 5.0,
                mtls_opened: 5.0,
                bytes: 7.0
            }
        );
        assert_eq!(Counters::parse("", Reporter::Source), Counters::default());
    }

    #[test]
    fn meshed_only_with_an_mtls_connection_that_carried_the_flow() {
        let c = |opened, mtls_opened, bytes| Counters {
            opened,
            mtls_opened,
            bytes,
        };
        let before = c(2.0, 2.0, 1000.0);
        // (after, bytes the flow carried, error containing; "" = passes)
        let cases = [
            (c(4.0, 4.0, 1_001_000.0), 1_000_000, ""),
            (c(2.0, 2.0, 1_001_000.0), 1_000_000, "opened no connection"),
            (c(4.0, 2.0, 1_001_000.0), 1_000_000, "none with mutual TLS"),
            (c(4.0, 4.0, 2000.0), 1_000_000, "fewer than the 1000000"),
        ];
        for (after, bytes, want) in cases {
            let got = check_meshed("node1", Reporter::Source, before, after, bytes);
            match got {
                Ok(()) => assert_eq!(want, "", "{after:?}"),
                Err(e) => {
                    assert!(!want.is_empty() && e.contains(want), "{after:?}: {e}");
                    assert!(e.contains("node1 ztunnel (source side)"), "{e}");
                }
            }
        }
    }
}
