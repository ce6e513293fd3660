//! What both proxy binaries share on the command line and at start, written
//! once: the common flags, duration parsing, and the shape of `main` (log
//! set-up, start-up errors, exit codes).

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_api::config::Dur;

use crate::certs::ca_client::CaClientConfig;
use crate::limits::{self, ConnLimits, Limits};
use crate::logging::{self, LogControl, LogFormat};
use crate::source::{SourceSpec, XdsSpec};
use crate::startup::{CertSource, LoadError};

/// A duration flag: `250ms`, `10s`, `2m`, `1h`, `1m30s`, or a bare number of
/// seconds (`3`, `0.5`).
pub fn duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("duration {s:?} must be a non-negative number of seconds"));
    }
    t.parse::<Dur>().map(|d| d.0).map_err(|_| {
        format!("duration {s:?}: expected a number with a unit (ms, s, m, h), like 250ms or 1m30s")
    })
}

/// Flags every proxy binary has, flattened into each one's settings.
#[derive(Clone, Debug, clap::Args)]
pub struct CommonFlags {
    /// Local config file (workloads, services, policies, routes); watched for
    /// changes. Or get config from the controller with --xds-address.
    #[arg(
        long,
        required_unless_present = "xds_address",
        conflicts_with = "xds_address"
    )]
    pub config: Option<PathBuf>,
    /// Directory holding a dev CA (root-cert.pem, root-key.pem) that issues
    /// certificates in process. Or get certificates from the controller with
    /// --ca-address (or --xds-address).
    #[arg(long, required_unless_present_any = ["ca_address", "xds_address"])]
    pub ca_dir: Option<PathBuf>,
    #[command(flatten)]
    pub control: ControlFlags,
    /// Admin API (config_dump, logging, quitquitquit); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics (/metrics).
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness probe (/healthz/ready).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Write the actually bound addresses here as JSON once listening (tests bind port 0).
    #[arg(long)]
    pub bound_addrs_file: Option<PathBuf>,
    /// How often the config file is checked for changes.
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub config_poll: Duration,
    /// Format of the proxy's own log lines.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax); changeable at runtime via /logging.
    #[arg(long, env = "TRELLIS_LOG", default_value = "info")]
    pub log: String,
    /// Most connections (and HBONE streams) held at once; past it new ones
    /// are closed at accept. 0: derived from RLIMIT_NOFILE (raised to its
    /// hard limit at start), two descriptors per connection, a tenth kept back.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Most TLS handshakes pending on the HBONE port; past it the oldest is
    /// cut short. 0: a quarter of the connection limit, at most 1024.
    #[arg(long, default_value_t = 0)]
    pub max_pending_handshakes: usize,
}

impl CommonFlags {
    /// For a proxy started in process (the demo, tests): the given config
    /// and CA, admin listeners on ephemeral loopback ports, defaults
    /// elsewhere.
    pub fn loopback(config: PathBuf, ca_dir: PathBuf) -> CommonFlags {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        CommonFlags {
            config: Some(config),
            ca_dir: Some(ca_dir),
            control: ControlFlags::default(),
            admin_addr: any_port,
            metrics_addr: any_port,
            readiness_addr: any_port,
            bound_addrs_file: None,
            config_poll: Duration::from_secs(1),
            log_format: LogFormat::Text,
            log: "info".into(),
            max_connections: 0,
            max_pending_handshakes: 0,
        }
    }

    /// The connection and handshake limiter these flags ask for (raising
    /// the soft descriptor limit first), its metrics in `registry`.
    pub fn conn_limits(&self, registry: &prometheus::Registry) -> std::sync::Arc<ConnLimits> {
        let nofile = limits::raise_nofile();
        let l = Limits::resolve(self.max_connections, self.max_pending_handshakes, nofile);
        tracing::info!(
            nofile,
            max_connections = l.max_connections,
            max_pending_handshakes = l.max_pending_handshakes,
            "connection limits"
        );
        ConnLimits::new(l, registry)
    }

    /// Where the proxy's config comes from: the file, or the controller
    /// (subscribing to `types`, as `node_id`). Reads the root and token files.
    pub fn source(&self, types: &[&'static str], node_id: &str) -> Result<SourceSpec, LoadError> {
        match (&self.config, &self.control.xds_address) {
            (Some(path), _) => Ok(SourceSpec::File {
                path: path.clone(),
                poll: self.config_poll,
            }),
            (None, Some(address)) => Ok(SourceSpec::Xds(XdsSpec {
                address: address.clone(),
                server_name: self.control.control_plane_name.clone(),
                root_pem: self.control.root_pem()?,
                token: self.control.token()?,
                node_id: node_id.to_owned(),
                types: types.to_vec(),
                socket_mark: None,
            })),
            (None, None) => Err(LoadError::NoSource),
        }
    }

    /// Where certificates come from: the controller's CA when an address
    /// is given (and no --ca-dir), else the dev CA in --ca-dir.
    pub fn cert_source(&self) -> Result<CertSource, LoadError> {
        let remote = self
            .control
            .ca_address
            .as_ref()
            .or(self.control.xds_address.as_ref());
        match (&self.ca_dir, remote) {
            (Some(dir), _) => Ok(CertSource::DevCa(dir.clone())),
            (None, Some(address)) => Ok(CertSource::Remote(CaClientConfig {
                address: address.clone(),
                server_name: self.control.control_plane_name.clone(),
                root_pem: self.control.root_pem()?,
                token: self.control.token()?,
                impersonate: false,
                socket_mark: None,
            })),
            (None, None) => Err(LoadError::NoCa),
        }
    }

    /// Checks clap cannot express; appends each problem to `errs`.
    pub fn validate(&self, errs: &mut Vec<String>) {
        if !self.admin_addr.ip().is_loopback() {
            errs.push(format!(
                "--admin-addr {} must be a loopback address: the admin API can stop the proxy",
                self.admin_addr
            ));
        }
        let remote = self.control.xds_address.is_some() || self.control.ca_address.is_some();
        if remote && self.control.root.is_none() {
            errs.push("--control-plane-root is required with --xds-address or --ca-address: the proxy must verify the controller".into());
        }
        if remote && self.control.token_file.is_none() {
            errs.push("--token-file is required with --xds-address or --ca-address: the controller authenticates proxies by token".into());
        }
    }
}

/// How a proxy reaches the controller (the names of Istio's ztunnel
/// environment variables work too).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ControlFlags {
    /// The controller's xDS address, host:port (its TLS gRPC port, 15012).
    #[arg(long, env = "XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// The controller's CA address, host:port; defaults to --xds-address.
    #[arg(long, env = "CA_ADDRESS")]
    pub ca_address: Option<String>,
    /// PEM file with the mesh root(s) the controller's certificate chains to.
    #[arg(long = "control-plane-root", env = "XDS_ROOT_CA")]
    pub root: Option<PathBuf>,
    /// The name the controller's certificate is checked against.
    #[arg(long, default_value = "istiod.istio-system.svc")]
    pub control_plane_name: String,
    /// File holding the bearer token sent to the controller.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The network this proxy's pods are on: on-demand lookups ask for
    /// `<network>/<ip>`.
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
}

impl ControlFlags {
    fn root_pem(&self) -> Result<String, LoadError> {
        let path = self
            .root
            .as_ref()
            .ok_or(LoadError::Missing("--control-plane-root"))?;
        read("control plane root", path)
    }

    fn token(&self) -> Result<crate::control::Token, LoadError> {
        let path = self
            .token_file
            .as_ref()
            .ok_or(LoadError::Missing("--token-file"))?;
        Ok(crate::control::Token::file(path)?)
    }
}

fn read(what: &'static str, path: &std::path::Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// The body of a proxy's `main`: installs logging, starts the proxy with
/// `start`, and waits for it with `wait`. A bad log filter exits 2 and a
/// start-up error exits 1, each as one line naming the binary.
pub fn run<H, E: Display>(
    binary: &str,
    common: &CommonFlags,
    start: impl FnOnce(Option<LogControl>) -> Result<H, E>,
    wait: impl FnOnce(H),
) -> ! {
    let log = match logging::init(&common.log, common.log_format) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("{binary}: {e}");
            std::process::exit(2);
        }
    };
    match start(log) {
        Ok(handle) => {
            wait(handle);
            std::process::exit(0)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("{binary}: {e}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonFlags,
    }

    #[test]
    fn durations() {
        let cases = [
            ("10s", Some(Duration::from_secs(10))),
            ("250ms", Some(Duration::from_millis(250))),
            ("2m", Some(Duration::from_secs(120))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("3", Some(Duration::from_secs(3))),
            ("0.5", Some(Duration::from_millis(500))),
            ("-1", None),
            ("abc", None),
            ("5x", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(duration(input).ok(), want, "input {input:?}");
        }
        let e = duration("5x").unwrap_err();
        assert!(e.contains("\"5x\"") && e.contains("250ms"), "{e}");
    }

    #[test]
    fn common_flags_defaults_source_and_admin_check() {
        let cli = Cli::try_parse_from(["p", "--config", "mesh.yaml", "--ca-dir", "ca"])
            .expect("minimal flags parse");
        let c = cli.common;
        assert_eq!(c.admin_addr, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(
            c.source(&[], "n").expect("file source"),
            SourceSpec::File {
                path: "mesh.yaml".into(),
                poll: Duration::from_secs(1)
            }
        );
        let mut errs = Vec::new();
        c.validate(&mut errs);
        assert!(errs.is_empty(), "{errs:?}");

        let cli = Cli::try_parse_from([
            "p",
            "--config",
            "c",
            "--ca-dir",
            "ca",
            "--admin-addr",
            "0.0.0.0:15000",
            "--log-format",
            "json",
            "--config-poll",
            "250ms",
        ])
        .expect("flags parse");
        assert_eq!(cli.common.log_format, LogFormat::Json);
        assert_eq!(cli.common.config_poll, Duration::from_millis(250));
        let mut errs = Vec::new();
        cli.common.validate(&mut errs);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("loopback"), "{}", errs[0]);

        let err = Cli::try_parse_from([
            "p",
            "--config",
            "c",
            "--ca-dir",
            "x",
            "--config-poll",
            "soon",
        ])
        .err()
        .expect("bad duration refused");
        assert!(err.to_string().contains("soon"), "{err}");
    }
}
