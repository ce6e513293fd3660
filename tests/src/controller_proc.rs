//! A real `trellis-controller` process inside a topology namespace (or the
//! test's own): `ca init`, `run` on a manifests folder or a kubeconfig,
//! killed by PID and restarted on the same addresses (proxies keep dialling
//! the address they were given). Its admin port binds 127.0.0.1 inside that
//! namespace, so every call to it is made from a socket created there.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use trellis_netns::NetNs;

use crate::cluster::{http_in, sum_samples};
use crate::process::OwnedChild;
use crate::wait::{wait_for, wait_until};

/// How long the controller gets to bind and write its addresses, then to
/// publish its first config (Kubernetes mode lists every kind first).
const START_TIMEOUT: Duration = Duration::from_secs(20);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of the controller binary: `TRELLIS_CONTROLLER_BIN`, or the one cargo
/// built next to this test executable (`cargo test --workspace` builds it).
pub fn controller_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("TRELLIS_CONTROLLER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("trellis-controller");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "trellis-controller binary not found near {}; build it with `cargo build -p trellis-controller`",
        exe.display()
    )
}

/// `trellis-controller ca init --dir DIR`: a root and a signing
/// intermediate, the only issuer of the mesh's certificates.
pub fn ca_init(dir: &Path) -> Result<()> {
    let bin = controller_bin()?;
    let out = Command::new(&bin)
        .args(["ca", "init", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} ca init", bin.display()))?;
    if !out.status.success() {
        bail!(
            "`trellis-controller ca init --dir {}` failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Where the controller's objects come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectSource {
    /// `--manifests DIR --tokens FILE`.
    Manifests { dir: PathBuf, tokens: PathBuf },
    /// `--kubeconfig FILE`; tokens are checked with TokenReview.
    Kube { kubeconfig: PathBuf },
}

/// The `run` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunArgs {
    pub source: ObjectSource,
    pub ca_dir: PathBuf,
    /// The TLS gRPC port (xDS and CA).
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub bound_addrs_file: PathBuf,
    /// How often the manifests folder is scanned.
    pub poll: Duration,
    /// Appended as given (e.g. the waypoint manager's flags).
    pub extra: Vec<String>,
}

impl RunArgs {
    /// `run ...` as passed to the binary.
    pub fn argv(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into()];
        match &self.source {
            ObjectSource::Manifests { dir, tokens } => {
                a.extend(["--manifests".into(), dir.into()]);
                a.extend(["--tokens".into(), tokens.into()]);
            }
            ObjectSource::Kube { kubeconfig } => {
                a.extend(["--kubeconfig".into(), kubeconfig.into()]);
            }
        }
        a.extend(["--ca-dir".into(), self.ca_dir.clone().into()]);
        a.push(format!("--listen={}", self.listen).into());
        a.push(format!("--admin-addr={}", self.admin).into());
        a.push(format!("--poll={}ms", self.poll.as_millis()).into());
        a.push("--log=info".into());
        a.extend([
            "--bound-addrs-file".into(),
            self.bound_addrs_file.clone().into(),
        ]);
        a.extend(self.extra.iter().map(Into::into));
        a
    }

    /// The same command with the addresses a first run actually bound, so
    /// a restart listens where the proxies already dial.
    pub fn pinned_to(&self, bound: &BoundAddrs) -> RunArgs {
        RunArgs {
            listen: bound.grpc,
            admin: bound.admin,
            ..self.clone()
        }
    }
}

/// What `--bound-addrs-file` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

impl BoundAddrs {
    /// `{"grpc": "...", "admin": "..."}`.
    pub fn parse(text: &str) -> Result<BoundAddrs> {
        let v: serde_json::Value =
            serde_json::from_str(text).with_context(|| format!("bound addrs file {text:?}"))?;
        let get = |k: &str| -> Result<SocketAddr> {
            v[k].as_str()
                .ok_or_else(|| anyhow!("bound addrs file has no {k:?}: {text}"))?
                .parse()
                .with_context(|| format!("bound addrs file, {k:?}: {text}"))
        };
        Ok(BoundAddrs {
            grpc: get("grpc")?,
            admin: get("admin")?,
        })
    }
}

/// A controller process in a namespace; killed (by PID) and reaped on drop.
pub struct Controller {
    child: Option<OwnedChild>,
    /// The `ip netns` name and the namespace; None: the test's own.
    netns: Option<(String, NetNs)>,
    args: RunArgs,
    bound: BoundAddrs,
    log: PathBuf,
    starts: u32,
}

impl Controller {
    /// Starts `run` inside `netns_name` (with `ip netns exec`, which execs
    /// the binary, so the child's PID is the controller's), then waits for
    /// its bound addresses and for it to be ready. `log` collects every
    /// run's output, appended.
    pub fn start(netns_name: &str, args: RunArgs, log: &Path) -> Result<Controller> {
        let netns = NetNs::open(Path::new(crate::topology::NETNS_DIR).join(netns_name))
            .with_context(|| format!("opening netns {netns_name}"))?;
        Controller::start_with(Some((netns_name.to_string(), netns)), args, log)
    }

    /// [`Controller::start`] in the test's own network namespace (a
    /// controller that only needs the API server on loopback).
    pub fn start_here(args: RunArgs, log: &Path) -> Result<Controller> {
        Controller::start_with(None, args, log)
    }

    fn start_with(netns: Option<(String, NetNs)>, args: RunArgs, log: &Path) -> Result<Controller> {
        let unset: SocketAddr = "0.0.0.0:0".parse()?;
        let mut c = Controller {
            child: None,
            netns,
            args,
            bound: BoundAddrs {
                grpc: unset,
                admin: unset,
            },
            log: log.to_path_buf(),
            starts: 0,
        };
        c.spawn()?;
        c.args = c.args.pinned_to(&c.bound);
        Ok(c)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = controller_bin()?;
        let addrs_file = &self.args.bound_addrs_file;
        let _ = std::fs::remove_file(addrs_file);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = match &self.netns {
            Some((name, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .args(self.args.argv())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {} in {}", bin.display(), self.netns_label()))?;
        self.starts += 1;
        let child = self.child.insert(OwnedChild::new(child));
        let mut exited = None;
        let text = wait_for(START_TIMEOUT, "the controller's bound addresses", || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return Some(None);
            }
            std::fs::read_to_string(addrs_file).ok().map(Some)
        });
        let text = match (text, exited) {
            (_, Some(status)) => bail!("the controller exited with {status}:\n{}", self.log()),
            (Ok(Some(text)), None) => text,
            (Ok(None), None) | (Err(_), None) => bail!(
                "the controller wrote no {} within {START_TIMEOUT:?}:\n{}",
                addrs_file.display(),
                self.log()
            ),
        };
        self.bound = BoundAddrs::parse(&text)?;
        wait_until(READY_TIMEOUT, "the controller's /healthz/ready", || {
            self.get("/healthz/ready")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
        })
        .map_err(|e| anyhow!("{e}\n{}", self.log()))?;
        Ok(())
    }

    /// SIGKILL by PID, then reaps it: no drain, no goodbye to the proxies,
    /// as when the controller's node dies.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("the controller is not running"))?;
        let pid = child.id();
        // SAFETY: plain kill(2) on our own unreaped child, so the PID
        // cannot belong to another process.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        child
            .wait_exit(Duration::from_secs(10))
            .ok_or_else(|| anyhow!("the controller (pid {pid}) survived SIGKILL for 10 s"))?;
        Ok(())
    }

    /// Starts it again on the addresses the first run bound.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("restart: the controller is still running; kill it first");
        }
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(OwnedChild::id)
    }

    /// How many times it was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// The xDS and CA address the proxies dial.
    pub fn grpc(&self) -> SocketAddr {
        self.bound.grpc
    }

    pub fn args(&self) -> &RunArgs {
        &self.args
    }

    /// Everything every run wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn netns_label(&self) -> &str {
        self.netns
            .as_ref()
            .map_or("the test's network namespace", |(name, _)| name)
    }

    /// `GET path` on the admin port, from inside the namespace.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_in(
            self.netns.as_ref().map(|(_, ns)| ns),
            self.bound.admin,
            "GET",
            path,
            "",
        )
    }

    /// The sum of a metric's samples (0 when the admin port does not answer).
    pub fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .map(|(_, text)| sum_samples(&text, name, &[]))
            .unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(source: ObjectSource) -> RunArgs {
        RunArgs {
            source,
            ca_dir: "/t/ca".into(),
            listen: "198.19.255.3:0".parse().unwrap(),
            admin: "127.0.0.1:0".parse().unwrap(),
            bound_addrs_file: "/t/bound.json".into(),
            poll: Duration::from_millis(100),
            extra: vec!["--manage-waypoints=false".into()],
        }
    }

    fn strings(a: &RunArgs) -> Vec<String> {
        a.argv()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn run_command_lines_name_their_source_and_addresses() {
        let manifests = ObjectSource::Manifests {
            dir: "/t/m".into(),
            tokens: "/t/tokens.yaml".into(),
        };
        let kube = ObjectSource::Kube {
            kubeconfig: "/t/kubeconfig".into(),
        };
        // (source, flags that must be there, flags that must not)
        let cases: [(ObjectSource, &[&str], &[&str]); 2] = [
            (
                manifests,
                &["--manifests /t/m", "--tokens /t/tokens.yaml"],
                &["--kubeconfig"],
            ),
            (
                kube,
                &["--kubeconfig /t/kubeconfig"],
                &["--manifests", "--tokens"],
            ),
        ];
        for (source, present, absent) in cases {
            let line = strings(&args(source.clone())).join(" ");
            assert!(line.starts_with("run "), "{line}");
            for p in present.iter().chain(&[
                "--ca-dir /t/ca",
                "--listen=198.19.255.3:0",
                "--admin-addr=127.0.0.1:0",
                "--poll=100ms",
                "--bound-addrs-file /t/bound.json",
                "--manage-waypoints=false",
            ]) {
                assert!(line.contains(p), "{source:?}: {p:?} missing in {line}");
            }
            for a in absent {
                assert!(!line.contains(a), "{source:?}: {a:?} in {line}");
            }
        }
    }

    #[test]
    fn a_restart_listens_where_the_first_run_bound() {
        let first = args(ObjectSource::Kube {
            kubeconfig: "/k".into(),
        });
        let bound =
            BoundAddrs::parse(r#"{"grpc": "198.19.255.3:41000", "admin": "127.0.0.1:41001"}"#)
                .unwrap();
        let line = strings(&first.pinned_to(&bound)).join(" ");
        assert!(line.contains("--listen=198.19.255.3:41000"), "{line}");
        assert!(line.contains("--admin-addr=127.0.0.1:41001"), "{line}");
    }

    #[test]
    fn bound_addrs_files_that_do_not_parse_say_why() {
        let cases = [
            ("", "bound addrs file"),
            (r#"{"grpc": "1.2.3.4:5"}"#, "\"admin\""),
            (r#"{"grpc": "nope", "admin": "1.2.3.4:5"}"#, "\"grpc\""),
        ];
        for (text, words) in cases {
            let e = BoundAddrs::parse(text).expect_err(text).to_string();
            assert!(e.contains(words), "{text:?}: {e}");
        }
    }
}
