//! Command-line settings of the waypoint.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hbone::Identity;
use trellis_core::cli::{duration, CommonFlags};

/// Everything a waypoint needs to start.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "trellis-waypoint",
    version,
    about = "Trellis waypoint (L7 policy, routing and resilience over HBONE)"
)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonFlags,
    /// This waypoint as <namespace>/<name>: selects its entry in `waypoints` and its identity's namespace.
    #[arg(long)]
    pub name: String,
    /// Service account of the waypoint's identity (spiffe://<td>/ns/<namespace>/sa/<sa>).
    #[arg(long, default_value = "waypoint")]
    pub service_account: String,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    pub listen: SocketAddr,
    /// Data-path threads; 0 means one per allowed CPU.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// On SIGTERM, stop accepting and give requests this long to finish.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub drain_deadline: Duration,
    /// Write one JSON access-log line per request (target "access").
    #[arg(long)]
    pub access_log: bool,
    /// How long a tunnelled stream may stay silent before it is treated as
    /// non-HTTP (server-first protocols send nothing first).
    #[arg(long, value_parser = duration, default_value = "1s")]
    pub sniff_timeout: Duration,
    /// Limit on a request's header block (HTTP/1 and HTTP/2); larger gets 431 or a stream reset.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per downstream connection.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// Offer this waypoint's listeners to a new process on this Unix socket
    /// (mode 0600), for an upgrade in place (a VM, a systemd unit, the local
    /// demo): the new one starts with `--takeover <the same path>`. Off by
    /// default: in Kubernetes a waypoint is a Deployment, whose new pod has
    /// a netns and address of its own, and rolls by surge and drain instead.
    #[arg(long, value_name = "SOCKET")]
    pub handover_socket: Option<std::path::PathBuf>,
    /// Take over from the waypoint offering its listeners on this socket:
    /// this process receives the HBONE, admin, metrics and readiness
    /// listeners (and runs one worker per HBONE listener), serves them, and
    /// only then does the old one stop accepting and drain. Any failure
    /// leaves the old one serving.
    #[arg(long, value_name = "SOCKET")]
    pub takeover: Option<std::path::PathBuf>,
    /// After handing over, the old process drains this long at most: its
    /// connections run to their natural end until then.
    #[arg(long, value_parser = duration, default_value = "1h")]
    pub handover_drain_deadline: Duration,
}

impl Settings {
    /// `(namespace, name)` from `--name`.
    pub fn namespace_name(&self) -> Result<(&str, &str), String> {
        match self.name.split_once('/') {
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => Ok((ns, n)),
            _ => Err(format!(
                "--name {:?}: expected <namespace>/<name>, e.g. demo/waypoint",
                self.name
            )),
        }
    }

    /// The waypoint's own SPIFFE identity.
    pub fn identity(&self) -> Result<Identity, String> {
        let (ns, _) = self.namespace_name()?;
        let id = Identity::new(
            self.trust_domain.as_str(),
            ns,
            self.service_account.as_str(),
        );
        // Round-trip through the parser so a bad trust domain or account fails here.
        id.to_string()
            .parse::<Identity>()
            .map_err(|e| format!("waypoint identity {id}: {e}"))
    }

    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        self.common.validate(&mut errs);
        if let Err(e) = self.identity() {
            errs.push(e);
        }
        if self.max_header_bytes < 1024 {
            errs.push("--max-header-bytes must be at least 1024".into());
        }
        if self.max_concurrent_streams == 0 {
            errs.push("--max-concurrent-streams must be at least 1".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        let mut v = vec!["trellis-waypoint", "--config", "c.yaml", "--ca-dir", "ca"];
        v.extend_from_slice(args);
        Settings::try_parse_from(v).expect("valid args")
    }

    #[test]
    fn name_must_be_namespace_slash_name() {
        let cases = [
            ("demo/waypoint", true),
            ("demo", false),
            ("/waypoint", false),
            ("demo/", false),
            ("a/b/c", false),
        ];
        for (name, ok) in cases {
            let s = parse(&["--name", name]);
            assert_eq!(s.validate().is_ok(), ok, "{name}");
        }
        let s = parse(&["--name", "demo/wp", "--service-account", "wp-sa"]);
        assert_eq!(
            s.identity().unwrap().to_string(),
            "spiffe://cluster.local/ns/demo/sa/wp-sa"
        );
    }

    #[test]
    fn durations_use_gateway_api_syntax() {
        let s = parse(&["--name", "d/w", "--drain-deadline", "1m30s"]);
        assert_eq!(s.drain_deadline, Duration::from_secs(90));
        let bad = Settings::try_parse_from([
            "trellis-waypoint",
            "--name",
            "d/w",
            "--config",
            "c",
            "--ca-dir",
            "x",
            "--config-poll",
            "soon",
        ]);
        assert!(bad.is_err());
    }
}
