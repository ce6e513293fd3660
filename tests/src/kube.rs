//! A real Kubernetes API server for tests: etcd and kube-apiserver started
//! by tests/kube/start-local.sh (no kubelet, no controller manager, no
//! scheduler), driven with `kubectl`, and stopped by PID on drop.
//!
//! The server can run inside a network namespace of a [`crate::Topology`]
//! (the script binds 127.0.0.1 there), so that a controller in that
//! namespace reaches it on loopback while the topology's nodes reach the
//! controller; every `kubectl` call is then made from that namespace too.
//!
//! Tests call [`require_kube`] first: without the binaries they say so and
//! pass, unless `TRELLIS_REQUIRE_KUBE=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod crds;

pub use crds::{authorization_policy_crd, gateway_api_crds, workload_entry_crd};

use crate::process::EXEC_TIMEOUT;
use crate::wait::wait_for;

/// Set to `1` (CI does) to fail, not skip, when the API server cannot run.
pub const REQUIRE_ENV: &str = "TRELLIS_REQUIRE_KUBE";
/// The istio.io/api version whose AuthorizationPolicy and WorkloadEntry
/// CRDs tests install.
pub const ISTIO_API: &str = "istio.io/api@v1.32.0";
/// The Gateway API version whose CRDs tests install (the experimental
/// channel, so HTTPRoute rules keep their names).
pub const GATEWAY_API: &str = "sigs.k8s.io/gateway-api@v1.3.0";
/// The Gateway API kinds the controller reads.
const GATEWAY_API_KINDS: [&str; 3] = ["gateways", "httproutes", "grpcroutes"];
/// Trellis's own CRD, as deploy/daemonset ships it.
const TRAFFIC_POLICY_CRD: &str =
    include_str!("../../deploy/daemonset/base/crds/trellis.dev_trafficpolicies.yaml");
/// How long the start script may take (it has its own 60 s bound inside).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot run {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tests/kube/start-local.sh failed ({status}); its output:\n{stderr}")]
    Start { status: String, stderr: String },
    #[error("tests/kube/start-local.sh printed no {what}; stdout was:\n{stdout}")]
    StartOutput { what: &'static str, stdout: String },
    #[error("`{command}` did not finish within {timeout:?}; killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed: {stderr}")]
    Kubectl { command: String, stderr: String },
    #[error("`{command}` answered something that is not JSON: {detail}")]
    Json { command: String, detail: String },
    #[error("a CRD from the Go module {module} is unavailable: {detail}; it comes from `go mod download` (needs go and the Go module proxy)")]
    Crd {
        module: &'static str,
        detail: String,
    },
}

pub type Result<T, E = KubeError> = std::result::Result<T, E>;

fn env_is_1(name: &str) -> bool {
    std::env::var(name).map(|v| v == "1").unwrap_or(false)
}

/// `$KUBECTL` (tests/kube/install.sh --with-kubectl prints it), else
/// `kubectl` from PATH.
pub fn kubectl_program() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

/// Why the API server tests cannot run here, or None if they can.
pub fn kube_unavailable() -> Option<String> {
    let binary = |v: &str| std::env::var_os(v).is_some_and(|p| Path::new(&p).is_file());
    if !binary("KUBE_APISERVER") || !binary("ETCD") {
        return Some(
            "$KUBE_APISERVER and $ETCD do not name binaries; run `eval \"$(bash tests/kube/install.sh)\"; export KUBE_APISERVER ETCD`".into(),
        );
    }
    let kubectl = Command::new(kubectl_program())
        .args(["version", "--client"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !kubectl {
        return Some(format!(
            "`{} version --client` fails; install kubectl or set $KUBECTL (tests/kube/install.sh --with-kubectl builds one)",
            kubectl_program()
        ));
    }
    None
}

/// Call first in every test that starts an API server: true when it can
/// run. Otherwise it panics when [`REQUIRE_ENV`]`=1`, and prints a loud
/// skip line and returns false when not.
pub fn require_kube() -> bool {
    match kube_unavailable() {
        None => true,
        Some(why) if env_is_1(REQUIRE_ENV) => {
            panic!("{REQUIRE_ENV}=1 but the Kubernetes API server tests cannot run: {why}")
        }
        Some(why) => {
            eprintln!("!!!!! SKIPPED: Kubernetes API server test not run: {why} !!!!!");
            false
        }
    }
}

/// etcd and kube-apiserver; stopped by PID (API server first) on drop.
pub struct KubeApiServer {
    /// etcd, then kube-apiserver.
    pids: Vec<i32>,
    kubeconfig: PathBuf,
    /// The `ip netns` name the server runs in; None for the caller's own.
    netns: Option<String>,
    dir: tempfile::TempDir,
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        // The API server first: with etcd gone first it retries for minutes.
        for &pid in self.pids.iter().rev() {
            // SAFETY: plain kill(2) on the PIDs start-local.sh started for
            // this server. They are not our children (the script exits and
            // they are reparented), so there is no waitpid: poll, bounded at
            // 2 s, until the PID is gone so the next one is not stopped early.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                for _ in 0..200 {
                    if libc::kill(pid, 0) != 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// `program args` prefixed with `ip netns exec NAME` when a namespace is given.
fn command_in(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// Runs a command to completion within `timeout`, feeding `stdin`; (status, stdout, stderr).
pub(crate) fn run(
    mut cmd: Command,
    what: &str,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| KubeError::Spawn {
        what: what.to_string(),
        source,
    })?;
    if let Some(input) = stdin {
        use std::io::Write;
        if let Some(mut pipe) = child.stdin.take() {
            // A command that exits early closes the pipe; its status says why.
            let _ = pipe.write_all(input.as_bytes());
        }
    }
    let out = read_pipes(&mut child);
    let status = blocking(|| wait_for(timeout, what, || child.try_wait().ok().flatten()));
    let status = match status {
        Ok(s) => s,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KubeError::Timeout {
                command: what.to_string(),
                timeout,
            });
        }
    };
    let (stdout, stderr) = out.join();
    Ok(Output {
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr,
    })
}

/// Runs `f`, which blocks the thread. Inside a multi-thread tokio runtime
/// (the tests that run the controller's source in-process) tokio is told
/// first, so the runtime's other tasks, the source among them, keep running.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(crate) struct Output {
    pub(crate) success: bool,
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Both pipes read on threads, so a chatty command never blocks on a full pipe.
struct Pipes(
    std::thread::JoinHandle<String>,
    std::thread::JoinHandle<String>,
);

impl Pipes {
    fn join(self) -> (String, String) {
        (
            self.0.join().unwrap_or_default(),
            self.1.join().unwrap_or_default(),
        )
    }
}

fn read_pipes(child: &mut std::process::Child) -> Pipes {
    fn reader(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut s);
            }
            s
        })
    }
    Pipes(reader(child.stdout.take()), reader(child.stderr.take()))
}

/// The PIDS= and KUBECONFIG= lines start-local.sh prints on success.
pub fn parse_start_output(stdout: &str) -> Result<(Vec<i32>, PathBuf)> {
    let mut pids = None;
    let mut kubeconfig = None;
    for line in stdout.lines() {
        if let Some(p) = line.strip_prefix("PIDS=") {
            pids = p
                .split_whitespace()
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<i32>>>();
        } else if let Some(k) = line.strip_prefix("KUBECONFIG=") {
            kubeconfig = Some(PathBuf::from(k));
        }
    }
    let missing = |what| KubeError::StartOutput {
        what,
        stdout: stdout.to_string(),
    };
    let pids = pids
        .filter(|p| p.len() == 2)
        .ok_or_else(|| missing("PIDS=<etcd> <kube-apiserver> line"))?;
    Ok((pids, kubeconfig.ok_or_else(|| missing("KUBECONFIG= line"))?))
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver on 127.0.0.1 of `netns` (an `ip
    /// netns` name; None: the caller's namespace) and waits until ready.
    /// Services get cluster IPs from `service_cidr` (None: 10.96.0.0/16).
    pub fn start(netns: Option<&str>, service_cidr: Option<&str>) -> Result<KubeApiServer> {
        Self::start_with(netns, service_cidr, &[])
    }

    /// [`Self::start`], with `env` set for the start script (for example
    /// other `ETCD` and `KUBE_APISERVER` binaries).
    pub fn start_with(
        netns: Option<&str>,
        service_cidr: Option<&str>,
        env: &[(&str, &Path)],
    ) -> Result<KubeApiServer> {
        let dir = tempfile::Builder::new()
            .prefix("trellis-kube-")
            .tempdir()
            .map_err(|source| KubeError::Spawn {
                what: "a temp dir for the API server".into(),
                source,
            })?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("kube/start-local.sh");
        let mut cmd = command_in(netns, "bash");
        cmd.arg(&script).arg(dir.path().join("kube"));
        if let Some(cidr) = service_cidr {
            cmd.env("KUBE_SERVICE_CIDR", cidr);
        }
        cmd.envs(env.iter().copied());
        let out = run(cmd, "tests/kube/start-local.sh", None, START_TIMEOUT)?;
        // Whatever it printed, stop what it started if anything goes wrong below.
        let parsed = parse_start_output(&out.stdout);
        if !out.success {
            if let Ok((pids, _)) = parsed {
                drop(KubeApiServer {
                    pids,
                    kubeconfig: PathBuf::new(),
                    netns: None,
                    dir,
                });
            }
            return Err(KubeError::Start {
                status: out.status,
                stderr: out.stderr,
            });
        }
        let (pids, kubeconfig) = parsed?;
        Ok(KubeApiServer {
            pids,
            kubeconfig,
            netns: netns.map(str::to_string),
            dir,
        })
    }

    /// The admin kubeconfig (system:masters) the script wrote.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A scratch directory that lives as long as the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd's and kube-apiserver's PIDs.
    pub fn pids(&self) -> &[i32] {
        &self.pids
    }

    /// Runs `kubectl --kubeconfig K args` (in the server's namespace); its stdout.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        let program = kubectl_program();
        let mut cmd = command_in(self.netns.as_deref(), &program);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        let command = format!("kubectl {}", args.join(" "));
        let out = run(cmd, &command, stdin, EXEC_TIMEOUT)?;
        if out.success {
            Ok(out.stdout)
        } else {
            Err(KubeError::Kubectl {
                command,
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    /// `kubectl get KIND NAME -n NS -o json`; None when there is no such object.
    pub fn get_json(&self, kind: &str, ns: &str, name: &str) -> Result<Option<Value>> {
        match self.kubectl(&["get", kind, name, "-n", ns, "-o", "json"], None) {
            Ok(out) => serde_json::from_str(&out)
                .map(Some)
                .map_err(|e| KubeError::Json {
                    command: format!("kubectl get {kind} {name} -n {ns} -o json"),
                    detail: e.to_string(),
                }),
            Err(KubeError::Kubectl { stderr, .. }) if stderr.contains("(NotFound)") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `kubectl apply -f -` of a YAML stream.
    pub fn apply(&self, yaml: &str) -> Result<()> {
        self.kubectl(&["apply", "-f", "-"], Some(yaml)).map(drop)
    }

    /// Deletes a pod at once: a graceful delete would wait for a kubelet
    /// to confirm, and there is none.
    pub fn delete_pod(&self, ns: &str, name: &str) -> Result<()> {
        self.kubectl(
            &[
                "delete",
                "pod",
                name,
                "-n",
                ns,
                "--grace-period=0",
                "--force",
            ],
            None,
        )
        .map(drop)
    }

    /// Writes a pod's status as a kubelet would: Running, its IP, Ready or not.
    pub fn pod_status(&self, ns: &str, pod: &str, ip: &str, ready: bool) -> Result<()> {
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        }});
        self.kubectl(
            &[
                "patch",
                "pod",
                pod,
                "-n",
                ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        )
        .map(drop)
    }

    /// A TokenRequest for service account `ns/sa`, bound to pod `ns/pod`.
    pub fn bound_token(&self, ns: &str, sa: &str, pod: &str) -> Result<String> {
        let token = self.kubectl(
            &[
                "create",
                "token",
                sa,
                "-n",
                ns,
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                pod,
            ],
            None,
        )?;
        Ok(token.trim().to_string())
    }

    /// A TokenRequest for service account `ns/sa` bound to no object, for
    /// `audience`: what an operator makes for a VM (`kubectl create token
    /// <sa> -n <ns> --audience istio-ca`).
    pub fn token_for_audience(&self, ns: &str, sa: &str, audience: &str) -> Result<String> {
        let token = self.kubectl(
            &["create", "token", sa, "-n", ns, "--audience", audience],
            None,
        )?;
        Ok(token.trim().to_string())
    }

    /// The `status` of a TokenReview of `token`.
    pub fn token_review(&self, token: &str) -> Result<Value> {
        let body = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        });
        let command = "kubectl create -f - (TokenReview)";
        let out = self.kubectl(
            &["create", "-f", "-", "-o", "json"],
            Some(&body.to_string()),
        )?;
        let v: Value = serde_json::from_str(&out).map_err(|e| KubeError::Json {
            command: command.into(),
            detail: e.to_string(),
        })?;
        Ok(v["status"].clone())
    }

    /// Installs Istio's AuthorizationPolicy CRD and waits until it is served.
    pub fn install_authorization_policy_crd(&self) -> Result<()> {
        self.install_crds(
            &[authorization_policy_crd()?],
            &["authorizationpolicies.security.istio.io"],
        )
    }

    /// Installs Istio's WorkloadEntry CRD (VMs and hosts outside the
    /// cluster) and waits until it is served.
    pub fn install_workload_entry_crd(&self) -> Result<()> {
        self.install_crds(
            &[workload_entry_crd()?],
            &["workloadentries.networking.istio.io"],
        )
    }

    /// Installs Gateway API's Gateway, HTTPRoute and GRPCRoute CRDs and
    /// waits until they are served.
    pub fn install_gateway_api_crds(&self) -> Result<()> {
        let names: Vec<String> = GATEWAY_API_KINDS
            .iter()
            .map(|k| format!("{k}.gateway.networking.k8s.io"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.install_crds(&gateway_api_crds()?, &names)
    }

    /// Installs Trellis's TrafficPolicy CRD (deploy/daemonset/base/crds/) and waits
    /// until it is served.
    pub fn install_traffic_policy_crd(&self) -> Result<()> {
        self.install_crds(
            &[TRAFFIC_POLICY_CRD.to_string()],
            &["trafficpolicies.trellis.dev"],
        )
    }

    /// Creates the CRDs, waits until each is Established and then until
    /// its kind is served (a just-established CRD may still refuse objects).
    fn install_crds(&self, crds: &[String], names: &[&str]) -> Result<()> {
        // create, not apply: the large CRDs overflow apply's annotation.
        self.kubectl(&["create", "-f", "-"], Some(&stream_of(crds)))?;
        for name in names {
            self.kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    &format!("crd/{name}"),
                    "--timeout=30s",
                ],
                None,
            )?;
            let plural = name.split('.').next().unwrap_or(name);
            let mut last = None;
            let served = blocking(|| {
                wait_for(
                    Duration::from_secs(20),
                    &format!("the kind {name} to be served"),
                    || match self.kubectl(&["get", plural, "-A"], None) {
                        Ok(_) => Some(()),
                        Err(e) => {
                            last = Some(e);
                            None
                        }
                    },
                )
            });
            if served.is_err() {
                if let Some(e) = last {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// YAML documents as one stream.
fn stream_of(docs: &[String]) -> String {
    docs.iter()
        .map(|d| d.trim_start_matches("---\n").trim_end())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pids, kubeconfig) parsed, or words of the error.
    type Want = Result<(Vec<i32>, &'static str), &'static str>;

    #[test]
    fn start_output_is_parsed_or_refused_with_what_is_missing() {
        let cases: &[(&str, Want)] = &[
            (
                "PIDS=10 11\nKUBECONFIG=/tmp/k/kubeconfig\n",
                Ok((vec![10, 11], "/tmp/k/kubeconfig")),
            ),
            ("noise\nKUBECONFIG=/k\nPIDS=1 2\n", Ok((vec![1, 2], "/k"))),
            ("KUBECONFIG=/k\n", Err("PIDS=")),
            ("PIDS=1\nKUBECONFIG=/k\n", Err("PIDS=")),
            ("PIDS=1 x\nKUBECONFIG=/k\n", Err("PIDS=")),
            ("PIDS=1 2\n", Err("KUBECONFIG=")),
        ];
        for (stdout, want) in cases {
            let got = parse_start_output(stdout);
            match (got, want) {
                (Ok((pids, k)), Ok((wp, wk))) => {
                    assert_eq!((&pids, k.as_path()), (wp, Path::new(wk)), "{stdout:?}")
                }
                (Err(e), Err(words)) => {
                    assert!(e.to_string().contains(words), "{stdout:?}: {e}")
                }
                (got, want) => panic!("{stdout:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
