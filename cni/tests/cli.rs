//! The two binaries as processes, without root: the plugin on bad input and
//! VERSION, the agent's start-up errors, and plugin and agent together for
//! the paths that need no network namespace of their own (a pod not in the
//! mesh; an enrolled pod with no node proxy). The full chain with capture
//! is tests/tests/e2e_cni.rs (root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PLUGIN: &str = env!("CARGO_BIN_EXE_trellis-cni");
const AGENT: &str = env!("CARGO_BIN_EXE_trellis-cni-agent");

fn plugin(env: &[(&str, &str)], stdin: &str) -> (Output, Value) {
    let mut child = Command::new(PLUGIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, v)
}

fn add_env<'a>(netns: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
        ("CNI_ARGS", args),
    ]
}

fn conf(socket: &Path, extra: Value) -> String {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "trellis-cni",
        "agentSocket": socket,
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "198.18.0.5/24", "interface": 0}],
        },
    });
    if let (Some(o), Value::Object(e)) = (c.as_object_mut(), extra) {
        o.extend(e);
    }
    c.to_string()
}

struct AgentProc {
    child: Child,
    plugin_socket: PathBuf,
}

impl AgentProc {
    fn start(dir: &Path, namespaces: &[&str]) -> AgentProc {
        let plugin_socket = dir.join("plugin.sock");
        let mut cmd = Command::new(AGENT);
        cmd.arg("--zds-socket")
            .arg(dir.join("zds.sock"))
            .arg("--plugin-socket")
            .arg(&plugin_socket)
            .arg("--state-file")
            .arg(dir.join("state.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for ns in namespaces {
            cmd.args(["--ambient-namespace", ns]);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !plugin_socket.exists() {
            assert!(child.try_wait().unwrap().is_none(), "agent exited at start");
            assert!(Instant::now() < deadline, "agent socket not there in 10s");
            std::thread::sleep(Duration::from_millis(10));
        }
        AgentProc {
            child,
            plugin_socket,
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn version_lists_the_supported_versions() {
    let (out, v) = plugin(&[("CNI_COMMAND", "VERSION")], "");
    assert!(out.status.success());
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
    );
}

#[test]
fn bad_input_is_a_cni_error_with_a_code() {
    let sock = Path::new("/nonexistent/trellis.sock");
    let ok_args = "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p";
    // (case, env, stdin, code, fragment of msg)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, String, u64, &'a str);
    let cases: Vec<Case> = vec![
        (
            "no env at all",
            vec![],
            conf(sock, json!({})),
            4,
            "CNI_COMMAND is not set",
        ),
        (
            "stdin is not JSON",
            add_env("/x", ok_args),
            "cniVersion: 1.0.0".into(),
            6,
            "cannot parse the network config",
        ),
        (
            "a field of the wrong type is named",
            add_env("/x", ok_args),
            conf(sock, json!({"captureTimeoutMs": "soon"})),
            6,
            "captureTimeoutMs",
        ),
        (
            "agent socket missing, fail-closed",
            add_env("/x", ok_args),
            conf(sock, json!({})),
            100,
            "/nonexistent/trellis.sock",
        ),
    ];
    for (name, env, stdin, code, frag) in cases {
        let (out, v) = plugin(&env, &stdin);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert_eq!(v["code"], code, "{name}: {v}");
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(frag), "{name}: {msg:?} lacks {frag:?}");
    }
}

#[test]
fn a_sandbox_that_is_not_a_pod_needs_no_agent() {
    let stdin = conf(Path::new("/nonexistent/trellis.sock"), json!({}));
    let (out, v) = plugin(&add_env("/x", "IgnoreUnknown=1"), &stdin);
    assert!(out.status.success(), "{v}");
    let sent: Value = serde_json::from_str(&stdin).unwrap();
    assert_eq!(v, sent["prevResult"]);
}

#[test]
fn plugin_and_agent_without_a_node_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["demo"]);
    let own_netns = "/proc/self/ns/net";

    // Not enrolled: the agent says so, the result passes through.
    let stdin = conf(&agent.plugin_socket, json!({}));
    let (out, v) = plugin(
        &add_env(
            own_netns,
            "K8S_POD_NAMESPACE=web;K8S_POD_NAME=a;K8S_POD_UID=u-a",
        ),
        &stdin,
    );
    assert!(out.status.success(), "{v}");
    let sent: Value = serde_json::from_str(&stdin).unwrap();
    assert_eq!(v, sent["prevResult"], "untouched");

    // Enrolled, no node proxy: fail-closed with 101 after the timeout...
    let args = "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=b;K8S_POD_UID=u-b";
    let stdin = conf(&agent.plugin_socket, json!({"captureTimeoutMs": 300}));
    let (out, v) = plugin(&add_env(own_netns, args), &stdin);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["code"], 101, "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("trellis-node-proxy"),
        "{v}"
    );

    // ...or the result, with failOpen.
    let stdin = conf(
        &agent.plugin_socket,
        json!({"captureTimeoutMs": 300, "failOpen": true}),
    );
    let (out, v) = plugin(&add_env(own_netns, args), &stdin);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["ips"][0]["address"], "198.18.0.5/24");

    // DEL succeeds and prints nothing.
    let del: Vec<(&str, &str)> = add_env(own_netns, args)
        .into_iter()
        .map(|(k, v)| {
            if k == "CNI_COMMAND" {
                (k, "DEL")
            } else {
                (k, v)
            }
        })
        .collect();
    let stdin = conf(&agent.plugin_socket, json!({}));
    let (out, _) = plugin(&del, &stdin);
    assert!(out.status.success());
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn agent_start_errors_name_the_socket() {
    let out = Command::new(AGENT)
        .args(["--zds-socket", "/proc/no-such-dir/zds.sock"])
        .args(["--state-file", "/proc/no-such-dir/state.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/no-such-dir/zds.sock"), "{err}");
    let out = Command::new(AGENT)
        .args(["--ack-timeout", "soon"])
        .args(["--state-file", "/proc/no-such-dir/state.json"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ack-timeout"));
}
