//! The CNI agent in Kubernetes mode, against a real kube-apiserver and
//! etcd: enrollment follows the namespace's `trellis.dev/dataplane-mode`
//! label (read at ADD, so a pod made right after the label is enrolled),
//! a pod can opt out, the service account reaches ZDS's `WorkloadInfo`, an
//! API failure is a CNI error the operator can act on. The agent's
//! installer chains `trellis-cni` into the node's conflist, and the
//! runtime then runs exactly what was installed (Debian's `bridge` +
//! `host-local`, then the copied `trellis-cni`). At exit the entry stays
//! while the agent's DaemonSet exists (an update) and goes when it is
//! deleted (an uninstall).
//!
//! Needs root, the reference plugins, the API server binaries, and
//! `cargo build -p trellis-cni -p trellis-node-proxy`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use trellis_e2e::cluster::ClusterFiles;
use trellis_e2e::cni_kit::{workspace_bin, Agent, PluginRun, PodNetns, Runtime, Sandbox};
use trellis_e2e::kube::{require_kube, KubeApiServer};
use trellis_e2e::manifests::{self, PodDef, AMBIENT_LABEL};
use trellis_e2e::{wait_until, Topology};

const T: Duration = Duration::from_secs(10);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 200, last)
}

fn pod_def(name: &str, labels: &[(&str, &str)]) -> PodDef {
    PodDef {
        namespace: "demo".into(),
        name: name.into(),
        service_account: "web".into(),
        node: "node1".into(),
        ip: "198.18.200.1".parse().unwrap(),
        app: name.into(),
        gateway: None,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The node proxy's config: every demo pod, so only enrollment decides.
fn mesh_config(names: &[&str]) -> String {
    let mut s = String::from("workloads:\n");
    for (i, name) in names.iter().enumerate() {
        s += &format!(
            "  - uid: Kubernetes//Pod/demo/{name}\n    name: {name}\n    namespace: demo\n    serviceAccount: web\n    addresses: [{}]\n    node: node1\n    protocol: HBONE\n",
            ip(10 + i as u8)
        );
    }
    s
}

fn uid_of(api: &KubeApiServer, name: &str) -> String {
    api.kubectl(
        &[
            "get",
            "pod",
            name,
            "-n",
            "demo",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    )
    .unwrap()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

/// The trellis-cni entries of a conflist.
fn entries(conflist: &Value) -> usize {
    conflist["plugins"].as_array().map_or(0, |l| {
        l.iter().filter(|p| p["type"] == "trellis-cni").count()
    })
}

/// The pods the node proxy serves (ZDS uids).
fn served(p: &trellis_e2e::cluster::NodeProxy) -> Vec<String> {
    let (status, body) = p.admin("GET", "/pods", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some(p["uid"].as_str()?.to_string()))
        .collect()
}

/// The last run (trellis-cni's) of an ADD.
fn last(runs: &[PluginRun]) -> &PluginRun {
    runs.last().expect("at least one plugin ran")
}

fn metric(agent: &Agent, line_start: &str) -> f64 {
    let (status, body) = agent.admin("/metrics").unwrap();
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
}

#[test]
fn agent_enrolls_by_namespace_label_and_installs_the_plugin() {
    if !trellis_e2e::require_root() || !require_kube() {
        return;
    }
    let api = KubeApiServer::start(None, None).expect("the API server starts");
    let kubeconfig = api.kubeconfig().display().to_string();
    let names = ["early", "late", "optout", "ghost"];
    api.apply(&manifests::stream(&[
        manifests::namespace("demo", None),
        manifests::service_account("demo", "web"),
        manifests::pod(&pod_def("early", &[]), false),
    ]))
    .unwrap();

    let topo = Topology::builder().node("node1").build().unwrap();
    let files = ClusterFiles::new().unwrap();
    let ca = files.ca("ca").unwrap();
    let config = files
        .write_config("mesh.yaml", &mesh_config(&names))
        .unwrap();

    // The node's CNI dirs, with the primary network's config only.
    let dir = files.dir.path();
    let (bin_dir, conf_dir) = (dir.join("cni-bin"), dir.join("net.d"));
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::create_dir_all(&conf_dir).unwrap();
    let mut rt = Runtime::new(topo.netns_name("node1").unwrap(), json!({})).unwrap();
    let mut primary = rt.conflist.clone();
    primary["plugins"].as_array_mut().unwrap().pop();
    let conflist_path = conf_dir.join("10-trellis-e2e.conflist");
    std::fs::write(&conflist_path, primary.to_string()).unwrap();

    let plugin = workspace_bin("trellis-cni").unwrap().display().to_string();
    let (bin_s, conf_s) = (
        bin_dir.display().to_string(),
        conf_dir.display().to_string(),
    );
    let agent_args = [
        "--kubeconfig",
        &kubeconfig,
        "--install-cni",
        "--cni-bin-dir",
        &bin_s,
        "--cni-conf-dir",
        &conf_s,
        "--cni-plugin",
        &plugin,
        "--daemonset",
        "trellis-system/trellis-cni-agent",
        "--node-name",
        "node1",
    ];
    let mut agent = Agent::start_with(dir, &agent_args).unwrap();
    wait_until(T, "the agent is ready (plugin installed)", || {
        agent.admin("/healthz/ready").is_ok_and(|(s, _)| s == 200)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let installed = read_json(&conflist_path);
    assert_eq!(entries(&installed), 1, "{installed}");
    assert_eq!(
        installed["plugins"].as_array().unwrap().last().unwrap()["agentSocket"],
        agent.plugin_socket.display().to_string()
    );
    assert!(bin_dir.join("trellis-cni").is_file());
    // From here the runtime runs what the installer put on the node.
    rt.use_installed(installed, &bin_dir);

    let proxy = agent
        .node_proxy(&topo, &files, "node1", &config, &ca)
        .unwrap();
    wait_until(T, "the node proxy connects to the agent", || {
        metric(&agent, "trellis_cni_node_proxy_connected") == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let sandbox = |name: &str, uid: String, last_octet: u8| {
        let netns = PodNetns::create(topo.prefix(), name).unwrap();
        let sb = Sandbox {
            container_id: format!("sandbox-{name}"),
            netns: netns.path().to_path_buf(),
            namespace: "demo".into(),
            name: name.into(),
            uid,
            ip: ip(last_octet),
        };
        (netns, sb)
    };
    let add = |sb: &Sandbox| {
        rt.loopback(sb).unwrap();
        rt.add(sb).unwrap()
    };

    // 1. The namespace is not labelled: the pod is left alone.
    let (early_ns, early) = sandbox("early", uid_of(&api, "early"), 10);
    let runs = add(&early);
    assert!(last(&runs).success, "{runs:?}");
    assert!(!early_ns.has_capture_rules().unwrap());

    // 2. Label the namespace, then make a pod: enrolled and captured
    //    before ADD returns, with its service account from the API.
    api.kubectl(
        &[
            "label",
            "namespace",
            "demo",
            &format!("{AMBIENT_LABEL}=ambient"),
        ],
        None,
    )
    .unwrap();
    api.apply(&manifests::pod(&pod_def("late", &[]), false))
        .unwrap();
    let (late_ns, late) = sandbox("late", uid_of(&api, "late"), 11);
    let runs = add(&late);
    assert!(last(&runs).success, "{runs:?}\n{}", agent.log());
    assert!(late_ns.has_capture_rules().unwrap());
    assert!(
        served(&proxy).contains(&late.uid),
        "the node proxy serves the pod"
    );
    let state = read_json(&dir.join("agent-state.json"));
    let saved = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["pod"])
        .find(|p| p["name"] == "late")
        .unwrap_or_else(|| panic!("late not saved: {state}"));
    assert_eq!(saved["serviceAccount"], "web", "{state}");
    // The pod that was already running when the namespace got its label
    // is enrolled too, without a restart.
    wait_until(T, "the running pod is captured after the label", || {
        early_ns.has_capture_rules().unwrap() && served(&proxy).contains(&early.uid)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // 3. A pod labelled none opts out of its ambient namespace.
    api.apply(&manifests::pod(
        &pod_def("optout", &[(AMBIENT_LABEL, "none")]),
        false,
    ))
    .unwrap();
    let (optout_ns, optout) = sandbox("optout", uid_of(&api, "optout"), 12);
    assert!(last(&add(&optout)).success);
    assert!(!optout_ns.has_capture_rules().unwrap());

    // 4. A pod the API server does not have: a CNI error naming the pod.
    let (_ghost_ns, ghost) = sandbox("ghost", "0f5e8a52-3c1b-4a8e-9d7e-2b6a1c9f0e11".into(), 13);
    let runs = add(&ghost);
    let err = last(&runs).json().unwrap();
    assert!(!last(&runs).success);
    assert_eq!(err["code"], 104, "{err}");
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("demo/ghost") && msg.contains("404"), "{msg}");

    // 5. A sandbox whose uid is not the pod's (deleted and made again).
    let (_stale_ns, stale) = sandbox("stale", "aaaaaaaa-3c1b-4a8e-9d7e-2b6a1c9f0e11".into(), 14);
    let stale = Sandbox {
        name: "late".into(),
        ..stale
    };
    let runs = add(&stale);
    let err = last(&runs).json().unwrap();
    assert_eq!(err["code"], 104, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("deleted and made again"),
        "{err}"
    );

    for (outcome, want) in [("captured", 2.0), ("not_enrolled", 2.0), ("failed", 2.0)] {
        let line = format!("trellis_cni_add_total{{outcome=\"{outcome}\"}}");
        assert_eq!(metric(&agent, &line), want, "{outcome}");
    }
    assert_eq!(metric(&agent, "trellis_cni_enrolled_pods"), 2.0);

    // The label goes: both running pods are released and their rules
    // removed; it comes back: both are captured again.
    let label = |value: &str| {
        api.kubectl(
            &[
                "label",
                "--overwrite",
                "namespace",
                "demo",
                &format!("{AMBIENT_LABEL}{value}"),
            ],
            None,
        )
        .unwrap()
    };
    label("-");
    wait_until(T, "both pods released", || {
        !early_ns.has_capture_rules().unwrap()
            && !late_ns.has_capture_rules().unwrap()
            && served(&proxy).is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(metric(&agent, "trellis_cni_enrolled_pods"), 0.0);
    label("=ambient");
    wait_until(T, "both pods captured again", || {
        early_ns.has_capture_rules().unwrap()
            && late_ns.has_capture_rules().unwrap()
            && served(&proxy).len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert!(
        !optout_ns.has_capture_rules().unwrap(),
        "the opted-out pod stays out"
    );

    // 6. Exit during an update: the DaemonSet exists, the entry stays.
    api.apply(DAEMONSET).unwrap();
    assert!(agent.stop().is_some_and(|s| s.success()), "{}", agent.log());
    assert_eq!(entries(&read_json(&conflist_path)), 1, "{}", agent.log());

    // 7. The primary CNI rewrites its config; a new agent repairs it.
    std::fs::write(&conflist_path, primary.to_string()).unwrap();
    let mut agent = Agent::start_with(dir, &agent_args).unwrap();
    wait_until(T, "the entry is back", || {
        entries(&read_json(&conflist_path)) == 1
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // The restarted agent still knows the enrolled pods.
    assert_eq!(metric(&agent, "trellis_cni_enrolled_pods"), 2.0);

    // 8. Exit after the DaemonSet is deleted: an uninstall, the entry goes.
    api.kubectl(
        &[
            "delete",
            "daemonset",
            "trellis-cni-agent",
            "-n",
            "trellis-system",
        ],
        None,
    )
    .unwrap();
    assert!(agent.stop().is_some_and(|s| s.success()), "{}", agent.log());
    let after = read_json(&conflist_path);
    assert_eq!(entries(&after), 0, "{after}\n{}", agent.log());
    assert_eq!(
        after["plugins"], primary["plugins"],
        "the primary network is untouched"
    );
    drop((early_ns, late_ns, optout_ns));
}

/// The agent's DaemonSet as the installer's exit check reads it.
const DAEMONSET: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: trellis-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: trellis-cni-agent
  namespace: trellis-system
spec:
  selector:
    matchLabels: {app: trellis-cni-agent}
  template:
    metadata:
      labels: {app: trellis-cni-agent}
    spec:
      containers:
        - name: agent
          image: registry.invalid/trellis-cni-agent
";
