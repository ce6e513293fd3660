//! The columns of the bulk benchmark and what each runs on the path: nothing
//! (direct), a relay pair ([`RelayPair`], sidecar-shaped behind the Envoy
//! sidecars' capture), Trellis's two node proxies in shared mode, or Istio's
//! two ztunnels in shared mode ([`crate::ztunnel`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hbone::{DevCa, Identity};
use trellis_e2e::{wait_for, ChildGuard, Pod};
use trellis_netns::redirect::{self, RedirectConfig};
use trellis_netns::NetNs;

use super::relay::{Mode, DEFAULT_BUFFER};
use crate::harness::topo::{wait_listening, BenchTopo, NodeProxy};
use crate::sidecars::mesh::write_identity;
use crate::ztunnel::ZtunnelPair;

/// One way of carrying the iperf3 flow from the client pod to the server pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Column {
    Direct,
    TcpRelay,
    SpliceRelay,
    UringRelay,
    UringFixedRelay,
    UringZcRelay,
    TlsRelay,
    UringTlsRelay,
    Trellis,
    /// Trellis with `--hbone-engine lite` (hbone::lite instead of h2).
    TrellisLite,
    /// Istio's ztunnel, built outside the project: only with `--ztunnel PATH`.
    Ztunnel,
}

impl Column {
    pub const ALL: [Column; 11] = [
        Column::Direct,
        Column::TcpRelay,
        Column::SpliceRelay,
        Column::UringRelay,
        Column::UringFixedRelay,
        Column::UringZcRelay,
        Column::TlsRelay,
        Column::UringTlsRelay,
        Column::Trellis,
        Column::TrellisLite,
        Column::Ztunnel,
    ];

    /// Without `--columns`: every column but ztunnel, whose binary the
    /// project does not build.
    pub fn defaults() -> Vec<Column> {
        Column::ALL
            .into_iter()
            .filter(|c| *c != Column::Ztunnel)
            .collect()
    }

    /// Short name (flags, JSON).
    pub fn name(self) -> &'static str {
        match self {
            Column::Direct => "direct",
            Column::TcpRelay => "tcp-relay",
            Column::SpliceRelay => "splice-relay",
            Column::UringRelay => "uring",
            Column::UringFixedRelay => "uring-fixed",
            Column::UringZcRelay => "uring-zc",
            Column::TlsRelay => "tls-relay",
            Column::UringTlsRelay => "uring-tls",
            Column::Trellis => "trellis",
            Column::TrellisLite => "trellis-lite",
            Column::Ztunnel => "ztunnel",
        }
    }

    /// What the report's table says.
    pub fn label(self) -> &'static str {
        match self {
            Column::Direct => "direct (no proxy)",
            Column::TcpRelay => "TCP relay pair (tokio copy)",
            Column::SpliceRelay => "TCP relay pair (splice)",
            Column::UringRelay => "TCP relay pair (io_uring recv/send)",
            Column::UringFixedRelay => "TCP relay pair (io_uring registered buffers)",
            Column::UringZcRelay => "TCP relay pair (io_uring SEND_ZC)",
            Column::TlsRelay => "TLS relay pair (mTLS 1.3, no HTTP/2)",
            Column::UringTlsRelay => "TLS relay pair on io_uring (recv/send)",
            Column::Trellis => "Trellis ambient (node proxies, shared mode)",
            Column::TrellisLite => {
                "Trellis ambient, hbone::lite engine (node proxies, shared mode)"
            }
            Column::Ztunnel => "Istio ztunnel (node proxies, shared mode)",
        }
    }

    pub fn parse(s: &str) -> Option<Column> {
        Column::ALL.into_iter().find(|c| c.name() == s)
    }

    /// The relay mode of a relay column.
    pub fn relay_mode(self) -> Option<Mode> {
        match self {
            Column::TcpRelay => Some(Mode::Tcp),
            Column::SpliceRelay => Some(Mode::Splice),
            Column::UringRelay => Some(Mode::Uring),
            Column::UringFixedRelay => Some(Mode::UringFixed),
            Column::UringZcRelay => Some(Mode::UringZc),
            Column::TlsRelay => Some(Mode::Tls),
            Column::UringTlsRelay => Some(Mode::UringTls),
            Column::Direct | Column::Trellis | Column::TrellisLite | Column::Ztunnel => None,
        }
    }

    /// Whether it runs Trellis's node proxies (and with which extra flags).
    pub fn trellis_args(self) -> Option<&'static [&'static str]> {
        match self {
            Column::Trellis => Some(&[]),
            Column::TrellisLite => Some(&["--hbone-engine", "lite"]),
            _ => None,
        }
    }

    /// Whether it is an io_uring relay column.
    pub fn uring(self) -> bool {
        self.relay_mode().is_some_and(|m| m.uring_io().is_some())
    }

    /// Whether the processes' own counters cover the whole flow: the splice
    /// relay starts threads per connection, which `perf stat -p` does not
    /// follow and whose context switches leave /proc with them.
    pub fn counters_cover_flow(self) -> bool {
        self != Column::SpliceRelay
    }
}

/// `--columns a,b,...`: names from [`Column::ALL`], in the order given, no repeats.
pub fn parse_columns(list: &str) -> Result<Vec<Column>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let c = Column::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
            anyhow!(
                "--columns: unknown column {name:?}; known: {}",
                known.join(", ")
            )
        })?;
        if out.contains(&c) {
            bail!("--columns: {name} given twice");
        }
        out.push(c);
    }
    if out.is_empty() {
        bail!("--columns: no column given");
    }
    Ok(out)
}

/// What a column runs while it is measured.
pub enum Running {
    Direct,
    Relays(RelayPair),
    Trellis(TrellisPair),
    Ztunnel(ZtunnelPair),
}

impl Running {
    /// The processes whose CPU is the mesh's.
    pub fn pids(&self) -> Vec<u32> {
        match self {
            Running::Direct => vec![],
            Running::Relays(r) => r.relays.iter().map(|p| p.pid).collect(),
            Running::Trellis(t) => t.proxies.iter().map(|p| p.pid).collect(),
            Running::Ztunnel(z) => z.procs.iter().map(|p| p.pid).collect(),
        }
    }

    /// Fails with the logs if a process on the path has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self {
            Running::Direct => Ok(()),
            Running::Relays(r) => r.relays.iter_mut().try_for_each(RelayProc::check_alive),
            Running::Trellis(t) => t.proxies.iter_mut().try_for_each(|p| p.check_alive()),
            Running::Ztunnel(z) => z.procs.iter_mut().try_for_each(|p| p.check_alive()),
        }
    }
}

/// One relay process in a pod, behind that pod's capture rules.
pub struct RelayProc {
    pub pod: String,
    pub pid: u32,
    ns: NetNs,
    guard: ChildGuard,
}

impl RelayProc {
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.guard.try_status() {
            bail!(
                "the relay in {} exited ({status}); its log:\n{}",
                self.pod,
                self.guard.log()
            );
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        self.guard.log()
    }

    /// The most bytes one connection carried client→server, from the
    /// relay's close lines (`... up=N down=M`).
    pub fn max_up_bytes(&self) -> u64 {
        max_up_bytes(&self.log())
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        // The next column captures (or not) the same pod.
        if let Err(e) = redirect::remove(&self.ns) {
            eprintln!("removing the capture rules of {}: {e}", self.pod);
        }
    }
}

/// The largest `up=` of the relay's close lines (0 if none).
pub fn max_up_bytes(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(": closed "))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("up="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(0)
}

/// The SEND_ZC notifications of the connection that had the most, and how
/// many of them said the kernel copied the data after all, from the
/// io_uring relay's lines (`... send-zc notifications=N copied-by-kernel=M`).
pub fn zc_notifications(log: &str) -> Option<(u64, u64)> {
    log.lines()
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|f| f.strip_prefix(name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((field("notifications=")?, field("copied-by-kernel=")?))
        })
        .max()
}

/// The outbound relay in the client pod and the inbound one in the server pod.
pub struct RelayPair {
    pub mode: Mode,
    pub relays: Vec<RelayProc>,
}

impl RelayPair {
    /// Writes the pods' certificates (mode tls), installs the Envoy
    /// sidecars' capture rules in both pods and starts a relay in each,
    /// pinned to `cpu`, through the topology's launcher (as the sidecars
    /// are); waits until both listen.
    pub fn start(bt: &BenchTopo, bin: &Path, mode: Mode, cpu: usize) -> Result<RelayPair> {
        let capture = RedirectConfig::default();
        let outbound_listen = format!("127.0.0.1:{}", capture.outbound_port);
        let inbound_listen = format!("0.0.0.0:{}", capture.inbound_plain_port);
        let dir = bt.dir().join(format!("relay-{}", mode.name()));
        let ca = DevCa::load_from_dir(&bt.dir().join("ca")).context("loading the dev CA")?;
        let mut relays = Vec::new();
        for (pod, role, listen, port) in [
            (
                &bt.server,
                "inbound",
                &inbound_listen,
                capture.inbound_plain_port,
            ),
            (
                &bt.client,
                "outbound",
                &outbound_listen,
                capture.outbound_port,
            ),
        ] {
            let mut argv: Vec<String> = vec!["taskset".into(), "-c".into(), cpu.to_string()];
            argv.push(bin.display().to_string());
            argv.extend(
                [
                    "--mode",
                    mode.name(),
                    "--role",
                    role,
                    "--listen",
                    listen,
                    "--mark",
                    &format!("{:#x}", capture.proxy_mark),
                    "--buffer",
                    &DEFAULT_BUFFER.to_string(),
                ]
                .map(String::from),
            );
            if mode.tls() {
                argv.extend(tls_flags(&ca, &dir, pod, role == "outbound")?);
            }
            let ns = pod.netns()?;
            redirect::install(&ns, &capture)
                .with_context(|| format!("installing the capture rules in {}", pod.name))?;
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let spawned = bt.topo.spawn(&pod.name, &argv);
            let guard = match spawned {
                Ok(g) => g,
                Err(e) => {
                    let _ = redirect::remove(&ns);
                    return Err(e).with_context(|| format!("starting the relay in {}", pod.name));
                }
            };
            let relay = RelayProc {
                pod: pod.name.clone(),
                pid: guard.pid(),
                ns,
                guard,
            };
            wait_listening(&relay.ns, port, Duration::from_secs(10))
                .with_context(|| format!("the relay in {}; its log:\n{}", pod.name, relay.log()))?;
            relays.push(relay);
        }
        Ok(RelayPair { mode, relays })
    }

    /// Per relay, what its busiest SEND_ZC connection's notifications said.
    pub fn zc_summary(&self) -> Vec<String> {
        self.relays
            .iter()
            .filter_map(|r| {
                let (n, copied) = zc_notifications(&r.log())?;
                Some(format!(
                    "the relay in {}: {n} SEND_ZC notifications, {copied} of them copied by the kernel",
                    r.pod
                ))
            })
            .collect()
    }

    /// Fails unless both relays carried at least `bytes` on one connection
    /// (the iperf3 data stream), waiting briefly for their close lines.
    pub fn check_carried(&self, bytes: u64) -> Result<()> {
        for r in &self.relays {
            let what = format!(
                "the relay in {} to log a connection of {bytes} bytes",
                r.pod
            );
            wait_for(Duration::from_secs(5), &what, || {
                (r.max_up_bytes() >= bytes).then_some(())
            })
            .map_err(|e| anyhow!("{e}: the flow did not go through it; its log:\n{}", r.log()))?;
        }
        Ok(())
    }
}

/// The TLS flags of `pod`'s relay: its certificate files, and for the
/// outbound relay the identity it requires of the server pod's.
fn tls_flags(ca: &DevCa, dir: &Path, pod: &Pod, outbound: bool) -> Result<Vec<String>> {
    use crate::harness::topo::{NAMESPACE, TRUST_DOMAIN};
    let pod_dir: PathBuf = dir.join(&pod.name);
    std::fs::create_dir_all(&pod_dir).with_context(|| format!("creating {}", pod_dir.display()))?;
    // The service accounts of mesh.yaml: the pod's name.
    let certs = write_identity(
        ca,
        &Identity::new(TRUST_DOMAIN, NAMESPACE, &pod.name),
        &pod_dir,
    )?;
    let mut flags = vec![
        "--cert-chain".to_string(),
        certs.chain.display().to_string(),
        "--key".into(),
        certs.key.display().to_string(),
        "--root".into(),
        certs.root.display().to_string(),
    ];
    if outbound {
        flags.push("--peer-id".into());
        flags.push(Identity::new(TRUST_DOMAIN, NAMESPACE, "server").to_string());
    }
    Ok(flags)
}

/// Trellis's node proxies, one per node, as `trellis-bench` starts them.
pub struct TrellisPair {
    pub proxies: Vec<NodeProxy>,
    pods: Vec<(String, NetNs)>,
}

impl TrellisPair {
    /// Both proxies, with `extra` flags (the column's engine).
    pub fn start(bt: &BenchTopo, bin: &Path, cpu: usize, extra: &[&str]) -> Result<TrellisPair> {
        let proxies = vec![
            bt.start_proxy_args(bin, "node1", &bt.client, cpu, extra)?,
            bt.start_proxy_args(bin, "node2", &bt.server, cpu, extra)?,
        ];
        let pods = [&bt.client, &bt.server]
            .into_iter()
            .map(|p| Ok((p.name.clone(), p.netns()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TrellisPair { proxies, pods })
    }

    /// `istio_tcp_connections_opened_total` of each proxy.
    pub fn opened(&self) -> Result<Vec<f64>> {
        self.proxies
            .iter()
            .map(|p| p.metric_sum("istio_tcp_connections_opened_total"))
            .collect()
    }
}

impl Drop for TrellisPair {
    fn drop(&mut self) {
        // Killed proxies leave their capture rules in the pods; the next
        // column must find the pods as it expects them.
        self.proxies.clear();
        for (name, ns) in &self.pods {
            if let Err(e) = redirect::remove(ns) {
                eprintln!("removing the capture rules of {name}: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_column_lists() {
        let ok = |s: &str| parse_columns(s).unwrap();
        assert_eq!(ok("direct,trellis"), [Column::Direct, Column::Trellis]);
        assert_eq!(
            ok(" tls-relay , tcp-relay,"),
            [Column::TlsRelay, Column::TcpRelay]
        );
        assert_eq!(
            ok("direct,tcp-relay,splice-relay,uring,uring-fixed,uring-zc,tls-relay,uring-tls,trellis,trellis-lite"),
            Column::defaults()
        );
        assert_eq!(
            ok("direct,tcp-relay,splice-relay,uring,uring-fixed,uring-zc,tls-relay,uring-tls,trellis,trellis-lite,ztunnel"),
            Column::ALL
        );
        assert_eq!(
            ok("uring-zc,uring"),
            [Column::UringZcRelay, Column::UringRelay]
        );
        // (list, what the error says)
        let bad = [
            ("", "no column"),
            ("direct,udp-relay", "unknown column \"udp-relay\""),
            (
                "uring-relay",
                "known: direct, tcp-relay, splice-relay, uring, uring-fixed",
            ),
            ("trellis,trellis", "trellis given twice"),
        ];
        for (list, want) in bad {
            let e = parse_columns(list).unwrap_err().to_string();
            assert!(e.contains(want), "{list:?}: {e}");
        }
    }

    #[test]
    fn largest_upward_connection_from_the_relay_log() {
        let log = "relay tcp outbound: listening on 127.0.0.1:15001 (buffer 262144 B, mark 0x539)\n\
                   relay tcp outbound: closed peer=1.2.3.4:1 dst=5.6.7.8:7000 up=1 down=1\n\
                   relay tcp outbound: closed peer=1.2.3.4:2 dst=5.6.7.8:5201 up=1133690901 down=0 error=Broken pipe (os error 32)\n\
                   relay tcp outbound: closed peer=1.2.3.4:3 dst=5.6.7.8:5201 up=455 down=331\n\
                   relay tcp outbound: peer=1.2.3.4:4: connection ... up=99999999999\n";
        assert_eq!(max_up_bytes(log), 1133690901);
        assert_eq!(max_up_bytes(""), 0);
    }

    #[test]
    fn zero_copy_notifications_from_the_relay_log() {
        let log = "relay uring-zc inbound: listening on 0.0.0.0:15006 (buffer 262144 B, mark 0x539)\n\
                   relay uring-zc inbound: peer=1.2.3.4:1 dst=5.6.7.8:7000 send-zc notifications=2 copied-by-kernel=2\n\
                   relay uring-zc inbound: peer=1.2.3.4:2 dst=5.6.7.8:5201 send-zc notifications=90210 copied-by-kernel=90001\n\
                   relay uring-zc inbound: closed peer=1.2.3.4:2 dst=5.6.7.8:5201 up=1133690901 down=0\n";
        assert_eq!(zc_notifications(log), Some((90210, 90001)));
        assert_eq!(
            zc_notifications("relay uring inbound: closed up=1 down=1"),
            None
        );
    }
}
