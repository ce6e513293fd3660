//! The kube-apiserver harness shared by the Kubernetes-mode tests: etcd and
//! a real kube-apiserver per test (tests/kube/start-local.sh, no kubelet:
//! tests write pod status themselves), kubectl against it, CRDs from the Go
//! module cache, and the controller's source running into a watch channel.
//!
//! Needs $KUBE_APISERVER and $ETCD (tests/kube/install.sh prints them) and
//! kubectl. Without them each test says so and passes, unless
//! TRELLIS_REQUIRE_KUBE=1 makes that a failure.

// Each test binary uses its own part of the harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use trellis_api::config::LocalConfig;
use trellis_controller::kube::{ApiConfig, Client, KubeSource, SourceOptions, DEFAULT_RESOURCES};
use trellis_controller::objects::{translate, ObjectStore, TranslateOptions};

/// A hang guard for each wait, not a performance bound.
pub const DEADLINE: Duration = Duration::from_secs(20);

// ---- the API server -------------------------------------------------------

/// etcd and kube-apiserver, stopped by pid (API server first) on drop.
pub struct Kube {
    pids: Vec<i32>,
    pub kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Kube {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            // SAFETY: kill on the pids start-local.sh started for this test.
            // They are not our children, so poll (bounded) until gone.
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

pub fn binaries_present() -> bool {
    let set = |v: &str| std::env::var_os(v).is_some_and(|p| Path::new(&p).is_file());
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if set("KUBE_APISERVER") && set("ETCD") && kubectl {
        return true;
    }
    if std::env::var("TRELLIS_REQUIRE_KUBE").as_deref() == Ok("1") {
        panic!("TRELLIS_REQUIRE_KUBE=1 but $KUBE_APISERVER and $ETCD do not name binaries or kubectl is missing; run tests/kube/install.sh");
    }
    eprintln!("skipping: set KUBE_APISERVER and ETCD (tests/kube/install.sh prints them) and install kubectl");
    false
}

impl Kube {
    pub fn start() -> Option<Kube> {
        if !binaries_present() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/kube/start-local.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg(dir.path().join("kube"))
            .stderr(Stdio::piped())
            .output()
            .expect("start script runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut pids = Vec::new();
        let mut kubeconfig = None;
        for line in stdout.lines() {
            if let Some(p) = line.strip_prefix("PIDS=") {
                pids = p
                    .split_whitespace()
                    .map(|p| p.parse().expect("pid"))
                    .collect();
            } else if let Some(k) = line.strip_prefix("KUBECONFIG=") {
                kubeconfig = Some(PathBuf::from(k));
            }
        }
        let kube = Kube {
            pids,
            kubeconfig: kubeconfig.unwrap_or_default(),
            _dir: dir,
        };
        assert!(
            out.status.success(),
            "start-local.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(kube.pids.len(), 2, "etcd and kube-apiserver pids: {stdout}");
        Some(kube)
    }

    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        tokio::task::block_in_place(|| kubectl_at(&self.kubeconfig, args, stdin))
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_kubectl(args, stdin)
            .unwrap_or_else(|e| panic!("kubectl {args:?} failed: {e}"))
    }

    pub fn apply(&self, yaml: &str) {
        self.kubectl(&["apply", "-f", "-"], Some(yaml));
    }

    pub fn pod_status(&self, ns: &str, pod: &str, ip: &str, ready: bool) {
        let status = serde_json::json!({"status": {
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
                &status.to_string(),
            ],
            None,
        );
    }

    /// A token for service account `ns/sa`, bound to pod `ns/pod`.
    pub fn bound_token(&self, ns: &str, sa: &str, pod: &str) -> String {
        self.kubectl(
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
        )
    }

    pub fn client(&self) -> Client {
        Client::new(ApiConfig::from_kubeconfig(&self.kubeconfig).expect("kubeconfig"))
    }
}

pub fn kubectl_at(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The directory of Go module `module@version`, downloaded through the Go
/// module proxy into the module cache if needed, or why it is unavailable.
pub fn go_module_dir(module: &str) -> Result<PathBuf, String> {
    let out = Command::new("go")
        .args(["mod", "download", "-json", module])
        .current_dir(std::env::temp_dir())
        .env("GOFLAGS", "-mod=mod")
        .output()
        .map_err(|e| format!("go: {e}"))?;
    let info: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("go mod download: {e}"))?;
    info["Dir"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| format!("go mod download: {info}"))
}

/// Whether a part of a test that needs something optional (a Go module)
/// may be skipped: not when TRELLIS_REQUIRE_KUBE=1, as in CI.
pub fn may_skip(what: &str, why: &str) -> bool {
    if std::env::var("TRELLIS_REQUIRE_KUBE").as_deref() == Ok("1") {
        panic!("TRELLIS_REQUIRE_KUBE=1 but {what} is unavailable: {why}");
    }
    eprintln!("skipping {what}: {why}");
    true
}

// ---- the source -----------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub config: LocalConfig,
    /// Every current store problem, as the operator reads it.
    pub errors: Vec<String>,
    /// What translation left out, and why.
    pub translation_errors: Vec<String>,
}

pub fn fast() -> SourceOptions {
    SourceOptions {
        missing_crd_retry: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        watch_timeout: Duration::from_secs(60),
        batch_window: Duration::from_millis(20),
    }
}

/// Runs the source; each batch's translation lands in the receiver.
pub fn run_source(client: Client) -> (watch::Receiver<Snapshot>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Snapshot::default());
    let source = KubeSource::with_resources(client, DEFAULT_RESOURCES.to_vec(), fast());
    let opts = TranslateOptions {
        istio_labels: true,
        ..Default::default()
    };
    let task = tokio::spawn(source.run(ObjectStore::new(), move |store, _changes| {
        let t = translate(store, &opts);
        tx.send_replace(Snapshot {
            config: t.config,
            errors: store.errors().iter().map(ToString::to_string).collect(),
            translation_errors: t.errors.iter().map(ToString::to_string).collect(),
        });
    }));
    (rx, task)
}

pub async fn wait_for(
    rx: &mut watch::Receiver<Snapshot>,
    what: &str,
    ok: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let waited = tokio::time::timeout(DEADLINE, rx.wait_for(|s| ok(s)))
        .await
        .map(|r| r.map(|s| s.clone()));
    match waited {
        Ok(Ok(s)) => s,
        _ => panic!(
            "not within {DEADLINE:?}: {what}; last snapshot: {:#?}",
            *rx.borrow()
        ),
    }
}

pub fn workload<'a>(
    s: &'a Snapshot,
    ns: &str,
    name: &str,
) -> Option<&'a trellis_api::config::Workload> {
    s.config
        .workloads
        .iter()
        .find(|w| w.namespace == ns && w.name == name)
}

pub fn pod_yaml(ns: &str, name: &str, app: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
         spec:\n  nodeName: {node}\n  containers: [{{name: c, image: registry.invalid/app}}]\n"
    )
}

pub fn namespace_yaml(ns: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: default, namespace: {ns}}}\n"
    )
}
