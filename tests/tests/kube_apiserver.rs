//! The real Kubernetes API server the control-plane tests will run against:
//! built from k8s.io/kubernetes at the version pinned in
//! tests/kube/versions.env (by tests/kube/install.sh, which `tests/run`
//! calls), started on loopback by tests/kube/start-local.sh with etcd and no
//! kubelet. This proves what the controller's Kubernetes mode will rely on:
//! the server comes up ready, and it answers TokenReviews, the check the CA
//! and xDS server make of a proxy's bearer token.
//!
//! Needs $KUBE_APISERVER and $ETCD (tests/run exports them). Without them
//! the test says so and passes, unless TRELLIS_REQUIRE_KUBE=1 (CI) makes a
//! missing server a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Stops the API server, then etcd, by the pids the start script printed.
/// In that order: an API server whose etcd went first retries for minutes.
struct Running {
    pids: Vec<libc::pid_t>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for &pid in self.pids.iter().rev() {
            // SAFETY: kill on pids the start script started for this test.
            // They are not our children (the script exits and they are
            // reparented), so there is nothing to waitpid: poll, bounded at
            // 2 s, until the pid is gone so the next one is not stopped early.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                for _ in 0..200 {
                    if libc::kill(pid, 0) != 0 {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        }
    }
}

fn binaries_present() -> bool {
    let set = |v: &str| std::env::var_os(v).is_some_and(|p| Path::new(&p).is_file());
    if set("KUBE_APISERVER") && set("ETCD") {
        return true;
    }
    if std::env::var("TRELLIS_REQUIRE_KUBE").as_deref() == Ok("1") {
        panic!(
            "TRELLIS_REQUIRE_KUBE=1 but $KUBE_APISERVER and $ETCD do not name binaries; \
             run tests/kube/install.sh (tests/run does)"
        );
    }
    eprintln!("skipping: set KUBE_APISERVER and ETCD (tests/kube/install.sh prints them)");
    false
}

fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .expect("write to kubectl");
    }
    let out = child.wait_with_output().expect("kubectl finishes");
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn token_review(kubeconfig: &Path, token: &str) -> Value {
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    });
    let out = kubectl(
        kubeconfig,
        &["create", "-f", "-", "-o", "json"],
        Some(&body.to_string()),
    );
    let v: Value = serde_json::from_str(&out).expect("TokenReview answer is JSON");
    v["status"].clone()
}

#[test]
fn apiserver_starts_on_loopback_and_reviews_tokens() {
    if !binaries_present() {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kube/start-local.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(tmp.path().join("kube"))
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
    let _running = Running { pids: pids.clone() };
    assert!(
        out.status.success(),
        "start-local.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(pids.len(), 2, "etcd and kube-apiserver pids: {stdout}");
    let kubeconfig = kubeconfig.expect("the script names its kubeconfig");

    let ns = kubectl(
        &kubeconfig,
        &["get", "namespace", "default", "-o", "json"],
        None,
    );
    let ns: Value = serde_json::from_str(&ns).expect("namespace JSON");
    assert_eq!(ns["metadata"]["name"], "default");

    kubectl(
        &kubeconfig,
        &["create", "serviceaccount", "probe", "-n", "default"],
        None,
    );
    let token = kubectl(
        &kubeconfig,
        &["create", "token", "probe", "-n", "default"],
        None,
    );
    let status = token_review(&kubeconfig, token.trim());
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"], "system:serviceaccount:default:probe",
        "{status}"
    );

    let status = token_review(&kubeconfig, "not-a-token");
    assert_ne!(status["authenticated"], true, "{status}");
}
