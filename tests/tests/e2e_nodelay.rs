//! Every socket the node proxies and the waypoint accept or open on the data
//! path has TCP_NODELAY. Without it a response that an app writes in two
//! pieces (headers, then body) waits for the peer's delayed ACK: a 40 ms
//! stall per request on keep-alive connections.
//!
//! Read from the real processes' sockets (`sockinspect`, pidfd_getfd) while
//! connections of every kind are open through them.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};

use trellis_e2e::l7kit::HttpServer;
use trellis_e2e::mesh_kit::{use_waypoint_pod, Mesh, T};
use trellis_e2e::sockinspect::{describe, tcp_sockets, TcpSock};
use trellis_e2e::{connect, TestServer};

const HBONE: u16 = 15008;

fn vip() -> IpAddr {
    "198.19.100.30".parse().unwrap()
}

fn mesh() -> Mesh {
    Mesh::builder()
        .member("node1", "client", "demo", "client")
        .outsider("node1", "outsider")
        .member("node2", "server", "demo", "server")
        .member("node2", "e1", "demo", "web")
        .waypoint("node2", "wp", "demo", "waypoint")
        .service("web", vip(), &[(80, 8080)], &["e1"])
        .configure(|cfg| use_waypoint_pod(cfg, "web", "wp"))
        .start()
        .unwrap()
}

/// One byte there and back, so every hop of the connection is established.
fn echo_byte(s: &mut TcpStream) {
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

/// One keep-alive HTTP/1.1 request; the connection stays open afterwards.
fn http_get_keep_alive(s: &mut TcpStream) -> String {
    s.write_all(b"GET /nodelay HTTP/1.1\r\nhost: web.demo\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        let Some(end) = text.find("\r\n\r\n") else {
            continue;
        };
        let len: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .expect("response without content-length");
        if got.len() >= end + 4 + len {
            return text;
        }
    }
}

/// The sockets of `pid` that `is_kind` picks: at least one, all with TCP_NODELAY.
fn assert_kind(what: &str, socks: &[TcpSock], is_kind: impl Fn(&TcpSock) -> bool) {
    let picked: Vec<&TcpSock> = socks.iter().filter(|s| is_kind(s)).collect();
    assert!(
        !picked.is_empty(),
        "{what}: no such socket in the process:\n{}",
        describe(socks)
    );
    for s in picked {
        assert!(
            s.nodelay,
            "{what}: TCP_NODELAY is off on {s}\n{}",
            describe(socks)
        );
    }
}

/// Beyond the named kinds: every connected socket has Nagle off, except
/// those accepted by the admin, metrics and readiness servers (the
/// listeners not on a data-path port).
fn assert_all_data_path(proc: &str, socks: &[TcpSock]) {
    let admin: Vec<SocketAddr> = socks
        .iter()
        .filter(|s| s.listening && ![15001, 15006, HBONE].contains(&s.local.port()))
        .map(|s| s.local)
        .collect();
    for s in socks.iter().filter(|s| !s.listening && s.peer.is_some()) {
        if admin.contains(&s.local) {
            continue;
        }
        assert!(
            s.nodelay,
            "{proc}: TCP_NODELAY is off on {s}\n{}",
            describe(socks)
        );
    }
}

#[test]
fn every_data_path_socket_of_the_node_proxies_and_the_waypoint_has_nodelay() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = mesh();
    let server_echo = m.addr("server", 9000);
    let _echo = TestServer::echo(Some(&m.netns("server")), server_echo).unwrap();
    let _web = HttpServer::start(Some(&m.netns("e1")), m.addr("e1", 8080), "e1").unwrap();

    // Mesh client -> server: outbound capture and HBONE out on node1,
    // HBONE in and upstream on node2.
    let mut meshed = connect(Some(&m.netns("client")), server_echo, T).unwrap();
    echo_byte(&mut meshed);
    // Non-mesh client -> server: plaintext inbound (15006) and upstream on node2.
    let mut plain = connect(Some(&m.netns("outsider")), server_echo, T).unwrap();
    echo_byte(&mut plain);
    // Mesh client -> service behind the waypoint, kept alive: the
    // waypoint's HBONE in (from node1) and out (to e1's proxy on node2).
    let mut via_wp = connect(Some(&m.netns("client")), SocketAddr::new(vip(), 80), T).unwrap();
    let resp = http_get_keep_alive(&mut via_wp);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");

    let node1 = tcp_sockets(m.proxy("node1").pid()).unwrap();
    let node2 = tcp_sockets(m.proxy("node2").pid()).unwrap();
    let wp = tcp_sockets(m.waypoint("wp").pid()).unwrap();

    let meshed_src = meshed.local_addr().unwrap();
    let plain_src = plain.local_addr().unwrap();
    let wp_src = via_wp.local_addr().unwrap();
    assert_kind("node1 outbound capture (15001), to the pod", &node1, |s| {
        s.peer == Some(meshed_src)
    });
    assert_kind(
        "node1 outbound capture (15001), to the waypoint's service",
        &node1,
        |s| s.peer == Some(wp_src),
    );
    assert_kind("node1 hbone out", &node1, |s| {
        s.peer.is_some_and(|p| p.port() == HBONE)
    });
    assert_kind("node2 hbone in", &node2, |s| {
        !s.listening && s.local.port() == HBONE
    });
    assert_kind("node2 inbound plaintext (15006)", &node2, |s| {
        s.peer == Some(plain_src)
    });
    assert_kind("node2 upstream to the app", &node2, |s| {
        s.peer == Some(server_echo)
    });
    assert_kind("node2 upstream to the waypoint's endpoint", &node2, |s| {
        s.peer == Some(m.addr("e1", 8080))
    });
    assert_kind("waypoint hbone in", &wp, |s| {
        !s.listening && s.local.port() == HBONE
    });
    assert_kind("waypoint hbone out", &wp, |s| {
        s.peer.is_some_and(|p| p.port() == HBONE)
    });
    assert_all_data_path("node1", &node1);
    assert_all_data_path("node2", &node2);
    assert_all_data_path("waypoint", &wp);

    // The connections still work after the inspection.
    echo_byte(&mut meshed);
    echo_byte(&mut plain);
    assert!(http_get_keep_alive(&mut via_wp).starts_with("HTTP/1.1 200"));
}
