//! Floods of idle TCP connections to a node proxy's HBONE port (issue 16,
//! 6.3): pending handshakes stay bounded and real HBONE traffic still
//! flows, connections past the limit are closed at accept, refusals are
//! counted, and the WARN lines about them are rate-limited.

use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use trellis_e2e::mesh_kit::{Attempt, Mesh, T};
use trellis_e2e::wait_until;

/// Idle connections opened by the flood (bounded; the proxies' fd limit is far above).
const FLOOD: usize = 2_000;
/// How long the flood may take to open, at most.
const FLOOD_TIME: Duration = Duration::from_secs(60);

/// Opens up to `n` idle TCP connections to `dst` from inside `pod`'s netns,
/// within [`FLOOD_TIME`]. They send nothing.
fn flood(m: &Mesh, pod: &str, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    let start = Instant::now();
    m.netns(pod)
        .run_in(|| {
            let mut conns = Vec::with_capacity(n);
            while conns.len() < n && start.elapsed() < FLOOD_TIME {
                if let Ok(c) = TcpStream::connect_timeout(&dst, T) {
                    conns.push(c);
                }
            }
            conns
        })
        .expect("entering the intruder's netns")
}

fn refused(m: &Mesh, node: &str, reason: &str) -> f64 {
    m.proxy(node)
        .metric("trellis_connections_refused_total", &[("reason", reason)])
}

fn count_lines(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// A connection the proxy closed: EOF or reset on read, not a timeout.
fn closed_by_proxy(mut c: &TcpStream) -> bool {
    c.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 1];
    match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

#[test]
fn idle_flood_past_the_pending_handshake_bound_leaves_real_hbone_traffic_flowing() {
    if !trellis_e2e::require_root() {
        return;
    }
    const PENDING: usize = 64;
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .outsider("node2", "intruder")
        .proxy_args(&["--max-pending-handshakes", "64"])
        .start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let _echo = m.echo("server", 8080);
    let hbone = m.addr("server", 15008);

    let idle = flood(&m, "intruder", hbone, FLOOD);
    assert_eq!(idle.len(), FLOOD, "the flood opened every connection");
    // Cut short by newer ones, or by the short deadline under pressure.
    let cut =
        || refused(&m, "node2", "handshake_evicted") + refused(&m, "node2", "handshake_timeout");
    wait_until(
        Duration::from_secs(30),
        "the flood's handshakes cut short",
        || cut() >= (FLOOD - PENDING) as f64,
    )
    .unwrap_or_else(|e| panic!("{e}: {}", cut()));
    let evicted_by_flood = cut();
    assert!(
        refused(&m, "node2", "handshake_evicted") > 0.0,
        "the bound evicted"
    );
    let pending = m.proxy("node2").metric("trellis_handshakes_pending", &[]);
    assert!(pending <= PENDING as f64, "{pending} pending > {PENDING}");

    // A real client's first connection to the server needs a new HBONE
    // handshake at node2's proxy, in the middle of the flood: it succeeds.
    for i in 0..5 {
        let got = m
            .attempt_echo("client", m.addr("server", 8080), b"real traffic")
            .unwrap_or_else(|e| {
                panic!("echo {i} during the flood: {e}\n{}", m.proxy("node2").log())
            });
        assert_eq!(
            got,
            Attempt::Echoed(b"real traffic".to_vec()),
            "echo {i} during the flood"
        );
    }
    // The evicted flood connections were really closed by the proxy.
    let closed = idle
        .iter()
        .take(100)
        .filter(|c| closed_by_proxy(c))
        .count();
    assert_eq!(closed, 100, "the oldest idle connections were closed");
    drop(idle);

    // One WARN line per interval, not per connection.
    let log = m.proxy("node2").log();
    let rejected = count_lines(&log, "hbone connection rejected");
    assert!(
        (1..=5).contains(&rejected),
        "{rejected} 'hbone connection rejected' lines for {evicted_by_flood} refused handshakes"
    );
    assert!(
        log.contains("suppressed="),
        "the summary line carries the count\n{log}"
    );
}

#[test]
fn connections_past_the_limit_are_closed_at_accept_and_counted() {
    if !trellis_e2e::require_root() {
        return;
    }
    const LIMIT: usize = 100;
    const OPEN: usize = 300;
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .outsider("node2", "intruder")
        .proxy_args(&[
            "--max-connections",
            "100",
            "--max-pending-handshakes",
            "1000",
        ])
        .start()
        .unwrap_or_else(|e| panic!("starting the mesh: {e:#}"));
    let hbone = m.addr("server", 15008);
    // Each pending handshake holds a connection slot; the rest are refused.
    let idle = flood(&m, "intruder", hbone, OPEN);
    assert_eq!(idle.len(), OPEN);
    wait_until(T, "refusals counted", || {
        refused(&m, "node2", "connection_limit") >= (OPEN - LIMIT) as f64
    })
    .unwrap_or_else(|e| panic!("{e}: {}", refused(&m, "node2", "connection_limit")));
    let active = m.proxy("node2").metric("trellis_connections_active", &[]);
    assert!(active <= LIMIT as f64, "{active} active > {LIMIT}");
    // The last ones opened were past the limit: closed at once.
    let closed = idle
        .iter()
        .rev()
        .take(OPEN - LIMIT - 10)
        .filter(|c| closed_by_proxy(c))
        .count();
    assert_eq!(
        closed,
        OPEN - LIMIT - 10,
        "connections past the limit were closed"
    );
    drop(idle);
    let log = m.proxy("node2").log();
    let lines = count_lines(&log, "connection limit reached");
    assert!(
        (1..=3).contains(&lines),
        "{lines} 'connection limit reached' lines for {} refusals",
        refused(&m, "node2", "connection_limit")
    );
}
