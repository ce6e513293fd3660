//! Runtime settings of one node proxy, parsed from the command line.
//!
//! Kept apart from `main.rs` so that tests and the demo can build a proxy in
//! process with the same settings type the binary uses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use trellis_core::cli::{duration, CommonFlags};
pub use trellis_core::logging::LogFormat;

/// Ports the proxy listens on inside each pod's network namespace.
pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAIN_PORT: u16 = 15006;
pub const HBONE_PORT: u16 = 15008;
/// SO_MARK the proxy puts on its own sockets inside pod namespaces so the
/// capture rules let them through instead of looping them back to 15001.
pub const PROXY_MARK: u32 = 0x539;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One proxy serves every enrolled pod of the node, with listeners inside each pod's netns.
    Shared,
    /// One workload, with listeners on given addresses (VMs, local development).
    Dedicated,
}

/// Which implementation carries HBONE tunnels. Both speak the same wire
/// protocol, so proxies with different engines interoperate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum HboneEngine {
    /// The h2 crate: a task per tunnel plus one driving each connection.
    H2,
    /// `hbone::lite`: one task per connection moves every tunnel's bytes,
    /// with HTTP/2 framing of its own (HPACK from loona-hpack).
    Lite,
}

/// A static outbound capture for dedicated mode without redirect rules:
/// connections accepted on `listen` are treated as if sent to `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundForward {
    pub listen: SocketAddr,
    pub target: SocketAddr,
}

impl std::str::FromStr for OutboundForward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (l, t) = s.split_once('=').ok_or_else(|| {
            format!("outbound forward {s:?} must look like LISTEN_ADDR=TARGET_ADDR")
        })?;
        let listen = l
            .parse()
            .map_err(|e| format!("outbound forward listen address {l:?}: {e}"))?;
        let target = t
            .parse()
            .map_err(|e| format!("outbound forward target address {t:?}: {e}"))?;
        Ok(OutboundForward { listen, target })
    }
}

/// Everything a node proxy needs to start.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "trellis-node-proxy",
    version,
    about = "Trellis node proxy (HBONE, L4 policy)"
)]
pub struct Settings {
    #[command(flatten)]
    pub common: CommonFlags,
    /// shared: serve enrolled pods of this node; dedicated: one workload on given addresses.
    #[arg(long, value_enum, default_value = "shared")]
    pub mode: Mode,
    /// Name of this node; workloads whose `node` equals it are local.
    #[arg(long, env = "NODE_NAME", default_value = "node")]
    pub node: String,
    /// Extra trust roots (PEM) accepted from peers, besides the CA's own root.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Dedicated mode: uid of the one workload this proxy serves.
    #[arg(long)]
    pub workload_uid: Option<String>,
    /// Dedicated mode: outbound capture listener (SO_ORIGINAL_DST), e.g. 127.0.1.1:15001.
    #[arg(long)]
    pub outbound_addr: Option<SocketAddr>,
    /// Dedicated mode: HBONE listener, e.g. 127.0.1.1:15008.
    #[arg(long)]
    pub hbone_addr: Option<SocketAddr>,
    /// Dedicated mode: plaintext inbound listener (needs a redirect rule for SO_ORIGINAL_DST).
    #[arg(long)]
    pub inbound_plain_addr: Option<SocketAddr>,
    /// Dedicated mode: static captures LISTEN=TARGET, for hosts without redirect rules.
    #[arg(long = "outbound-forward")]
    pub outbound_forwards: Vec<OutboundForward>,
    /// Dedicated mode on a VM or bare host: install the capture rules in the
    /// proxy's own network namespace and serve the workload on 15001, 15006
    /// and 15008 of every address, as a shared-mode proxy does in a pod. The
    /// proxy marks its own sockets (data path and controller) so the rules
    /// let them pass. The rules stay after the proxy exits, so the host
    /// never talks around the mesh; a restarted proxy replaces them.
    #[arg(long)]
    pub capture: bool,
    /// Shared mode: pods to enroll at start, as UID=NETNS_PATH (more can be added over the admin API).
    #[arg(long = "pod")]
    pub pods: Vec<String>,
    /// Shared mode: the CNI agent's ZDS socket (Istio's protocol). The proxy
    /// connects there and serves the pods the agent hands over.
    #[arg(long)]
    pub zds_socket: Option<PathBuf>,
    /// Cluster id in workload uids (`<cluster>//Pod/<ns>/<name>`); the controller's --cluster-id.
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// HBONE implementation for tunnels in both directions: h2 (the h2
    /// crate) or lite (one task per connection, see hbone::lite).
    #[arg(long, value_enum, default_value = "h2")]
    pub hbone_engine: HboneEngine,
    /// Worker threads (one current-thread runtime each, pinned); 0 = one per allowed CPU.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Hard deadline for draining connections on SIGTERM or /quitquitquit.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub drain_deadline: Duration,
    /// Access log format: key=value text, or one JSON object after the `access:` prefix.
    #[arg(long, value_enum, default_value = "text")]
    pub access_log: LogFormat,
    /// Preserve the client's source IP towards local pods with IP_TRANSPARENT (shared mode, and dedicated with --capture).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub preserve_source_ip: bool,
    /// Install the nftables capture rules in pods enrolled by --pod or POST /pods (shared mode).
    /// Pods from the CNI agent (--zds-socket) get theirs from the agent.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub install_redirect: bool,
    /// Shared mode: where the node's proxy lock (one proxy per node) and the
    /// hand-over socket live. A second proxy finding the lock taken refuses
    /// to start, unless it takes over (--takeover).
    #[arg(long, default_value = "/var/run/trellis")]
    pub runtime_dir: PathBuf,
    /// Shared mode: the Unix socket (mode 0600) on which this proxy hands its
    /// listeners, pods and lock to a new one; default
    /// <runtime-dir>/node-proxy-handover.sock.
    #[arg(long)]
    pub handover_socket: Option<PathBuf>,
    /// Shared mode: take over from the running node proxy through its
    /// hand-over socket (default: --handover-socket's path). This proxy
    /// receives every listener, serves them, and only then does the old one
    /// stop accepting and drain. Any failure leaves the old one serving.
    /// (Given bare, the value is empty: clap's path parser refuses an empty
    /// value, the plain string parser does not.)
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "SOCKET", value_parser = clap::builder::OsStringValueParser::new())]
    pub takeover: Option<std::ffi::OsString>,
    /// Shared mode, without --takeover: when another node proxy holds this
    /// node's lock and offers its hand-over socket (--handover-socket's
    /// path), take over from it rather than refuse to start. This is how a
    /// DaemonSet rollout (`maxSurge: 1`) upgrades without loss: the new pod
    /// starts beside the old one and takes its listeners and pods. `false`:
    /// refuse, naming the running proxy.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub auto_takeover: bool,
    /// After handing over, the old process drains this long at most: its
    /// connections run to their natural end until then.
    #[arg(long, value_parser = duration, default_value = "1h")]
    pub handover_drain_deadline: Duration,
}

impl Settings {
    /// Where this proxy offers the hand-over.
    pub fn handover_socket_path(&self) -> PathBuf {
        self.handover_socket
            .clone()
            .unwrap_or_else(|| self.runtime_dir.join(crate::instance::HANDOVER_SOCKET))
    }

    /// The socket to take over through without --takeover, when the
    /// node's lock is held (see --auto-takeover): the running proxy's
    /// hand-over socket, if it is there.
    pub fn auto_takeover_path(&self) -> Option<PathBuf> {
        let path = self.handover_socket_path();
        (self.auto_takeover && path.exists()).then_some(path)
    }

    /// The socket to take over through, with --takeover.
    pub fn takeover_path(&self) -> Option<PathBuf> {
        self.takeover.as_ref().map(|p| {
            if p.is_empty() {
                self.handover_socket_path()
            } else {
                PathBuf::from(p)
            }
        })
    }
}

impl Settings {
    /// Checks combinations clap cannot express, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        match self.mode {
            Mode::Dedicated => {
                if self.workload_uid.is_none() {
                    errs.push("--mode dedicated needs --workload-uid".to_string());
                }
                if self.capture {
                    for (flag, given) in self.listener_flags() {
                        if given {
                            errs.push(format!(
                                "{flag} conflicts with --capture: the capture rules send traffic to the fixed ports 15001, 15006 and 15008, where --capture listens"
                            ));
                        }
                    }
                } else if self.hbone_addr.is_none()
                    && self.outbound_addr.is_none()
                    && self.outbound_forwards.is_empty()
                {
                    errs.push(
                        "--mode dedicated needs at least one of --hbone-addr, --outbound-addr, --outbound-forward"
                            .to_string(),
                    );
                }
                if !self.pods.is_empty() {
                    errs.push("--pod is for --mode shared".to_string());
                }
                if self.takeover.is_some() {
                    errs.push("--takeover is for --mode shared (the dedicated hand-over is not built yet)".to_string());
                }
                if self.zds_socket.is_some() {
                    errs.push(
                        "--zds-socket is for --mode shared: the CNI agent hands over pods"
                            .to_string(),
                    );
                }
            }
            Mode::Shared => {
                if self.capture {
                    errs.push("--capture is for --mode dedicated; in shared mode the CNI agent (or --install-redirect) captures each pod".to_string());
                }
                for flag in self.listener_flags() {
                    if flag.1 {
                        errs.push(format!(
                            "{} is for --mode dedicated; shared mode listens inside each pod's netns",
                            flag.0
                        ));
                    }
                }
                for p in &self.pods {
                    if parse_pod_arg(p).is_err() {
                        errs.push(format!("--pod {p:?} must look like UID=/path/to/netns"));
                    }
                }
            }
        }
        self.common.validate(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

impl Settings {
    /// The dedicated-mode listener flags, and whether each was given.
    fn listener_flags(&self) -> [(&'static str, bool); 4] {
        [
            ("--hbone-addr", self.hbone_addr.is_some()),
            ("--outbound-addr", self.outbound_addr.is_some()),
            ("--inbound-plain-addr", self.inbound_plain_addr.is_some()),
            ("--outbound-forward", !self.outbound_forwards.is_empty()),
        ]
    }
}

/// Splits a `UID=NETNS_PATH` pod argument.
pub fn parse_pod_arg(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((uid, path)) if !uid.is_empty() && !path.is_empty() => {
            Ok((uid.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("pod {s:?} must look like UID=/path/to/netns")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards() {
        let f: OutboundForward = "127.0.0.1:1=127.0.0.2:2".parse().unwrap();
        assert_eq!(f.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(f.target, "127.0.0.2:2".parse().unwrap());
        assert!("127.0.0.1:1".parse::<OutboundForward>().is_err());
        assert!("x=127.0.0.2:2".parse::<OutboundForward>().is_err());
    }

    #[test]
    fn validate_reports_every_problem() {
        let s = Settings::parse_from([
            "p",
            "--config",
            "c.yaml",
            "--ca-dir",
            "ca",
            "--mode",
            "dedicated",
            "--admin-addr",
            "0.0.0.0:15000",
        ]);
        let errs = s.validate().unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
        let s = Settings::parse_from([
            "p", "--config", "c.yaml", "--ca-dir", "ca", "--pod", "nouid",
        ]);
        assert_eq!(s.validate().unwrap_err().len(), 1);
    }

    #[test]
    fn takeover_socket_defaults_to_the_handover_socket_in_the_runtime_dir() {
        let base = ["p", "--config", "c.yaml", "--ca-dir", "ca"];
        // (extra flags, the socket taken over through)
        let cases: [(&[&str], Option<&str>); 5] = [
            (&[], None),
            (
                &["--takeover"],
                Some("/var/run/trellis/node-proxy-handover.sock"),
            ),
            (&["--takeover", "/x/h.sock"], Some("/x/h.sock")),
            (
                &["--runtime-dir", "/r", "--takeover"],
                Some("/r/node-proxy-handover.sock"),
            ),
            (
                &["--handover-socket", "/h.sock", "--takeover"],
                Some("/h.sock"),
            ),
        ];
        for (extra, want) in cases {
            let s = Settings::parse_from(base.iter().chain(extra));
            assert_eq!(s.takeover_path(), want.map(PathBuf::from), "{extra:?}");
        }
        let s = Settings::parse_from(base.iter().chain(&[
            "--mode",
            "dedicated",
            "--workload-uid",
            "u",
            "--hbone-addr",
            "127.0.0.1:1",
            "--takeover",
        ]));
        let errs = s.validate().unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("--takeover is for --mode shared")),
            "{errs:?}"
        );
    }

    #[test]
    fn capture_is_for_dedicated_mode_and_fixes_the_listeners() {
        let dedicated = ["--mode", "dedicated", "--workload-uid", "u"];
        let cases: &[(&str, Vec<&str>, &[&str])] = &[
            (
                "capture alone",
                [&dedicated[..], &["--capture"]].concat(),
                &[],
            ),
            (
                "capture with a listener flag",
                [
                    &dedicated[..],
                    &["--capture", "--hbone-addr", "0.0.0.0:15008"],
                ]
                .concat(),
                &["--hbone-addr conflicts with --capture"],
            ),
            (
                "capture with two listener flags",
                [
                    &dedicated[..],
                    &["--capture", "--outbound-addr", "127.0.0.1:15001"],
                    &["--outbound-forward", "127.0.0.1:1=127.0.0.2:2"],
                ]
                .concat(),
                &["--outbound-addr conflicts", "--outbound-forward conflicts"],
            ),
            (
                "capture in shared mode",
                vec!["--capture"],
                &["--capture is for --mode dedicated"],
            ),
            (
                "dedicated without capture nor listeners",
                dedicated.to_vec(),
                &["needs at least one of --hbone-addr"],
            ),
        ];
        for (name, extra, want) in cases {
            let mut argv = vec!["p", "--config", "c.yaml", "--ca-dir", "ca"];
            argv.extend(extra);
            let got = Settings::parse_from(argv)
                .validate()
                .err()
                .unwrap_or_default();
            assert_eq!(got.len(), want.len(), "{name}: {got:?}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(g.contains(w), "{name}: {g:?} lacks {w:?}");
            }
        }
    }
}
