//! Faults on the data path (issue 16, section 4), in netns with real node
//! proxies: an upstream app killed in the middle of a stream ends its own
//! client's connection promptly and touches nothing else.
//!
//! (The node proxy SIGKILLed is in `e2e_cni`, the CA down at renewal in
//! `e2e_controller`, unreadable config files in `e2e_reload`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use trellis_e2e::counted_stream::CountedStream;
use trellis_e2e::mesh_kit::{Attempt, Mesh};
use trellis_e2e::process::OwnedChild;
use trellis_e2e::{connect, wait_until};

const T: Duration = Duration::from_secs(10);

/// An echo server as a process of its own (so it can be killed), bound in
/// the server pod's netns; prints `ready` once listening.
const ECHO_PY: &str = r#"
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
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

#[test]
fn an_upstream_killed_mid_stream_ends_its_client_and_nothing_else() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap();
    // The other tenant: a stream to another app of the same pod, through
    // the same two node proxies.
    let _echo = m.echo("server", 8080);
    let other = CountedStream::start(&m.netns("client"), m.addr("server", 8080)).unwrap();
    other.wait_progress(1 << 20, T).unwrap();

    let server_ip = m.ip("server").to_string();
    let mut app = Command::new("nsenter");
    app.arg(format!("--net={}", m.netns_path("server").display()))
        .args(["python3", "-c", ECHO_PY, &server_ip, "9090"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = app.spawn().expect("python3 echo server");
    // Read the whole line and keep the pipe open for the app's life: a
    // closed pipe makes the app's next write to stdout fail with EPIPE,
    // and python3 then exits before it serves anything.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    stdout
        .read_line(&mut ready)
        .expect("the echo server says ready");
    assert_eq!(ready.trim(), "ready", "the echo server's first line");
    let app = OwnedChild::new(child);

    let client = m.netns("client");
    let mut conn = connect(Some(&client), m.addr("server", 9090), T).unwrap();
    let mut buf = [0u8; 4096];
    for i in 0..20 {
        let msg = format!("chunk {i:04}");
        conn.write_all(msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        conn.read_exact(&mut back).unwrap();
        assert_eq!(back, msg.as_bytes());
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
