//! A proxy's life around its pods and its own end: removing and re-adding a
//! pod over the admin API, and draining on SIGTERM.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use trellis_e2e::mesh_kit::{listed_pods, Attempt, Mesh, T};
use trellis_e2e::{connect, wait_for, wait_until};

const OPENED: &str = "istio_tcp_connections_opened_total";

fn capture_table_present(m: &Mesh, pod: &str) -> bool {
    m.topo
        .exec(pod, &["nft", "list", "tables"])
        .unwrap()
        .contains("inet trellis")
}

/// Connections client -> server opened so far, as each proxy counted them.
fn mesh_and_plain(m: &Mesh) -> (f64, f64) {
    let tunnelled = m.proxy("node1").metric(
        OPENED,
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    let plain = m.proxy("node2").metric(
        OPENED,
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "unknown"),
        ],
    );
    (tunnelled, plain)
}

#[test]
fn removed_pod_loses_capture_and_listeners_and_can_be_enrolled_again() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .outsider("node2", "prober")
        .start()
        .unwrap();
    let _echo = m.echo("server", 8080);
    let p1 = m.proxy("node1");
    let roundtrip = |what: &str| {
        let got = m
            .attempt_echo("client", m.addr("server", 8080), what.as_bytes())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(got, Attempt::Echoed(what.as_bytes().to_vec()), "{what}");
    };
    let hbone_port_open = || connect(Some(&m.netns("prober")), m.addr("client", 15008), T);

    assert_eq!(listed_pods(p1).unwrap(), ["client"]);
    assert!(capture_table_present(&m, "client"));
    roundtrip("enrolled");
    assert_eq!(mesh_and_plain(&m), (1.0, 0.0), "tunnelled over HBONE");

    assert_eq!(p1.admin("DELETE", "/pods/client", "").unwrap().0, 200);
    assert!(listed_pods(p1).unwrap().is_empty());
    assert!(
        !capture_table_present(&m, "client"),
        "capture rules removed"
    );
    wait_until(
        T,
        "client's 15008 listener closed",
        || matches!(hbone_port_open(), Err(e) if e.kind() == ErrorKind::ConnectionRefused),
    )
    .unwrap();
    // Not captured any more: the connection goes out directly and reaches
    // the server's proxy as plaintext on 15006.
    roundtrip("removed");
    wait_until(T, "server side counts one plaintext connection", || {
        mesh_and_plain(&m) == (1.0, 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", mesh_and_plain(&m)));
    assert_eq!(p1.admin("DELETE", "/pods/client", "").unwrap().0, 404);

    let body = format!(
        r#"{{"uid": "client", "netns": "{}"}}"#,
        m.netns_path("client").display()
    );
    assert_eq!(p1.admin("POST", "/pods", &body).unwrap().0, 200);
    assert_eq!(listed_pods(p1).unwrap(), ["client"]);
    assert!(capture_table_present(&m, "client"));
    hbone_port_open().expect("15008 listens again");
    roundtrip("enrolled again");
    wait_until(T, "tunnelled again", || mesh_and_plain(&m) == (2.0, 1.0))
        .unwrap_or_else(|e| panic!("{e}: {:?}", mesh_and_plain(&m)));
}

#[test]
fn admin_pods_api_rejects_bad_requests_without_side_effects() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .start()
        .unwrap();
    let p1 = m.proxy("node1");
    let path = m.netns_path("client").display().to_string();
    let cases: [(&str, &str, String, u16); 6] = [
        ("POST", "/pods", "not json".into(), 400),
        ("POST", "/pods", r#"{"uid": "x"}"#.into(), 400),
        (
            "POST",
            "/pods",
            format!(r#"{{"uid": "", "netns": "{path}"}}"#),
            422,
        ),
        (
            "POST",
            "/pods",
            r#"{"uid": "x", "netns": "/nonexistent/netns"}"#.into(),
            422,
        ),
        ("DELETE", "/pods/nobody", String::new(), 404),
        ("GET", "/pods/client", String::new(), 404),
    ];
    for (method, path, body, want) in &cases {
        let (status, text) = p1.admin(method, path, body).unwrap();
        assert_eq!(status, *want, "{method} {path} {body}: {text}");
    }
    assert_eq!(listed_pods(p1).unwrap(), ["client"]);
    assert!(p1.ready().unwrap());
}

/// A connection through the mesh that stays open; `exchange` proves it carries data.
struct LongLived(TcpStream);

impl LongLived {
    fn open(m: &Mesh) -> LongLived {
        LongLived(connect(Some(&m.netns("client")), m.addr("server", 8080), T).unwrap())
    }
    fn exchange(&mut self, msg: &[u8]) {
        self.0.write_all(msg).unwrap();
        let mut back = vec![0; msg.len()];
        self.0.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

/// SIGTERMs the server's proxy and checks what draining means while `conn` is open.
fn start_drain(m: &Mesh, conn: &mut LongLived) -> Instant {
    let p2 = m.proxy("node2");
    let t0 = Instant::now();
    p2.sigterm();
    wait_until(T, "readiness reports not ready", || {
        !p2.ready().unwrap_or(false)
    })
    .unwrap();
    // New connections are refused (GOAWAY, listeners closed)...
    wait_for(T, "a new connection to be refused", || {
        let got = m.attempt_echo("client", m.addr("server", 8080), b"new");
        (got.ok()? == Attempt::Closed).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", p2.log()));
    // ...while the open one keeps carrying data.
    conn.exchange(b"during drain");
    t0
}

#[test]
fn sigterm_drains_open_connections_until_the_deadline_then_exits() {
    if !trellis_e2e::require_root() {
        return;
    }
    const DEADLINE: Duration = Duration::from_secs(3);
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .proxy_args(&["--drain-deadline", "3s"])
        .start()
        .unwrap();
    let _echo = m.echo("server", 8080);
    let mut conn = LongLived::open(&m);
    conn.exchange(b"before");
    let t0 = start_drain(&m, &mut conn);

    let status = m
        .proxy_mut("node2")
        .wait_exit(DEADLINE + T)
        .expect("proxy exits after the drain deadline");
    let took = t0.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= DEADLINE - Duration::from_millis(300),
        "exited after {took:?}, before the deadline, with a connection open"
    );
    assert!(took <= DEADLINE + Duration::from_secs(2), "took {took:?}");
    // The connection is closed once the proxy is gone, not left hanging.
    let mut rest = Vec::new();
    match conn.0.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty()),
        Err(e) => assert!(trellis_e2e::mesh_kit::is_closed_by_peer(&e), "{e}"),
    }
}

#[test]
fn sigterm_exits_as_soon_as_the_last_connection_closes() {
    if !trellis_e2e::require_root() {
        return;
    }
    let mut m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .proxy_args(&["--drain-deadline", "60s"])
        .start()
        .unwrap();
    let _echo = m.echo("server", 8080);
    let mut conn = LongLived::open(&m);
    conn.exchange(b"before");
    start_drain(&m, &mut conn);
    drop(conn);
    let p2 = m.proxy_mut("node2");
    let status = p2.wait_exit(T);
    let log = p2.log();
    let status =
        status.unwrap_or_else(|| panic!("still running long before the 60s deadline:\n{log}"));
    assert!(status.success(), "{status}");
    assert!(log.contains("drain complete"), "{log}");
}
