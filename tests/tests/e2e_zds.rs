//! Istio's ZDS on the wire, against the real binaries: the test plays the
//! CNI agent towards a real `trellis-node-proxy`, and the node proxy
//! towards a real `trellis-cni-agent`, sending what a correct peer sends
//! and what a broken one might. Every bad message gets an answer that
//! names the problem; neither process falls over.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use prost::Message;
use serde_json::{json, Value};
use trellis_api::pb::istio::workload::zds::{
    workload_request::Payload as Req, workload_response::Payload as Resp, Ack, AddWorkload,
    DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello,
};
use trellis_e2e::cluster::{ClusterFiles, NodeProxy};
use trellis_e2e::cni_kit::{Agent, PodNetns, Runtime, Sandbox};
use trellis_e2e::{wait_until, Topology};
use trellis_netns::seqpacket::{SeqpacketConn, SeqpacketListener};

const T: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn req(p: Req) -> Vec<u8> {
    WorkloadRequest { payload: Some(p) }.encode_to_vec()
}

fn add(uid: &str, name: &str) -> Vec<u8> {
    req(Req::Add(AddWorkload {
        uid: uid.into(),
        workload_info: Some(WorkloadInfo {
            name: name.into(),
            namespace: "demo".into(),
            service_account: name.into(),
        }),
    }))
}

fn ack_error(data: &[u8]) -> String {
    match WorkloadResponse::decode(data).unwrap().payload {
        Some(Resp::Ack(a)) => a.error,
        None => panic!("response without payload"),
    }
}

async fn recv(c: &SeqpacketConn) -> Option<Vec<u8>> {
    tokio::time::timeout(T, c.recv(16 * 1024))
        .await
        .expect("an answer within the deadline")
        .unwrap()
        .map(|p| p.data)
}

/// Sends one request and returns the Ack's error text ("" when it worked).
async fn ask(c: &SeqpacketConn, msg: &[u8], fd: Option<&OwnedFd>) -> String {
    c.send(msg, fd.map(|f| f.as_fd())).await.unwrap();
    ack_error(&recv(c).await.expect("the proxy answers"))
}

async fn accept_hello(l: &SeqpacketListener) -> SeqpacketConn {
    let c = tokio::time::timeout(T, l.accept())
        .await
        .expect("the proxy connects")
        .unwrap();
    let hello = ZdsHello::decode(recv(&c).await.unwrap().as_slice()).unwrap();
    assert_eq!(hello.version, Version::V1 as i32);
    c
}

/// The pods the proxy serves: (ZDS uid, workload uid).
fn served(p: &NodeProxy) -> Vec<(String, String)> {
    let (_, body) = p.admin("GET", "/pods", "").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["uid"].as_str().unwrap().to_string(),
                p["workload"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A node with workloads `pods` (name, address) in its config, and the
/// test as its CNI agent on a ZDS socket.
struct AgentNode {
    topo: Topology,
    files: ClusterFiles,
    ca: std::path::PathBuf,
    config: std::path::PathBuf,
    sock: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    listener: SeqpacketListener,
}

impl AgentNode {
    fn new(pods: &[(&str, &str)]) -> AgentNode {
        let topo = Topology::builder().node("node1").build().unwrap();
        let files = ClusterFiles::new().unwrap();
        let ca = files.ca("ca").unwrap();
        let mut yaml = String::from("workloads:\n");
        for (name, addr) in pods {
            yaml += &format!(
                "  - uid: Kubernetes//Pod/demo/{name}\n    name: {name}\n    namespace: demo\n    serviceAccount: {name}\n    addresses: [{addr}]\n    node: node1\n    protocol: HBONE\n"
            );
        }
        let config = files.write_config("mesh.yaml", &yaml).unwrap();
        let sock = files.path("zds.sock");
        let rt = rt();
        let listener = {
            let _g = rt.enter();
            SeqpacketListener::bind(&sock).unwrap()
        };
        AgentNode {
            topo,
            files,
            ca,
            config,
            sock,
            rt,
            listener,
        }
    }

    /// Starts the node proxy and, once it has said hello, plays the agent
    /// with `agent` (given whether the start has returned yet: it returns
    /// only when the proxy is ready, which waits for the snapshot).
    fn start(
        &self,
        agent: impl FnOnce(&SeqpacketConn, &dyn Fn() -> bool),
    ) -> (NodeProxy, SeqpacketConn) {
        let sock_arg = self.sock.display().to_string();
        std::thread::scope(|scope| {
            let starter = scope.spawn(|| {
                NodeProxy::start(
                    &self.topo,
                    &self.files,
                    "node1",
                    &self.config,
                    &self.ca,
                    &[],
                    &["--zds-socket", &sock_arg],
                )
            });
            let c = self.rt.block_on(accept_hello(&self.listener));
            agent(&c, &|| starter.is_finished());
            let proxy = starter
                .join()
                .unwrap()
                .expect("the proxy is ready after the snapshot");
            (proxy, c)
        })
    }
}

#[test]
fn node_proxy_answers_every_request_refuses_garbage_and_reconciles_snapshots() {
    if !trellis_e2e::require_root() {
        return;
    }
    let node = AgentNode::new(&[("p1", "198.18.200.30")]);
    let pod = PodNetns::create(node.topo.prefix(), "p1").unwrap();
    let netns_fd: OwnedFd = std::fs::File::open(pod.path()).unwrap().into();
    let not_netns: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let p1 = || ("uid-1".to_string(), "Kubernetes//Pod/demo/p1".to_string());
    let rt = &node.rt;
    let listener = &node.listener;

    // The proxy starts while the test, as agent, sends it requests: start
    // returns once the proxy is ready, which must wait for the snapshot.
    let (proxy, c) = node.start(|c, started| {
        rt.block_on(async {
            // (case, request, fd sent with it, fragment the Ack's error must hold; "" = success)
            let steps: Vec<(&str, Vec<u8>, Option<&OwnedFd>, &str)> = vec![
                ("garbage", vec![0xff; 5], None, "not a ZDS WorkloadRequest"),
                // Only an unknown field (9, varint): a request with no payload.
                // (An empty packet cannot be sent: SEQPACKET reads it as EOF.)
                ("no payload", vec![0x48, 0x01], None, "no payload"),
                (
                    "add without fd",
                    add("uid-1", "p1"),
                    None,
                    "without its netns fd",
                ),
                (
                    "del with an fd",
                    req(Req::Del(DelWorkload {
                        uid: "uid-1".into(),
                    })),
                    Some(&not_netns),
                    "DelWorkload came with 1 fd",
                ),
                (
                    "add with an fd that is no netns",
                    add("uid-1", "p1"),
                    Some(&not_netns),
                    "network namespace",
                ),
                ("add", add("uid-1", "p1"), Some(&netns_fd), ""),
                (
                    "add again, same netns",
                    add("uid-1", "p1"),
                    Some(&netns_fd),
                    "",
                ),
                (
                    "snapshot sent",
                    req(Req::SnapshotSent(SnapshotSent {})),
                    None,
                    "",
                ),
                (
                    "keep after the snapshot",
                    req(Req::Keep(KeepWorkload {
                        uid: "uid-1".into(),
                    })),
                    None,
                    "after SnapshotSent",
                ),
                (
                    "second snapshot sent",
                    req(Req::SnapshotSent(SnapshotSent {})),
                    None,
                    "second SnapshotSent",
                ),
            ];
            for (name, msg, fd, want) in steps {
                if name == "snapshot sent" {
                    assert!(!started(), "ready before the agent's snapshot");
                }
                let err = ask(c, &msg, fd).await;
                if want.is_empty() {
                    assert_eq!(err, "", "{name}");
                } else {
                    assert!(err.contains(want), "{name}: {err:?} lacks {want:?}");
                }
            }
        })
    });

    rt.block_on(async {
        assert_eq!(served(&proxy), [p1()], "served once, as its workload");
        let del = req(Req::Del(DelWorkload {
            uid: "uid-1".into(),
        }));
        assert_eq!(ask(&c, &del, None).await, "");
        assert!(served(&proxy).is_empty());
        assert!(proxy.ready().unwrap(), "garbage did not hurt the proxy");

        // A new connection (an agent restart): its snapshot names p1 again.
        drop(c);
        let c = accept_hello(listener).await;
        assert_eq!(ask(&c, &add("uid-1", "p1"), Some(&netns_fd)).await, "");
        let snap = req(Req::SnapshotSent(SnapshotSent {}));
        assert_eq!(ask(&c, &snap, None).await, "");
        assert_eq!(served(&proxy), [p1()]);

        // The next connection's snapshot does not name it: it is dropped.
        drop(c);
        let c = accept_hello(listener).await;
        assert_eq!(ask(&c, &snap, None).await, "");
        assert!(served(&proxy).is_empty(), "reconciled away");
        drop(c);
    });
    assert!(proxy.ready().unwrap());
}

#[test]
fn agent_drops_a_bad_peer_and_reports_a_refusing_proxy_to_the_plugin() {
    if !trellis_e2e::require_root() {
        return;
    }
    let topo = Topology::builder().node("node1").build().unwrap();
    let files = ClusterFiles::new().unwrap();
    let mut agent = Agent::start(files.dir.path(), &["demo"]).unwrap();
    let rt = rt();
    let zds = agent.zds_socket.clone();

    // Garbage instead of a hello: the agent hangs up and lives on.
    rt.block_on(async {
        let c = SeqpacketConn::connect(&zds).unwrap();
        c.send(&[0xff, 0xff, 0x01], None).await.unwrap();
        assert_eq!(recv(&c).await, None, "the agent closes the connection");
    });
    assert!(agent.alive(), "{}", agent.log());
    assert!(agent.log().contains("not a ZdsHello"), "{}", agent.log());

    // A proxy that refuses every pod: the plugin's ADD fails with 102 and
    // the proxy's reason.
    let fake_proxy = rt.spawn(async move {
        let c = SeqpacketConn::connect(&zds).unwrap();
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        c.send(&hello.encode_to_vec(), None).await.unwrap();
        let mut adds = 0;
        // Bounded: the snapshot's SnapshotSent, then one AddWorkload.
        for _ in 0..2 {
            let Some(p) = c.recv(16 * 1024).await.unwrap() else {
                break;
            };
            let r = WorkloadRequest::decode(p.data.as_slice()).unwrap();
            let error = match r.payload {
                Some(Req::Add(a)) => {
                    adds += 1;
                    assert_eq!(p.fds.len(), 1, "AddWorkload carries the netns fd");
                    assert_eq!(a.workload_info.unwrap().name, "refused");
                    "no workload Kubernetes//Pod/demo/refused in my config".to_string()
                }
                _ => String::new(),
            };
            let ack = WorkloadResponse {
                payload: Some(Resp::Ack(Ack { error })),
            };
            c.send(&ack.encode_to_vec(), None).await.unwrap();
        }
        adds
    });
    let runtime = Runtime::new(
        topo.netns_name("node1").unwrap(),
        json!({ "agentSocket": agent.plugin_socket, "captureTimeoutMs": 5000 }),
    )
    .unwrap();
    let pod = PodNetns::create(topo.prefix(), "refused").unwrap();
    let sb = Sandbox {
        container_id: "sandbox-refused".into(),
        netns: pod.path().to_path_buf(),
        namespace: "demo".into(),
        name: "refused".into(),
        uid: "uid-refused".into(),
        ip: std::net::Ipv4Addr::new(198, 18, 200, 40),
    };
    // The fake proxy must be connected first, or ADD would wait for one.
    wait_until(T, "the fake proxy's snapshot", || {
        agent.log().contains("node proxy connected")
    })
    .unwrap();
    runtime.loopback(&sb).unwrap();
    let runs = runtime.add(&sb).unwrap();
    let err = runs[1].json().unwrap();
    assert!(!runs[1].success);
    assert_eq!(err["code"], 102, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("no workload Kubernetes//Pod/demo/refused"),
        "{err}"
    );
    assert_eq!(rt.block_on(fake_proxy).unwrap(), 1);
    assert!(
        !pod.has_capture_rules().unwrap(),
        "no rules for a refused pod"
    );
    assert!(agent.alive());
}

/// Leaves port 15001 of `pod` held only by TIME_WAIT sockets of a process
/// that bound it without SO_REUSEADDR and exited: what an exited ztunnel
/// leaves behind for up to 60 s.
fn leave_time_wait_on_15001(pod: &PodNetns) {
    let script = "import socket\n\
        l = socket.socket(); l.bind(('0.0.0.0', 15001)); l.listen(1)\n\
        c = socket.create_connection(('127.0.0.1', 15001)); a, _ = l.accept()\n\
        a.close(); c.recv(1); c.close(); l.close()\n";
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", pod.name(), "sh", "-c"])
        .arg(format!("ip link set lo up && python3 -c \"{script}\""))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ends those sockets early (SOCK_DESTROY) where the kernel allows it;
/// elsewhere they last their 60 s.
fn end_time_wait_on_15001(pod: &PodNetns) {
    let _ = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.name(),
            "ss",
            "-K",
            "state",
            "time-wait",
        ])
        .arg("( sport = :15001 )")
        .output();
}

#[test]
fn a_pod_whose_port_lingers_after_ztunnel_is_enrolled_once_the_kernel_frees_it() {
    if !trellis_e2e::require_root() {
        return;
    }
    let node = AgentNode::new(&[("p1", "198.18.200.40"), ("p2", "198.18.200.41")]);
    let pods = [
        PodNetns::create(node.topo.prefix(), "p1").unwrap(),
        PodNetns::create(node.topo.prefix(), "p2").unwrap(),
    ];
    let fds: Vec<OwnedFd> = pods
        .iter()
        .map(|p| std::fs::File::open(p.path()).unwrap().into())
        .collect();
    for pod in &pods {
        leave_time_wait_on_15001(pod);
    }
    let (proxy, c) = node.start(|c, _| {
        node.rt.block_on(async {
            for (uid, name, fd) in [("uid-1", "p1", &fds[0]), ("uid-2", "p2", &fds[1])] {
                let err = ask(c, &add(uid, name), Some(fd)).await;
                assert!(
                    err.contains("TIME_WAIT") && err.contains("tries again"),
                    "{name}: {err:?}"
                );
            }
            // The agent gives up on p2 (the pod is deleted): its retry stops.
            let del = req(Req::Del(DelWorkload {
                uid: "uid-2".into(),
            }));
            assert_eq!(ask(c, &del, None).await, "");
            let snap = req(Req::SnapshotSent(SnapshotSent {}));
            assert_eq!(ask(c, &snap, None).await, "");
        })
    });
    assert!(
        served(&proxy).is_empty(),
        "nothing enrolled while the ports linger"
    );
    for pod in &pods {
        end_time_wait_on_15001(pod);
    }
    // Two retry periods where SOCK_DESTROY worked; up to the whole TIME_WAIT
    // where it did not.
    wait_until(
        Duration::from_secs(75),
        "p1 enrolled by the proxy's own retry",
        || served(&proxy) == [("uid-1".to_string(), "Kubernetes//Pod/demo/p1".to_string())],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    // p2's port is as free as p1's, and p2 stays out: its retry was cancelled.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(served(&proxy).len(), 1, "the deleted pod was not enrolled");
    drop(c);
}
