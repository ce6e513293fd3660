//! Faults on the data path (issue 16, section 4), in netns with real node
//! proxies: an upstream app killed in the middle of a stream ends its own
//! client's connection promptly and touches nothing else; a connection that
//! ends in a reset keeps its byte counts, and a long-lived one shows its
//! bytes while it is open (section 6.1).
//!
//! (The node proxy SIGKILLed is in `e2e_cni`, the CA down at renewal in
//! `e2e_controller`, unreadable config files in `e2e_reload`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::mesh_kit::{Attempt, Mesh};
use trellis_e2e::process::OwnedChild;
use trellis_e2e::{connect, wait_until};

const T: Duration = Duration::from_secs(10);

/// What every app script starts with: a socket `s` listening on the
/// address and port it is given, then `ready` on stdout.
const LISTEN_PY: &str = r#"
import socket, struct, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
"#;

/// An echo server as a process of its own (so it can be killed), bound in
/// the server pod's netns.
const ECHO_PY: &str = r#"
def serve(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Starts `script` after [`LISTEN_PY`] with python3 in the server pod's
/// netns, bound to `port`, and waits for its `ready` line. The pipes are returned so they
/// stay open for the app's life: a closed stdout makes the app's next print
/// fail with EPIPE, and python3 then exits before it serves anything.
fn start_app(
    m: &Mesh,
    script: &str,
    port: u16,
) -> (OwnedChild, ChildStdin, BufReader<ChildStdout>) {
    let server_ip = m.ip("server").to_string();
    let mut app = Command::new("nsenter");
    app.arg(format!("--net={}", m.netns_path("server").display()))
        .args(["python3", "-c", &format!("{LISTEN_PY}{script}")])
        .args([&server_ip, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = app.spawn().expect("python3 app");
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let child = OwnedChild::new(child);
    let mut ready = String::new();
    stdout.read_line(&mut ready).expect("the app says ready");
    assert_eq!(ready.trim(), "ready", "the app's first line");
    (child, stdin, stdout)
}

/// A client pod on node1 and a server pod on node2.
fn client_and_server() -> Mesh {
    Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap()
}

/// Writes `msg` on `conn` and checks that it comes back.
fn echoed(conn: &mut TcpStream, msg: &[u8]) {
    conn.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn an_upstream_killed_mid_stream_ends_its_client_and_nothing_else() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = client_and_server();
    // The other tenant: a stream to another app of the same pod, through
    // the same two node proxies.
    let _echo = m.echo("server", 8080);
    let other = CountedStream::start(&m.netns("client"), m.addr("server", 8080)).unwrap();
    other.wait_progress(1 << 20, T).unwrap();

    let (app, _stdin, _stdout) = start_app(&m, ECHO_PY, 9090);

    let client = m.netns("client");
    let mut conn = connect(Some(&client), m.addr("server", 9090), T).unwrap();
    let mut buf = [0u8; 4096];
    for i in 0..20 {
        echoed(&mut conn, format!("chunk {i:04}").as_bytes());
    }

    // The app dies with data in flight.
    conn.write_all(&[7u8; 4096]).unwrap();
    app.sigkill();
    // A hang guard, not a timing bound: the proxies pass the upstream's
    // end through at once, so the client's reads end long before this.
    conn.set_read_timeout(Some(T)).unwrap();
    let ended = loop {
        match conn.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break Err(format!("the client's connection is still open after {T:?}"))
            }
            Err(_) => break Ok(()),
        }
    };
    ended.unwrap();

    // Nothing else is affected: the other stream keeps flowing, intact,
    // and new connections work.
    other.wait_progress(1 << 20, T).unwrap();
    assert_eq!(
        m.attempt_echo("client", m.addr("server", 8080), b"still here")
            .unwrap(),
        Attempt::Echoed(b"still here".to_vec())
    );
    let report = other.finish();
    assert_eq!(report.error, None, "{report:?}");
    assert_eq!(report.first_mismatch, None, "{report:?}");
    assert_eq!(report.received, report.sent, "{report:?}");
    wait_until(T, "both proxies still ready", || {
        m.proxy("node1").ready().unwrap_or(false) && m.proxy("node2").ready().unwrap_or(false)
    })
    .unwrap();
}

/// Echoes the first 30 bytes of one connection, then waits for a line on
/// stdin (the test's go-ahead, once its client has the echo) and resets
/// the connection (SO_LINGER 0), as a crashing or aborting app does.
const RESET_AFTER_30_PY: &str = r#"
c, _ = s.accept()
got = b""
while len(got) < 30:
    d = c.recv(30 - len(got))
    if not d:
        sys.exit(1)
    got += d
c.sendall(got)
sys.stdin.readline()
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()
print("reset", flush=True)
"#;

#[test]
fn bytes_are_counted_as_they_flow_and_kept_when_a_connection_is_reset() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = client_and_server();
    let (p1, p2) = (m.proxy("node1"), m.proxy("node2"));
    let src = [("reporter", "source")];
    let dst = [("reporter", "destination")];
    // (sent, received, closed) on both proxies; Istio's sent is back to the
    // client, received is from it, for both reporters.
    let counts = || {
        [
            (
                p1.metric("istio_tcp_sent_bytes_total", &src),
                p1.metric("istio_tcp_received_bytes_total", &src),
                p1.metric("istio_tcp_connections_closed_total", &src),
            ),
            (
                p2.metric("istio_tcp_sent_bytes_total", &dst),
                p2.metric("istio_tcp_received_bytes_total", &dst),
                p2.metric("istio_tcp_connections_closed_total", &dst),
            ),
        ]
    };
    let client = m.netns("client");

    // 1. A long-lived connection: its 30/30 bytes are on /metrics while it
    //    is still open (before, they appeared only once it closed).
    let _echo = m.echo("server", 8080);
    let mut long = connect(Some(&client), m.addr("server", 8080), T).unwrap();
    echoed(&mut long, &[b'a'; 30]);
    wait_until(T, "an open connection's bytes on both proxies", || {
        counts() == [(30.0, 30.0, 0.0); 2]
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", counts()));

    // 2. A connection the app resets after a 30/30-byte exchange: the
    //    copy ends in an error on both proxies, and the bytes stay counted
    //    (before, such a connection was recorded as 0/0).
    let (_app, mut app_in, mut app_out) = start_app(&m, RESET_AFTER_30_PY, 9090);
    let mut conn = connect(Some(&client), m.addr("server", 9090), T).unwrap();
    echoed(&mut conn, &[b'b'; 30]);
    app_in.write_all(b"go\n").unwrap();
    app_in.flush().unwrap();
    let mut line = String::new();
    app_out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "reset", "the app reset its connection");
    // The reset reaches the client as an end of its connection.
    conn.set_read_timeout(Some(T)).unwrap();
    let mut rest = Vec::new();
    let end = conn.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "no bytes after the reset: {rest:?} ({end:?})"
    );
    wait_until(T, "the reset connection closed on both proxies", || {
        counts().iter().all(|c| c.2 == 1.0)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", counts()));
    assert_eq!(
        counts(),
        [(60.0, 60.0, 1.0); 2],
        "both connections' 30/30 bytes, with the reset one closed"
    );
    // The access log line of the reset connection has its bytes and its error.
    for (name, p) in [("node1", p1), ("node2", p2)] {
        let log = p.log();
        assert!(
            log.lines().any(|l| l.contains("access:")
                && l.contains("bytes_sent=30 bytes_received=30")
                && l.contains("error=")),
            "{name}'s access log has the reset connection's bytes:\n{log}"
        );
    }
    drop(long);
}
