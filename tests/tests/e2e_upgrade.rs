//! Hitless upgrade of the node proxy (issue 16, section 1) and the refusal
//! of a second proxy on a node (section 6, item 2), in netns with real
//! shared-mode proxies.
//!
//! - Ten take-overs in a row (alternately the clients' node and the
//!   servers' node) under steady load: new connections, HTTP requests, and
//!   long-lived streams that send all along. Nothing fails, no stream loses
//!   or resets a byte, and every old process exits once its streams end.
//! - A take-over that cannot happen (no socket there; a peer that is not a
//!   node proxy; a bad message) leaves the running proxy serving, and the
//!   new process exits with the reason.
//! - A second proxy on the same node (same lock), or on the same pods'
//!   ports (another runtime dir), refuses to start, naming the first, which
//!   serves on.
//! - SIGTERM to the old process while it drains after a take-over (as the
//!   kubelet sends when the rollout deletes the old pod) keeps its streams.
//! - The waypoint's hand-over, three times under HTTP, TCP and long-lived
//!   stream load through it; a take-over through a dead socket fails and
//!   leaves the running waypoint serving.

use std::time::Duration;

use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::l7kit::HttpServer;
use trellis_e2e::mesh_kit::{Attempt, Mesh};
use trellis_e2e::steady_load::{LoadSpec, SteadyLoad};
use trellis_e2e::wait_until;

const T: Duration = Duration::from_secs(10);
const UPGRADES: usize = 10;

const CLIENTS: [&str; 2] = ["c1", "c2"];
const SERVERS: [&str; 2] = ["s1", "s2"];
const ECHO_PORT: u16 = 8080;
const HTTP_PORT: u16 = 8081;

fn mesh(extra: &[&str]) -> Mesh {
    let mut b = Mesh::builder();
    for c in CLIENTS {
        b = b.member("node1", c, "demo", c);
    }
    for s in SERVERS {
        b = b.member("node2", s, "demo", s);
    }
    b.proxy_args(extra).start().unwrap()
}

fn echo_ok(m: &Mesh, from: &str, to: &str, what: &str) {
    let got = m
        .attempt_echo(from, m.addr(to, ECHO_PORT), what.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(got, Attempt::Echoed(what.as_bytes().to_vec()), "{what}");
}

fn stream(m: &Mesh, client: &str, server: &str) -> CountedStream {
    CountedStream::start(&m.netns(client), m.addr(server, ECHO_PORT)).unwrap()
}

#[test]
fn ten_takeovers_under_load_lose_no_connection_request_or_byte() {
    if !trellis_e2e::require_root() {
        return;
    }
    // The old processes' streams end within the test; the deadline only bounds it.
    let mut m = mesh(&["--handover-drain-deadline", "120s"]);
    let _echo: Vec<_> = SERVERS.iter().map(|s| m.echo(s, ECHO_PORT)).collect();
    let _http: Vec<_> = SERVERS
        .iter()
        .map(|s| HttpServer::start(Some(&m.netns(s)), m.addr(s, HTTP_PORT), s).unwrap())
        .collect();
    let load = SteadyLoad::start(LoadSpec {
        clients: CLIENTS
            .iter()
            .map(|c| (c.to_string(), m.netns(c)))
            .collect(),
        echo: SERVERS.iter().map(|s| m.addr(s, ECHO_PORT)).collect(),
        http: SERVERS.iter().map(|s| m.addr(s, HTTP_PORT)).collect(),
        pace: Duration::from_millis(10),
    })
    .unwrap();
    // Streams held by the first processes, for the whole run.
    let mut streams: Vec<_> = CLIENTS
        .iter()
        .flat_map(|c| SERVERS.iter().map(move |s| (*c, *s)))
        .map(|(c, s)| stream(&m, c, s))
        .collect();
    for s in &streams {
        s.wait_progress(256 << 10, T).unwrap();
    }
    load.wait_progress(20, T).unwrap();

    let mut old = Vec::new();
    for i in 0..UPGRADES {
        let node = if i % 2 == 0 { "node1" } else { "node2" };
        let before = m.proxy(node).pid();
        // Every third one as a DaemonSet rollout starts it: no --takeover,
        // the running proxy found through the shared runtime dir.
        let tag = format!("gen{}", i + 1);
        let p = m.proxy(node);
        let new = if i % 3 == 2 {
            p.auto_take_over(&tag)
        } else {
            p.take_over(&tag)
        }
        .unwrap_or_else(|e| panic!("take-over {} of {node}: {e:#}", i + 1));
        let new_pid = new.pid();
        let prev = m.replace_proxy(node, new);
        assert_ne!(new_pid, before);
        wait_until(T, "the old process to hand over", || {
            prev.log().contains("handed over to the new node proxy")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", prev.log()));
        old.push(prev);
        // Streams started mid-way are held by the middle generations.
        if i == UPGRADES / 2 {
            streams.push(stream(&m, "c1", "s2"));
            streams.push(stream(&m, "c2", "s1"));
        }
        // Everything moves on through the new process before the next one.
        load.wait_progress(20, T)
            .unwrap_or_else(|e| panic!("after take-over {}: {e}", i + 1));
        for s in &streams {
            s.wait_progress(64 << 10, T)
                .unwrap_or_else(|e| panic!("after take-over {}: {e}", i + 1));
        }
    }
    let report = load.finish();
    let reports: Vec<_> = streams.into_iter().map(CountedStream::finish).collect();
    assert_eq!(
        (report.conn_failed, report.http_failed),
        (0, 0),
        "{report:#?}"
    );
    assert!(
        report.conn_ok >= 200 && report.http_ok >= 200,
        "{report:#?}"
    );
    for r in &reports {
        assert_eq!(r.error, None, "a long-lived stream failed: {r:?}");
        assert_eq!(r.first_mismatch, None, "{r:?}");
        assert_eq!(r.received, r.sent, "{r:?}");
        assert!(r.sent >= 1 << 20, "{r:?}");
    }
    // With their streams ended, the old processes finish their drain and exit.
    for mut p in old {
        let status = p
            .wait_exit(T)
            .unwrap_or_else(|| panic!("old proxy {} still running:\n{}", p.pid(), p.log()));
        assert!(status.success(), "{status}\n{}", p.log());
        assert!(p.log().contains("drain complete"), "{}", p.log());
    }
    // The last generation serves on, new connections included.
    for c in CLIENTS {
        for s in SERVERS {
            echo_ok(&m, c, s, &format!("after the upgrades {c} -> {s}"));
        }
    }
    assert!(m.proxy("node1").ready().unwrap());
    assert!(m.proxy("node2").ready().unwrap());
}

#[test]
fn a_failed_takeover_leaves_the_running_proxy_serving() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(&[]);
    let _echo: Vec<_> = SERVERS.iter().map(|s| m.echo(s, ECHO_PORT)).collect();
    let long = CountedStream::start(&m.netns("c1"), m.addr("s1", ECHO_PORT)).unwrap();
    long.wait_progress(256 << 10, T).unwrap();
    let p1 = m.proxy("node1");
    let dir = tempfile::tempdir().unwrap();
    // A socket nobody listens on; a listener that is not a node proxy and
    // answers garbage; one that closes at once.
    let nobody = dir.path().join("nobody.sock");
    let garbage = dir.path().join("garbage.sock");
    let closer = dir.path().join("closer.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (g, c) = rt.block_on(async {
        use trellis_netns::seqpacket::SeqpacketListener;
        let g = SeqpacketListener::bind(&garbage).unwrap();
        let c = SeqpacketListener::bind(&closer).unwrap();
        (g, c)
    });
    let serve_bogus = std::thread::spawn(move || {
        rt.block_on(async move {
            // Each answers one connection: garbage, or a close.
            let conn = g.accept().await.unwrap();
            let _ = conn.recv(1024).await;
            conn.send(b"{\"type\":\"launch\"}", None).await.unwrap();
            let _ = conn.recv(1024).await;
            let conn = c.accept().await.unwrap();
            drop(conn);
        })
    });
    let cases = [
        (&nobody, "hand-over socket"),
        (&garbage, "unknown variant `launch`"),
        (&closer, "closed the hand-over socket"),
    ];
    for (path, want) in cases {
        let path = path.display().to_string();
        let err = p1
            .relaunch("bad-takeover", &["--takeover", &path])
            .err()
            .unwrap_or_else(|| panic!("a take-over through {path} succeeded"));
        let text = format!("{err:#}");
        assert!(
            text.contains("taking over from the running node proxy failed") && text.contains(want),
            "{path}: {text}"
        );
        echo_ok(
            &m,
            "c1",
            "s1",
            &format!("after the failed take-over via {path}"),
        );
    }
    serve_bogus.join().unwrap();

    // The running proxy kept serving through all of it, its pods intact and
    // its long-lived stream whole; and it can still be taken over.
    long.wait_progress(256 << 10, T).unwrap();
    assert!(p1.ready().unwrap());
    assert_eq!(trellis_e2e::mesh_kit::listed_pods(p1).unwrap(), CLIENTS);
    let new = p1.take_over("good-takeover").unwrap();
    echo_ok(&m, "c2", "s2", "after the good take-over");
    let r = long.finish();
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.received, r.sent, "{r:?}");
    drop(new);
}

#[test]
fn a_second_proxy_on_the_same_node_or_ports_refuses_to_start() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh(&[]);
    let _echo: Vec<_> = SERVERS.iter().map(|s| m.echo(s, ECHO_PORT)).collect();
    let p1 = m.proxy("node1");
    let first = format!("pid {} (", p1.pid());

    // Same node: the lock in its runtime dir is taken.
    let err = format!(
        "{:#}",
        p1.relaunch("second", &["--auto-takeover=false"])
            .err()
            .expect("a second proxy starts")
    );
    assert!(
        err.contains("another node proxy serves this node") && err.contains(&first),
        "{err}"
    );
    assert!(err.contains("--takeover"), "{err}");

    // Started from another directory (its runtime dir follows its files),
    // so no shared lock: the pods' ports are found taken (SO_REUSEPORT would
    // have let it bind them and take half of the new connections).
    let other = tempfile::tempdir().unwrap();
    let err = format!(
        "{:#}",
        p1.relaunch_with("second-elsewhere", |a| {
            a.bound_addrs_file = other.path().join("addrs.json")
        })
        .err()
        .expect("a proxy on the same ports starts")
    );
    assert!(
        err.contains("is already listened on by") && err.contains(&first),
        "{err}"
    );

    // The first serves on: every new connection through it works (with two
    // proxies on the ports, about half failed).
    for i in 0..20 {
        let c = CLIENTS[i % 2];
        let s = SERVERS[(i / 2) % 2];
        echo_ok(&m, c, s, &format!("connection {i} after the refusals"));
    }
    assert!(p1.ready().unwrap());
}

/// In a DaemonSet rollout the old pod is deleted once the new one has taken
/// over, so the kubelet sends the old process SIGTERM while it drains
/// (and SIGKILL only at the end of the pod's grace period, which the
/// manifest sets above the hand-over drain deadline). SIGTERM must not
/// shorten that drain to the plain `--drain-deadline`: the old process's
/// streams run on to their end.
#[test]
fn sigterm_while_draining_after_a_takeover_keeps_the_streams() {
    if !trellis_e2e::require_root() {
        return;
    }
    // A plain stop would cut streams after 1 s; the hand-over drain is long.
    let mut m = mesh(&[
        "--drain-deadline",
        "1s",
        "--handover-drain-deadline",
        "120s",
    ]);
    let _echo: Vec<_> = SERVERS.iter().map(|s| m.echo(s, ECHO_PORT)).collect();
    let long = stream(&m, "c1", "s1");
    long.wait_progress(256 << 10, T).unwrap();
    let new = m.proxy("node1").take_over("gen1").unwrap();
    let mut old = m.replace_proxy("node1", new);
    wait_until(T, "the old process to hand over", || {
        old.log().contains("handed over to the new node proxy")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", old.log()));
    old.sigterm();
    // The stream through the old process keeps moving for 3 s, well past
    // the 1 s --drain-deadline a SIGTERM alone would give it.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        long.wait_progress(64 << 10, T)
            .unwrap_or_else(|e| panic!("after SIGTERM: {e}\n{}", old.log()));
    }
    assert!(
        old.wait_exit(Duration::from_millis(1)).is_none(),
        "the old process exited on SIGTERM with a stream open:\n{}",
        old.log()
    );
    echo_ok(&m, "c2", "s2", "new connections through the new process");
    let r = long.finish();
    assert_eq!(r.error, None, "{r:?}");
    assert_eq!(r.received, r.sent, "{r:?}");
    let status = old
        .wait_exit(T)
        .unwrap_or_else(|| panic!("old proxy still running:\n{}", old.log()));
    assert!(status.success(), "{status}\n{}", old.log());
    assert!(old.log().contains("drain complete"), "{}", old.log());
}

/// The waypoint's hand-over (`--handover-socket` on the running one,
/// `--takeover` on the new one), three times in a row under load through
/// it: HTTP requests to an L7 service and TCP echo connections to a
/// relayed one, each on a new connection, and long-lived TCP streams
/// relayed by the old processes while they drain. Nothing fails, no
/// stream loses a byte, and each old process exits once its streams end.
#[test]
fn waypoint_takeovers_under_load_lose_no_request_connection_or_byte() {
    use std::net::{Ipv4Addr, SocketAddr};
    use trellis_e2e::mesh_kit::use_waypoint_pod;
    if !trellis_e2e::require_root() {
        return;
    }
    const WEB_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 112, 10);
    const TCP_VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 112, 30);
    const APP_PORT: u16 = 8080;
    const TCP_PORT: u16 = 9000;
    const WP: &str = "wp";
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("waypoint-handover.sock");
    let socket = socket.to_str().unwrap();
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "v1", "demo", "web")
        .waypoint("node2", WP, "demo", "waypoint")
        .service("web", WEB_VIP.into(), &[(80, APP_PORT)], &["v1"])
        .service("tcp", TCP_VIP.into(), &[(TCP_PORT, TCP_PORT)], &["v1"])
        .configure(|cfg| {
            use_waypoint_pod(cfg, "web", WP);
            use_waypoint_pod(cfg, "tcp", WP);
        })
        .waypoint_args(&[
            "--handover-socket",
            socket,
            "--handover-drain-deadline",
            "120s",
        ])
        .start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let _http = HttpServer::start(Some(&m.netns("v1")), m.addr("v1", APP_PORT), "v1").unwrap();
    let _echo = m.echo("v1", TCP_PORT);
    let web = SocketAddr::new(WEB_VIP.into(), 80);
    let tcp = SocketAddr::new(TCP_VIP.into(), TCP_PORT);
    let load = SteadyLoad::start(LoadSpec {
        clients: vec![("client".to_string(), m.netns("client"))],
        echo: vec![tcp],
        http: vec![web],
        pace: Duration::from_millis(10),
    })
    .unwrap();
    let mut streams = vec![CountedStream::start(&m.netns("client"), tcp).unwrap()];
    streams[0].wait_progress(256 << 10, T).unwrap();
    load.wait_progress(20, T)
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));

    // A take-over through a socket nobody offers on fails with the reason,
    // and the running waypoint serves on.
    let nobody = dir.path().join("nobody.sock");
    let err = m
        .waypoint(WP)
        .take_over_via("bad", nobody.to_str().unwrap())
        .err()
        .expect("a take-over through a dead socket succeeded");
    let text = format!("{err:#}");
    assert!(
        text.contains("taking over from the running waypoint failed")
            && text.contains("nobody.sock"),
        "{text}"
    );
    load.wait_progress(20, T)
        .unwrap_or_else(|e| panic!("after the failed take-over: {e}"));

    let mut old = Vec::new();
    for i in 0..3 {
        let new = m
            .waypoint(WP)
            .take_over(&format!("gen{}", i + 1))
            .unwrap_or_else(|e| panic!("take-over {} of the waypoint: {e:#}", i + 1));
        let new_pid = new.pid();
        // The new waypoint writes its addresses before it confirms.
        wait_until(T, "the new waypoint to confirm the take-over", || {
            new.log()
                .contains("took over: the old waypoint stopped accepting")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", new.log()));
        let prev = std::mem::replace(m.waypoint_mut(WP), new);
        assert_ne!(prev.pid(), new_pid);
        wait_until(T, "the old waypoint to hand over", || {
            prev.log().contains("handed over to the new waypoint")
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", prev.log()));
        old.push(prev);
        if i == 1 {
            streams.push(CountedStream::start(&m.netns("client"), tcp).unwrap());
        }
        load.wait_progress(20, T)
            .unwrap_or_else(|e| panic!("after take-over {}: {e}\n{}", i + 1, m.waypoint(WP).log()));
        // The new process serves: requests are counted by it, not only the old.
        wait_until(T, "requests through the new waypoint", || {
            m.waypoint(WP).metric("istio_requests_total", &[]) >= 5.0
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", m.waypoint(WP).log()));
        for s in &streams {
            s.wait_progress(64 << 10, T)
                .unwrap_or_else(|e| panic!("after take-over {}: {e}", i + 1));
        }
    }
    let report = load.finish();
    assert_eq!(
        (report.conn_failed, report.http_failed),
        (0, 0),
        "{report:#?}"
    );
    assert!(report.conn_ok >= 60 && report.http_ok >= 60, "{report:#?}");
    for s in streams {
        let r = s.finish();
        assert_eq!(r.error, None, "a long-lived stream failed: {r:?}");
        assert_eq!(r.first_mismatch, None, "{r:?}");
        assert_eq!(r.received, r.sent, "{r:?}");
    }
    // With their streams ended, the old processes finish their drain and exit.
    for mut p in old {
        let status = p
            .wait_exit(T)
            .unwrap_or_else(|| panic!("old waypoint {} still running:\n{}", p.pid(), p.log()));
        assert!(status.success(), "{status}\n{}", p.log());
        assert!(p.log().contains("drain complete"), "{}", p.log());
    }
    assert!(m.waypoint(WP).ready().unwrap());
    let reply =
        trellis_e2e::l7kit::http1_request(Some(&m.netns("client")), web, "GET", "/", &[], b"")
            .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
}
