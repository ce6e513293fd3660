//! A real `trellis-waypoint` process running inside a pod's netns, like a
//! waypoint pod: it terminates HBONE on the pod IP itself (no node proxy in
//! front). Its admin, metrics and readiness ports bind 127.0.0.1 *inside*
//! that netns, so every call to them is made from a socket created there.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use trellis_netns::NetNs;

use crate::cluster::{http_in, sum_samples, ClusterFiles, Fixture};
use crate::process::OwnedChild;
use crate::proxy_args::{Feed, WaypointArgs};
use crate::Topology;

/// Path of the waypoint binary: `TRELLIS_WAYPOINT_BIN`, or the one cargo
/// built next to this test executable (`cargo test --workspace` builds it).
pub fn waypoint_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TRELLIS_WAYPOINT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("trellis-waypoint");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "trellis-waypoint binary not found near {}; build it with `cargo build -p trellis-waypoint`",
        exe.display()
    )
}

/// Who the waypoint is and where it runs.
#[derive(Clone, Debug)]
pub struct WaypointSpec<'a> {
    /// The topology pod whose netns the waypoint runs in (its workload's address is that pod's IP).
    pub pod: &'a str,
    /// `--name`: `<namespace>/<name>`, selecting its `waypoints` settings in the config.
    pub name: &'a str,
    pub service_account: &'a str,
    /// Appended to the command line as given.
    pub extra: &'a [&'a str],
}

/// How long the waypoint gets to write its bound addresses, then to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// One running waypoint process; killed (by PID) and reaped on drop.
pub struct Waypoint {
    pub pod: String,
    child: OwnedChild,
    netns: NetNs,
    /// The HBONE listener (on the pod's addresses, port 15008).
    pub hbone: SocketAddr,
    /// These three are 127.0.0.1 inside the pod's netns.
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
    log: PathBuf,
    /// How it was started, for a successor ([`Waypoint::take_over`]).
    netns_name: String,
    args: WaypointArgs,
}

impl Waypoint {
    /// Starts the waypoint in `spec.pod`'s netns with `ip netns exec` (which
    /// execs the binary, so the child's PID is the waypoint's), waits for its
    /// bound-addresses file and for readiness.
    pub fn start(
        topo: &Topology,
        files: &ClusterFiles,
        config: &Path,
        ca_dir: &Path,
        spec: &WaypointSpec<'_>,
    ) -> Result<Waypoint> {
        let feed = Feed::Files {
            config: config.into(),
            ca_dir: ca_dir.into(),
        };
        Waypoint::start_fed(topo, files, feed, spec)
    }

    /// [`Waypoint::start`] with config and certificates from `feed` (the
    /// controller's xDS and CA, or local files).
    pub fn start_fed(
        topo: &Topology,
        files: &ClusterFiles,
        feed: Feed,
        spec: &WaypointSpec<'_>,
    ) -> Result<Waypoint> {
        let pod = topo
            .pod(spec.pod)
            .ok_or_else(|| anyhow!("no pod {} in topology", spec.pod))?;
        let tag = format!("waypoint-{}", spec.pod);
        let args = WaypointArgs {
            name: spec.name.into(),
            service_account: spec.service_account.into(),
            feed,
            bound_addrs_file: files.path(&format!("{tag}-addrs.json")),
            log: "info".into(),
            access_log: true,
            extra: spec.extra.iter().map(|s| s.to_string()).collect(),
        };
        Waypoint::launch(
            spec.pod,
            pod.netns_name(),
            pod.netns()?,
            args,
            files.path(&format!("{tag}.log")),
        )
    }

    /// Runs the binary with `args` in the pod's netns, waits for its bound
    /// addresses and its readiness.
    fn launch(
        pod: &str,
        netns_name: &str,
        netns: NetNs,
        args: WaypointArgs,
        log: PathBuf,
    ) -> Result<Waypoint> {
        let bin = waypoint_bin()?;
        let addrs_file = args.bound_addrs_file.clone();
        let _ = std::fs::remove_file(&addrs_file);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns_name])
            .arg(&bin)
            .args(args.argv());
        let out = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} in {netns_name}", bin.display()))?;
        let unset: SocketAddr = "0.0.0.0:0".parse()?;
        let mut wp = Waypoint {
            pod: pod.to_string(),
            child: OwnedChild::new(child),
            netns,
            hbone: unset,
            admin: unset,
            metrics: unset,
            readiness: unset,
            log,
            netns_name: netns_name.to_string(),
            args,
        };
        let addrs = wp.wait_addrs(&addrs_file)?;
        let get = |k: &str| -> Result<SocketAddr> {
            addrs[k]
                .as_str()
                .ok_or_else(|| anyhow!("no {k} in {}: {addrs}", addrs_file.display()))?
                .parse()
                .with_context(|| format!("{k} in {}", addrs_file.display()))
        };
        wp.hbone = get("hbone")?;
        wp.admin = get("admin")?;
        wp.metrics = get("metrics")?;
        wp.readiness = get("readiness")?;
        crate::wait_until(READY_TIMEOUT, "waypoint readiness", || {
            wp.ready().unwrap_or(false)
        })
        .map_err(|e| anyhow!("{e}\n{}", wp.log()))?;
        Ok(wp)
    }

    /// A successor that takes over from this waypoint through the
    /// `--handover-socket` it was started with (`--takeover`, that path),
    /// logging to `waypoint-<pod>-<tag>.log`; waits for it as for the first.
    /// Fails, with its log, if it exits at start.
    pub fn take_over(&self, tag: &str) -> Result<Waypoint> {
        let socket = self
            .args
            .extra
            .iter()
            .position(|a| a == "--handover-socket")
            .and_then(|i| self.args.extra.get(i + 1))
            .ok_or_else(|| anyhow!("waypoint {} has no --handover-socket", self.pod))?
            .clone();
        self.take_over_via(tag, &socket)
    }

    /// [`take_over`](Self::take_over) through `socket`, whatever this one offers on.
    pub fn take_over_via(&self, tag: &str, socket: &str) -> Result<Waypoint> {
        let socket = socket.to_string();
        let mut args = self.args.clone();
        if let Some(i) = args.extra.iter().position(|a| a == "--takeover") {
            args.extra.drain(i..(i + 2).min(args.extra.len()));
        }
        args.extra.extend(["--takeover".to_string(), socket]);
        let name = |suffix: &str| {
            self.log
                .with_file_name(format!("waypoint-{}-{tag}{suffix}", self.pod))
        };
        args.bound_addrs_file = name("-addrs.json");
        Waypoint::launch(
            &self.pod,
            &self.netns_name,
            self.netns.try_clone()?,
            args,
            name(".log"),
        )
    }

    /// [`Waypoint::start`] with the fixture's files and CA.
    pub fn start_in(f: &Fixture, config: &Path, spec: &WaypointSpec<'_>) -> Result<Waypoint> {
        Waypoint::start(&f.topo, &f.files, config, &f.ca, spec)
    }

    /// Waits for the bound-addresses JSON; fails early if the process exits.
    fn wait_addrs(&mut self, file: &Path) -> Result<serde_json::Value> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "waypoint in {} exited with {status} at start:\n{}",
                    self.pod,
                    self.log()
                );
            }
            // Written once listening; a partial write fails to parse and is retried.
            if let Some(v) = std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "waypoint in {} did not write {} in {START_TIMEOUT:?}:\n{}",
                    self.pod,
                    file.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config version the waypoint runs (0 if it cannot be asked).
    pub fn config_version(&self) -> u64 {
        self.admin("GET", "/config_dump", "")
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v["configVersion"].as_u64())
            .unwrap_or(0)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote so far (logs and access log), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /healthz/ready` on the readiness port (in the pod's netns, like
    /// every call to its local ports) answers 200.
    pub fn ready(&self) -> Result<bool> {
        let ns = Some(&self.netns);
        Ok(http_in(ns, self.readiness, "GET", "/healthz/ready", "")?.0 == 200)
    }

    pub fn admin(&self, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
        http_in(Some(&self.netns), self.admin, method, path, body)
    }

    pub fn metrics_text(&self) -> Result<String> {
        Ok(http_in(Some(&self.netns), self.metrics, "GET", "/metrics", "")?.1)
    }

    /// Sum of a metric's samples whose labels include all of `labels` (0 if unreachable).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics_text().unwrap_or_default();
        sum_samples(&text, name, labels)
    }

    pub fn sigterm(&self) {
        self.child.sigterm();
    }

    /// Waits for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.child.wait_exit(timeout)
    }
}
