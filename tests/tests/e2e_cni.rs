//! The CNI chain as a container runtime runs it: Debian's `bridge` +
//! `host-local` (and `loopback` for lo), then the real `trellis-cni`
//! binary, talking to a real `trellis-cni-agent`, which hands pods to a
//! real shared-mode `trellis-node-proxy` over ZDS. One node netns, pods in
//! 198.18.200.0/24 on the node's CNI bridge, no route out. Restarts of
//! the node proxy and of the agent are part of the story.
//!
//! Needs `cargo build -p trellis-cni -p trellis-node-proxy` first (`cargo
//! test --workspace` builds them).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{json, Value};
use trellis_e2e::cluster::{ClusterFiles, NodeProxy};
use trellis_e2e::cni_kit::{Agent, PluginRun, PodNetns, Runtime, Sandbox};
use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::{connect, echo_roundtrip, wait_until, TestServer, Topology};

const T: Duration = Duration::from_secs(10);
const OPENED: &str = "istio_tcp_connections_opened_total";

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 200, last)
}

/// The proxy's config: the mesh pods by their Kubernetes workload uid.
fn mesh_config(pods: &[(&str, &str, Ipv4Addr)]) -> String {
    let mut s = String::from("workloads:\n");
    for (ns, name, addr) in pods {
        s += &format!(
            "  - uid: Kubernetes//Pod/{ns}/{name}\n    name: {name}\n    namespace: {ns}\n    serviceAccount: {name}\n    addresses: [{addr}]\n    node: node1\n    protocol: HBONE\n"
        );
    }
    s
}

/// A node with its runtime, agent and files; the proxy is started apart.
struct Node {
    topo: Topology,
    files: ClusterFiles,
    ca: std::path::PathBuf,
    config: std::path::PathBuf,
    agent: Agent,
}

impl Node {
    fn new(mesh: &[(&str, &str, Ipv4Addr)]) -> Node {
        let topo = Topology::builder().node("node1").build().unwrap();
        let files = ClusterFiles::new().unwrap();
        let ca = files.ca("ca").unwrap();
        let config = files.write_config("mesh.yaml", &mesh_config(mesh)).unwrap();
        let agent = Agent::start(files.dir.path(), &["demo"]).unwrap();
        Node {
            topo,
            files,
            ca,
            config,
            agent,
        }
    }

    fn runtime(&self, trellis: Value) -> Runtime {
        let mut conf = json!({ "agentSocket": self.agent.plugin_socket });
        if let (Some(c), Value::Object(extra)) = (conf.as_object_mut(), trellis) {
            c.extend(extra);
        }
        Runtime::new(self.topo.netns_name("node1").unwrap(), conf).unwrap()
    }

    fn proxy(&self) -> NodeProxy {
        self.agent
            .node_proxy(&self.topo, &self.files, "node1", &self.config, &self.ca)
            .unwrap()
    }

    /// An empty pod netns and its sandbox.
    fn sandbox(&self, ns: &str, name: &str, addr: Ipv4Addr) -> (PodNetns, Sandbox) {
        let netns = PodNetns::create(self.topo.prefix(), name).unwrap();
        let sb = Sandbox {
            container_id: format!("sandbox-{name}"),
            netns: netns.path().to_path_buf(),
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            ip: addr,
        };
        (netns, sb)
    }
}

/// Runs loopback and the list's ADD; returns the runs.
fn add(rt: &Runtime, sb: &Sandbox) -> Vec<PluginRun> {
    rt.loopback(sb).unwrap();
    rt.add(sb).unwrap()
}

/// ADD went through every plugin, and trellis-cni printed bridge's result
/// untouched. Returns that result (what the runtime caches).
fn assert_passthrough(runs: &[PluginRun]) -> Value {
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in runs {
        assert!(r.success, "{} failed: {} {}", r.plugin, r.stdout, r.stderr);
    }
    let bridge = runs[0].json().unwrap();
    let ours = runs[1].json().unwrap();
    assert_eq!(ours, bridge, "trellis-cni must pass prevResult through");
    bridge
}

/// The pods the node proxy serves, by ZDS uid.
fn served(p: &NodeProxy) -> Vec<String> {
    let (status, body) = p.admin("GET", "/pods", "").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut uids: Vec<String> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["origin"], "zds", "{p}");
            p["uid"].as_str().unwrap().to_string()
        })
        .collect();
    uids.sort();
    uids
}

fn tunnelled(p: &NodeProxy) -> f64 {
    p.metric(
        OPENED,
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

fn addr(a: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(a), port)
}

#[test]
fn chain_enrolls_captures_the_first_connection_survives_a_proxy_restart_and_releases() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mesh = [("demo", "client", ip(10)), ("demo", "server", ip(11))];
    let mut node = Node::new(&mesh);
    let proxy = node.proxy();
    let rt = node.runtime(json!({ "captureTimeoutMs": 10000 }));

    let (server_ns, server_sb) = node.sandbox("demo", "server", ip(11));
    assert_passthrough(&add(&rt, &server_sb));
    let (client_ns, client_sb) = node.sandbox("demo", "client", ip(10));
    let client_result = assert_passthrough(&add(&rt, &client_sb));
    assert_eq!(
        client_result["ips"][0]["address"], "198.18.200.10/24",
        "host-local gave the asked address"
    );
    // ADD returned: both pods are served and captured already.
    assert_eq!(served(&proxy), ["uid-client", "uid-server"]);
    assert!(client_ns.has_capture_rules().unwrap());
    assert!(server_ns.has_capture_rules().unwrap());

    let _echo = TestServer::echo(Some(&server_ns.netns().unwrap()), addr(ip(11), 8080)).unwrap();
    let client = client_ns.netns().unwrap();
    // The app's very first connection goes through the mesh.
    let back = echo_roundtrip(Some(&client), addr(ip(11), 8080), b"first", T).unwrap();
    assert_eq!(back, b"first");
    wait_until(T, "the first connection counted as mutual TLS", || {
        tunnelled(&proxy) == 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.metrics_text().unwrap_or_default()));

    // CHECK through the list agrees.
    for r in rt.check(&client_sb, &client_result).unwrap() {
        assert!(r.success, "CHECK {}: {} {}", r.plugin, r.stdout, r.stderr);
    }

    // A pod of a namespace that is not enrolled: untouched result, no capture.
    let (web_ns, web_sb) = node.sandbox("web", "other", ip(12));
    assert_passthrough(&add(&rt, &web_sb));
    assert!(!web_ns.has_capture_rules().unwrap());
    assert_eq!(served(&proxy), ["uid-client", "uid-server"]);

    // The node proxy restarts. The agent's rules stay meanwhile, so the
    // client cannot talk around the mesh while its proxy is away.
    let mut proxy = proxy;
    proxy.sigterm();
    proxy.wait_exit(T).expect("proxy exits on SIGTERM");
    assert!(client_ns.has_capture_rules().unwrap());
    assert!(
        echo_roundtrip(
            Some(&client),
            addr(ip(11), 8080),
            b"away",
            Duration::from_secs(2)
        )
        .is_err(),
        "with the proxy away the captured connection must fail, not go out plain"
    );
    let proxy = node.proxy();
    wait_until(
        T,
        "the new proxy serves both pods from the snapshot",
        || served(&proxy) == ["uid-client", "uid-server"],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", proxy.log(), node.agent.log()));
    let back = echo_roundtrip(Some(&client), addr(ip(11), 8080), b"again", T).unwrap();
    assert_eq!(back, b"again");
    wait_until(T, "recaptured: tunnelled by the new proxy", || {
        tunnelled(&proxy) == 1.0
    })
    .unwrap();

    // The node proxy is SIGKILLed (no drain): a connection through it fails
    // at once rather than hanging, and a new proxy recaptures both pods
    // from the agent's snapshot.
    let mut through = connect(Some(&client), addr(ip(11), 8080), T).unwrap();
    through.write_all(b"alive").unwrap();
    let mut five = [0u8; 5];
    through.read_exact(&mut five).unwrap();
    let mut proxy = proxy;
    proxy.sigkill();
    proxy.wait_exit(T).expect("proxy dies on SIGKILL");
    // A hang guard, not a timing bound: the kernel closed the proxy's
    // sockets, so the read ends (EOF or reset) long before this.
    through.set_read_timeout(Some(T)).unwrap();
    let ended = through.read(&mut five);
    assert!(
        matches!(ended, Ok(0))
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut),
        "the connection through a killed proxy must end, got {ended:?}"
    );
    assert!(
        client_ns.has_capture_rules().unwrap(),
        "rules outlive the proxy"
    );
    let proxy = node.proxy();
    wait_until(T, "the new proxy serves both pods after a SIGKILL", || {
        served(&proxy) == ["uid-client", "uid-server"]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", proxy.log(), node.agent.log()));
    let back = echo_roundtrip(Some(&client), addr(ip(11), 8080), b"after kill", T).unwrap();
    assert_eq!(back, b"after kill");

    // The agent restarts: it reads its saved pods, the proxy reconnects and
    // its snapshot names both, so nothing is dropped: a connection opened
    // before keeps carrying data.
    let mut open = connect(Some(&client), addr(ip(11), 8080), T).unwrap();
    open.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).unwrap();
    assert!(node.agent.stop().is_some(), "agent stops on SIGTERM");
    node.agent = Agent::start(node.files.dir.path(), &["demo"]).unwrap();
    wait_until(T, "the proxy reconnects to the new agent", || {
        node.agent.log().contains("pods=2")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", node.agent.log(), proxy.log()));
    assert_eq!(served(&proxy), ["uid-client", "uid-server"]);
    open.write_all(b"after!").unwrap();
    open.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"after!", "the connection survived the agent restart");
    drop(open);

    // DEL: released, rules gone, and the client's traffic is plain again
    // (the server, still enrolled, takes it on its plaintext port).
    for r in rt.del(&client_sb, Some(&client_result)).unwrap() {
        assert!(r.success, "DEL {}: {} {}", r.plugin, r.stdout, r.stderr);
        if r.plugin == "trellis-cni" {
            assert!(r.stdout.is_empty(), "DEL prints nothing: {:?}", r.stdout);
        }
    }
    assert_eq!(served(&proxy), ["uid-server"]);
    assert!(!client_ns.has_capture_rules().unwrap());
    // DEL again (the runtime may retry) still succeeds.
    for r in rt.del(&client_sb, Some(&client_result)).unwrap() {
        assert!(
            r.success,
            "second DEL {}: {} {}",
            r.plugin, r.stdout, r.stderr
        );
    }
    // The released client has no address any more (bridge DEL); the
    // server's proxy is untouched.
    assert!(proxy.ready().unwrap());
}

#[test]
fn without_a_node_proxy_add_fails_closed_or_starts_uncaptured_and_is_captured_later() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mesh = [("demo", "closed", ip(20)), ("demo", "open", ip(21))];
    let mut node = Node::new(&mesh);

    // Fail-closed (the default): a CNI error naming the cause.
    let rt = node.runtime(json!({ "captureTimeoutMs": 1500 }));
    let (_closed_ns, closed_sb) = node.sandbox("demo", "closed", ip(20));
    let runs = add(&rt, &closed_sb);
    assert_eq!(runs.len(), 2);
    assert!(runs[0].success, "bridge: {}", runs[0].stderr);
    assert!(
        !runs[1].success,
        "trellis-cni must fail: {}",
        runs[1].stdout
    );
    let err = runs[1].json().unwrap();
    assert_eq!(err["code"], 101, "{err}");
    assert_eq!(err["cniVersion"], "1.0.0");
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("no node proxy"), "{msg}");
    let details = err["details"].as_str().unwrap();
    assert!(details.contains("--zds-socket"), "actionable: {details}");
    // The runtime cleans up after the failed ADD.
    for r in rt.del(&closed_sb, None).unwrap() {
        assert!(r.success, "DEL {}: {} {}", r.plugin, r.stdout, r.stderr);
    }

    // Fail-open: the pod starts, uncaptured for now...
    let rt_open = node.runtime(json!({ "captureTimeoutMs": 1500, "failOpen": true }));
    let (open_ns, open_sb) = node.sandbox("demo", "open", ip(21));
    assert_passthrough(&add(&rt_open, &open_sb));
    assert!(!open_ns.has_capture_rules().unwrap());
    // ...and a node proxy arriving later captures it from the snapshot.
    let proxy = node.proxy();
    wait_until(T, "the late proxy serves the fail-open pod", || {
        served(&proxy) == ["uid-open"]
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", proxy.log(), node.agent.log()));
    wait_until(T, "the agent installed its rules after the Ack", || {
        open_ns.has_capture_rules().unwrap_or(false)
    })
    .unwrap();

    // No agent at all: fail-closed ADD names the socket; DEL still succeeds.
    assert!(node.agent.stop().is_some(), "agent stops on SIGTERM");
    let (_gone_ns, gone_sb) = node.sandbox("demo", "closed2", ip(22));
    let runs = add(&rt, &gone_sb);
    let err = runs[1].json().unwrap();
    assert_eq!(err["code"], 100, "{err}");
    let sock = node.agent.plugin_socket.display().to_string();
    assert!(err["msg"].as_str().unwrap().contains(&sock), "{err}");
    for r in rt.del(&gone_sb, None).unwrap() {
        assert!(
            r.success,
            "DEL without agent {}: {} {}",
            r.plugin, r.stdout, r.stderr
        );
    }
}

#[test]
fn bad_plugin_input_gets_a_cni_error_never_a_panic() {
    if !trellis_e2e::require_root() {
        return;
    }
    let node = Node::new(&[]);
    let rt = node.runtime(json!({}));
    let bin = trellis_e2e::cni_kit::workspace_bin("trellis-cni").unwrap();
    let full = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let chained = r#"{"cniVersion":"1.0.0","name":"n","type":"trellis-cni","prevResult":{"cniVersion":"1.0.0"}}"#;
    // (case, env, stdin, expected code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str, u64);
    let cases: Vec<Case> = vec![
        ("malformed JSON", full.to_vec(), "{\"cniVersion\": ", 6),
        ("not an object", full.to_vec(), "[1, 2]", 6),
        ("no CNI_COMMAND", full[1..].to_vec(), chained, 4),
        (
            "missing CNI_NETNS and CNI_IFNAME",
            vec![full[0], full[1], full[4]],
            chained,
            4,
        ),
        (
            "unsupported version",
            full.to_vec(),
            r#"{"cniVersion":"0.1.0","name":"n"}"#,
            1,
        ),
        (
            "not chained",
            full.to_vec(),
            r#"{"cniVersion":"1.0.0","name":"n","type":"trellis-cni"}"#,
            7,
        ),
        (
            "CNI_ARGS names a namespace but no pod",
            [&full[..], &[("CNI_ARGS", "K8S_POD_NAMESPACE=demo")]].concat(),
            chained,
            4,
        ),
    ];
    for (name, env, stdin, code) in cases {
        let run = rt.run_raw(&bin, &env, stdin.as_bytes()).unwrap();
        assert!(!run.success, "{name}: must fail");
        assert!(!run.stderr.contains("panicked"), "{name}: {}", run.stderr);
        let v = run.json().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(v["code"], code, "{name}: {v}");
        assert!(!v["msg"].as_str().unwrap_or("").is_empty(), "{name}: {v}");
    }
    // VERSION works with no config at all.
    let run = rt
        .run_raw(&bin, &[("CNI_COMMAND", "VERSION")], b"")
        .unwrap();
    assert!(run.success);
    let v = run.json().unwrap();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));
}

/// A hand-over of a node proxy fed by the CNI agent (issue 16, section 1):
/// the new process gets the pods from the old one and then holds the ZDS
/// session, so an ADD after the take-over is served by the new process
/// and a DEL releases the pod there, while the old one drains the stream
/// it carries to its end.
#[test]
fn a_takeover_under_the_cni_agent_keeps_the_pods_and_serves_later_adds_and_dels() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mesh = [
        ("demo", "client", ip(10)),
        ("demo", "server", ip(11)),
        ("demo", "late", ip(13)),
    ];
    let node = Node::new(&mesh);
    let old = node.proxy();
    let rt = node.runtime(json!({ "captureTimeoutMs": 10000 }));
    let (server_ns, server_sb) = node.sandbox("demo", "server", ip(11));
    assert_passthrough(&add(&rt, &server_sb));
    let (client_ns, client_sb) = node.sandbox("demo", "client", ip(10));
    assert_passthrough(&add(&rt, &client_sb));
    assert_eq!(served(&old), ["uid-client", "uid-server"]);
    let _echo = TestServer::echo(Some(&server_ns.netns().unwrap()), addr(ip(11), 8080)).unwrap();
    let client = client_ns.netns().unwrap();
    let long = CountedStream::start(&client, addr(ip(11), 8080)).unwrap();
    long.wait_progress(256 << 10, T).unwrap();

    let mut new = old
        .take_over("gen2")
        .unwrap_or_else(|e| panic!("take-over: {e:#}\n{}", old.log()));
    wait_until(T, "the old process to hand over", || {
        old.log().contains("handed over to the new node proxy")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    assert_eq!(served(&new), ["uid-client", "uid-server"]);
    // New connections go through the new process, tunnelled.
    let back = echo_roundtrip(Some(&client), addr(ip(11), 8080), b"via new", T).unwrap();
    assert_eq!(back, b"via new");
    wait_until(T, "a connection tunnelled by the new process", || {
        tunnelled(&new) >= 1.0
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", new.log()));

    // A pod created after the take-over: the agent hands it to the new
    // process (the old one left the ZDS session), and ADD returns once it
    // is captured.
    let (late_ns, late_sb) = node.sandbox("demo", "late", ip(13));
    let late_result = assert_passthrough(&add(&rt, &late_sb));
    assert_eq!(served(&new), ["uid-client", "uid-late", "uid-server"]);
    assert!(late_ns.has_capture_rules().unwrap());
    let before = tunnelled(&new);
    let late = late_ns.netns().unwrap();
    let back = echo_roundtrip(Some(&late), addr(ip(11), 8080), b"late pod", T).unwrap();
    assert_eq!(back, b"late pod");
    wait_until(T, "the late pod's connection tunnelled", || {
        tunnelled(&new) > before
    })
    .unwrap();
    // And its DEL releases it from the new process.
    for r in rt.del(&late_sb, Some(&late_result)).unwrap() {
        assert!(r.success, "DEL {}: {} {}", r.plugin, r.stdout, r.stderr);
    }
    assert_eq!(served(&new), ["uid-client", "uid-server"]);
    assert!(!late_ns.has_capture_rules().unwrap());

    // The old process drained its stream to the end, whole, then exited.
    long.wait_progress(256 << 10, T).unwrap();
    let r = long.finish();
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.first_mismatch, None, "{r:?}");
    assert_eq!(r.received, r.sent, "{r:?}");
    let mut old = old;
    let status = old
        .wait_exit(T)
        .unwrap_or_else(|| panic!("old proxy still running:\n{}", old.log()));
    assert!(status.success(), "{status}\n{}", old.log());
    assert!(new.ready().unwrap());
    new.sigterm();
    new.wait_exit(T).expect("the new proxy exits on SIGTERM");
}
