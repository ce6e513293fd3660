//! The `trellis-controller` command line: `ca init` and `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_api::config::Dur;

use crate::objects::TranslateOptions;
use crate::waypoints::WaypointOptions;

/// The names in the serving certificate when no --server-name is given:
/// Istio's (what ztunnel dials as the CA and xDS address), ours, and
/// localhost for a controller run next to its proxies.
pub const DEFAULT_SERVER_NAMES: [&str; 3] =
    ["istiod.istio-system.svc", "trellis-controller", "localhost"];

/// Trellis controller: serves workload xDS and certificates from a folder
/// of Kubernetes manifests or a Kubernetes API server.
#[derive(Debug, clap::Parser)]
#[command(name = "trellis-controller", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Certificate authority files.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Serve xDS and the CA on one TLS gRPC port, from a folder of manifests
    /// or a Kubernetes API server.
    // Boxed: the enum is parsed once, and clippy would flag the size gap.
    Run(Box<RunArgs>),
}

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Create a dev root and signing intermediate (Istio's cacerts layout).
    Init(CaInitArgs),
}

#[derive(Debug, clap::Args)]
pub struct CaInitArgs {
    /// Directory to write root-cert.pem, root-key.pem, ca-cert.pem,
    /// ca-key.pem and cert-chain.pem into (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Trust domain named in the CA's subject.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Overwrite an existing CA; every certificate it issued stops verifying.
    #[arg(long)]
    pub force: bool,
}

#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Folder of Kubernetes manifests (*.yaml, *.yml, *.json, recursively);
    /// watched for changes. Or watch a cluster with --kubeconfig / --in-cluster.
    #[arg(long, required_unless_present_any = ["kubeconfig", "in_cluster"], conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: list and watch the API server this kubeconfig names
    /// (its current context); proxies' tokens are checked with TokenReview.
    #[arg(long, conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode with the pod's own service account.
    #[arg(long)]
    pub in_cluster: bool,
    /// CA directory (root-cert.pem, ca-cert.pem, ca-key.pem, cert-chain.pem),
    /// as written by `trellis-controller ca init`.
    #[arg(
        long,
        required_unless_present = "ca_secret",
        conflicts_with = "ca_secret"
    )]
    pub ca_dir: Option<PathBuf>,
    /// Kubernetes mode: read the same four files from this Secret,
    /// `<namespace>/<name>` (Istio's `istio-system/cacerts`), at start.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub ca_secret: Option<String>,
    /// Bootstrap token file: which bearer token is which node proxy or
    /// waypoint (manifests mode; Kubernetes mode uses TokenReview).
    #[arg(long, required_unless_present_any = ["kubeconfig", "in_cluster"], conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub tokens: Option<PathBuf>,
    /// Kubernetes mode: an audience a proxy's token may be for; repeat for
    /// several. Istio's ztunnel and proxies present a token for istio-ca. A
    /// token for the API server's own audience is accepted as well.
    #[arg(
        long = "token-audience",
        value_name = "AUDIENCE",
        default_value = "istio-ca",
        value_parser = audience
    )]
    pub token_audiences: Vec<String>,
    /// TLS gRPC port: xDS (AggregatedDiscoveryService) and the CA
    /// (IstioCertificateService).
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub listen: SocketAddr,
    /// Plain HTTP admin port: /healthz/ready and /metrics.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// DNS name in the serving certificate; repeat for several. Default:
    /// istiod.istio-system.svc, trellis-controller, localhost.
    #[arg(long = "server-name", value_name = "NAME", value_parser = server_name)]
    pub server_names: Vec<String>,
    /// Trust domain of workload identities.
    #[arg(long, default_value = "cluster.local", value_parser = trust_domain)]
    pub trust_domain: String,
    /// Istio's cluster id: the first part of workload uids.
    #[arg(long, default_value = "Kubernetes")]
    pub cluster_id: String,
    /// Policies in this namespace without a selector apply to the whole mesh.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
    /// Also honour Istio's labels (istio.io/dataplane-mode,
    /// istio.io/use-waypoint) and the istio-waypoint gateway class.
    #[arg(long)]
    pub istio_labels: bool,
    /// Network of this cluster (empty: the default network).
    #[arg(long, default_value = "")]
    pub network: String,
    /// How often the manifests folder is checked for changes.
    #[arg(long, default_value = "1s", value_parser = positive_duration)]
    pub poll: Duration,
    /// Longest life of an issued workload certificate.
    #[arg(long, default_value = "24h", value_parser = positive_duration)]
    pub max_cert_validity: Duration,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "TRELLIS_LOG", default_value = "info", value_parser = log_filter)]
    pub log: String,
    /// Write the actually bound addresses here as JSON once listening
    /// (`{"grpc": "...", "admin": "..."}`; tests bind port 0).
    #[arg(long)]
    pub bound_addrs_file: Option<PathBuf>,
    /// Kubernetes mode: make a waypoint (ServiceAccount, root ConfigMap,
    /// Deployment, Service) for each Gateway of a waypoint class, and
    /// write its status. `--manage-waypoints=false` leaves that to others.
    /// Not used in manifests mode.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub manage_waypoints: bool,
    /// The image of the waypoints' Deployments.
    #[arg(long, default_value = DEFAULT_WAYPOINT_IMAGE)]
    pub waypoint_image: String,
    /// The controller's xDS and CA address as waypoint pods dial it
    /// (host:port). A DNS host is also the name they check the
    /// controller's certificate for: give it to --server-name.
    #[arg(long, default_value = DEFAULT_WAYPOINT_XDS_ADDRESS, value_parser = crate::waypoints::desired::host_port)]
    pub waypoint_xds_address: String,
    /// The base of every waypoint's Deployment and Service (YAML: an
    /// apps/v1 Deployment and a v1 Service; replicas, resources, probes,
    /// tolerations...). Without it, the one shipped in
    /// deploy/daemonset/base/controller/waypoint-template.yaml.
    #[arg(long, value_name = "FILE")]
    pub waypoint_template: Option<PathBuf>,
    /// Re-apply every waypoint's objects, putting back what was changed or
    /// deleted by hand, and delete left-overs, at least this often.
    #[arg(long, default_value = "5m", value_parser = positive_duration)]
    pub waypoint_resync: Duration,
}

/// The waypoint image of this release.
pub const DEFAULT_WAYPOINT_IMAGE: &str =
    concat!("ghcr.io/trellis-mesh/waypoint:", env!("CARGO_PKG_VERSION"));
/// The controller's Service in deploy/daemonset.
pub const DEFAULT_WAYPOINT_XDS_ADDRESS: &str = "trellis-controller.trellis-system.svc:15012";

impl RunArgs {
    /// The serving certificate's names: --server-name, or the defaults.
    pub fn server_names(&self) -> Vec<String> {
        if self.server_names.is_empty() {
            DEFAULT_SERVER_NAMES.iter().map(|s| s.to_string()).collect()
        } else {
            self.server_names.clone()
        }
    }

    /// What the waypoints' objects share; `root_pem` is the CA's roots.
    pub fn waypoint_options(
        &self,
        root_pem: String,
    ) -> Result<WaypointOptions, crate::waypoints::template::TemplateError> {
        let template =
            crate::waypoints::template::WaypointTemplate::load(self.waypoint_template.as_deref())?;
        Ok(WaypointOptions {
            image: self.waypoint_image.clone(),
            xds_address: self.waypoint_xds_address.clone(),
            trust_domain: self.trust_domain.clone(),
            istio_labels: self.istio_labels,
            // clap gives at least the default, istio-ca.
            token_audience: self
                .token_audiences
                .first()
                .cloned()
                .unwrap_or_else(|| crate::auth::token_review::ISTIO_CA_AUDIENCE.into()),
            root_pem,
            template: std::sync::Arc::new(template),
        })
    }

    pub fn translate_options(&self) -> TranslateOptions {
        TranslateOptions {
            trust_domain: self.trust_domain.clone(),
            cluster_id: self.cluster_id.clone(),
            root_namespace: self.root_namespace.clone(),
            istio_labels: self.istio_labels,
            network: self.network.clone(),
        }
    }
}

/// A duration flag: `250ms`, `10s`, `2m`, `1h`, `1m30s`, or a bare number
/// of seconds (`3`, `0.5`); zero is refused (a poll interval or certificate
/// life of zero is always a mistake).
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if let Ok(secs) = t.parse::<f64>() {
        Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("duration {s:?} must be a non-negative number of seconds"))?
    } else {
        t.parse::<Dur>().map(|d| d.0).map_err(|_| {
            format!(
                "duration {s:?}: expected a number with a unit (ms, s, m, h), like 250ms or 1m30s"
            )
        })?
    };
    if d.is_zero() {
        return Err(format!("duration {s:?} must be more than zero"));
    }
    Ok(d)
}

/// A DNS name clients can verify: the certificate carries DNS SANs only,
/// so an IP address would never match.
fn server_name(s: &str) -> Result<String, String> {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{s:?} is an IP address; the serving certificate holds DNS names only, so give a name clients connect by (e.g. localhost)"
        ));
    }
    rustls_pki_types::DnsName::try_from(s)
        .map(|_| s.to_string())
        .map_err(|_| format!("{s:?} is not a valid DNS name"))
}

/// A token audience: any non-empty string without spaces (Kubernetes
/// compares audiences as opaque strings).
fn audience(s: &str) -> Result<String, String> {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(format!(
            "token audience {s:?} must be non-empty and without spaces (e.g. istio-ca)"
        ));
    }
    Ok(s.to_string())
}

fn log_filter(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("invalid log filter {s:?}: {e}"))
}

fn trust_domain(s: &str) -> Result<String, String> {
    if format!("spiffe://{s}/ns/a/sa/b")
        .parse::<hbone::Identity>()
        .is_err()
    {
        return Err(format!(
            "invalid trust domain {s:?}: lowercase letters, digits, '.', '-', '_' only"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1s", Some(Duration::from_secs(1))),
            ("100ms", Some(Duration::from_millis(100))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("24h", Some(Duration::from_secs(24 * 3600))),
            ("0.5", Some(Duration::from_millis(500))),
            ("2", Some(Duration::from_secs(2))),
            ("0s", None),
            ("0", None),
            ("-1", None),
            ("soon", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(positive_duration(input).ok(), *want, "{input:?}");
        }
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from([
            "trellis-controller",
            "run",
            "--manifests",
            "m",
            "--ca-dir",
            "c",
            "--tokens",
            "t",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run: {cli:?}");
        };
        assert_eq!(args.listen, "127.0.0.1:15012".parse().unwrap());
        assert_eq!(args.admin_addr, "127.0.0.1:15014".parse().unwrap());
        assert_eq!(args.server_names(), DEFAULT_SERVER_NAMES);
        assert_eq!(args.poll, Duration::from_secs(1));
        assert_eq!(args.max_cert_validity, Duration::from_secs(24 * 3600));
        assert_eq!(args.token_audiences, ["istio-ca"]);
        assert_eq!(args.translate_options(), TranslateOptions::default());
    }

    #[test]
    fn server_names_replace_the_defaults() {
        let cli = Cli::try_parse_from([
            "trellis-controller",
            "run",
            "--manifests=m",
            "--ca-dir=c",
            "--tokens=t",
            "--server-name=a.example",
            "--server-name=b.example",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.server_names(), ["a.example", "b.example"]);
    }

    #[test]
    fn token_audiences_replace_the_default() {
        // (flags, audiences, or the error's words)
        type Case<'a> = (&'a [&'a str], Result<&'a [&'a str], &'a str>);
        let cases: &[Case] = &[
            (&[], Ok(&["istio-ca"])),
            (&["--token-audience=a"], Ok(&["a"])),
            (
                &["--token-audience=a", "--token-audience=istio-ca"],
                Ok(&["a", "istio-ca"]),
            ),
            (&["--token-audience="], Err("token audience")),
            (&["--token-audience=a b"], Err("without spaces")),
        ];
        for (flags, want) in cases {
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            check_kube_run(flags, &want, |a| a.token_audiences.clone());
        }
    }

    /// Parses `run --kubeconfig=k --ca-dir=c FLAGS`: `get` of the result
    /// is `want`, or the error names `want`'s words.
    fn check_kube_run<W: PartialEq + std::fmt::Debug>(
        flags: &[&str],
        want: &Result<W, &str>,
        get: impl Fn(&RunArgs) -> W,
    ) {
        let mut argv = vec!["trellis-controller", "run", "--kubeconfig=k", "--ca-dir=c"];
        argv.extend_from_slice(flags);
        match (Cli::try_parse_from(argv), want) {
            (Ok(cli), Ok(want)) => {
                let Command::Run(args) = cli.command else {
                    panic!("not run");
                };
                assert_eq!(get(&args), *want, "{flags:?}");
            }
            (Err(e), Err(words)) => assert!(e.to_string().contains(words), "{flags:?}: {e}"),
            (got, want) => panic!("{flags:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn waypoint_flags() {
        // (flags, (manage, image, xds address, resync) or the error's words)
        type Want<'a> = Result<(bool, &'a str, &'a str, Duration), &'a str>;
        let default_image = concat!("ghcr.io/trellis-mesh/waypoint:", env!("CARGO_PKG_VERSION"));
        let five_minutes = Duration::from_secs(300);
        let cases: &[(&[&str], Want)] = &[
            (
                &[],
                Ok((
                    true,
                    default_image,
                    "trellis-controller.trellis-system.svc:15012",
                    five_minutes,
                )),
            ),
            (
                &[
                    "--manage-waypoints=false",
                    "--waypoint-image=example.com/wp:2",
                    "--waypoint-xds-address=localhost:4000",
                    "--waypoint-resync=30s",
                ],
                Ok((
                    false,
                    "example.com/wp:2",
                    "localhost:4000",
                    Duration::from_secs(30),
                )),
            ),
            (
                &["--manage-waypoints", "true"],
                Ok((
                    true,
                    default_image,
                    DEFAULT_WAYPOINT_XDS_ADDRESS,
                    five_minutes,
                )),
            ),
            (&["--manage-waypoints=maybe"], Err("--manage-waypoints")),
            (&["--waypoint-xds-address=controller"], Err("host:port")),
            (&["--waypoint-resync=0s"], Err("more than zero")),
        ];
        for (flags, want) in cases {
            let want = want.map(|(m, i, x, r)| (m, i.to_string(), x.to_string(), r));
            check_kube_run(flags, &want, |a| {
                let o = a
                    .waypoint_options("root".into())
                    .expect("the shipped template");
                assert_eq!(
                    (o.token_audience.as_str(), o.root_pem.as_str()),
                    ("istio-ca", "root")
                );
                (
                    a.manage_waypoints,
                    a.waypoint_image.clone(),
                    a.waypoint_xds_address.clone(),
                    a.waypoint_resync,
                )
            });
        }
    }

    #[test]
    fn bad_trust_domain_is_refused() {
        let err = Cli::try_parse_from([
            "trellis-controller",
            "run",
            "--manifests=m",
            "--ca-dir=c",
            "--tokens=t",
            "--trust-domain=Bad Domain",
        ])
        .expect_err("refused");
        assert!(err.to_string().contains("trust domain"), "{err}");
    }
}
