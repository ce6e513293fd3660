//! What both proxy binaries share on the command line and at start, written
//! once: the common flags, duration parsing, and the shape of `main` (log
//! set-up, start-up errors, exit codes).

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use trellis_api::config::Dur;

use crate::logging::{self, LogControl, LogFormat};
use crate::source::SourceSpec;

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
    /// Local config file (workloads, services, policies, routes); watched for changes.
    #[arg(long)]
    pub config: PathBuf,
    /// Directory holding the dev CA (root-cert.pem, root-key.pem) that issues certificates.
    #[arg(long)]
    pub ca_dir: PathBuf,
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
}

impl CommonFlags {
    /// For a proxy started in process (the demo, tests): the given config
    /// and CA, admin listeners on ephemeral loopback ports, defaults
    /// elsewhere.
    pub fn loopback(config: PathBuf, ca_dir: PathBuf) -> CommonFlags {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        CommonFlags {
            config,
            ca_dir,
            admin_addr: any_port,
            metrics_addr: any_port,
            readiness_addr: any_port,
            bound_addrs_file: None,
            config_poll: Duration::from_secs(1),
            log_format: LogFormat::Text,
            log: "info".into(),
        }
    }

    /// Where the proxy's config comes from.
    pub fn source(&self) -> SourceSpec {
        SourceSpec::File {
            path: self.config.clone(),
            poll: self.config_poll,
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
    }
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
            c.source(),
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
