//! The node proxy's capture rules (`redirect`), socket helpers (`netns`) and
//! SO_ORIGINAL_DST (`sockopt`) in real pod namespaces: what the app sends is
//! captured, the proxy's own marked traffic is not, inbound lands on the
//! right listener, and the transparent connect keeps the client's IP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_e2e::{connect_async, require_root, Identity, TestServer, Topology};
use trellis_netns::redirect::{self, RedirectConfig, ROUTE_TABLE, RULE_PREF};
use trellis_netns::sockopt;
use trellis_netns::{self as netns, ListenOpts, NetNs, SocketOpts};

const T: Duration = Duration::from_secs(5);
const MARK: u32 = 0x539;

/// client and other on node1, server on node2.
fn topology() -> Topology {
    Topology::builder()
        .pod("node1", "client")
        .pod("node1", "other")
        .pod("node2", "server")
        .build()
        .expect("building the topology")
}

fn ns_of(topo: &Topology, pod: &str) -> (NetNs, IpAddr) {
    let p = topo.pod(pod).expect("pod exists");
    (p.netns().expect("opening the pod netns"), p.ip)
}

/// A proxy-style listener on 0.0.0.0:`port` inside `ns`, as the node proxy makes them.
fn proxy_listener(ns: &NetNs, port: u16) -> TcpListener {
    let opts = ListenOpts {
        reuse_port: true,
        ..ListenOpts::default()
    };
    netns::tcp_listener(
        Some(ns),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        opts,
    )
    .expect("proxy listener")
}

/// Accepts one connection within the deadline (the listener is nonblocking).
async fn accept_one(l: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    let l = tokio::net::TcpListener::from_std(l.try_clone().unwrap()).unwrap();
    tokio::time::timeout(T, l.accept())
        .await
        .expect("no connection arrived at the proxy listener in time")
        .unwrap()
}

fn assert_nothing_pending(l: &TcpListener, what: &str) {
    let e = l.accept().map(|(_, peer)| peer).expect_err(what);
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{what}: {e}");
}

#[tokio::test(flavor = "current_thread")]
async fn outbound_tcp_is_captured_with_its_original_destination() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (client, client_ip) = ns_of(&topo, "client");
    let (_, server_ip) = ns_of(&topo, "server");
    redirect::install(&client, &RedirectConfig::default()).unwrap();
    let outbound = proxy_listener(&client, 15001);

    // The "app": a plain connect from inside the client pod to the server pod.
    let dst = SocketAddr::new(server_ip, 80);
    let (app, (mut proxied, peer)) = tokio::join!(
        connect_async(Some(&client), dst, SocketOpts::default(), T),
        accept_one(&outbound)
    );
    let mut app = app.expect("the app's connect is answered by the proxy listener");
    assert_eq!(peer.ip(), client_ip);
    let local = proxied.local_addr().unwrap();
    assert_eq!(
        local,
        SocketAddr::from(([127, 0, 0, 1], 15001)),
        "output-hook redirect goes to loopback"
    );
    assert_eq!(sockopt::original_dst(&proxied, local).unwrap(), dst);
    // The captured connection carries data both ways.
    app.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    proxied.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    proxied.write_all(b"pong").await.unwrap();
    app.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");

    // Traffic over lo (127/8 and the pod's own IP) stays with the app.
    let lo_app =
        TestServer::identity(Some(&client), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let own_app = TestServer::identity(Some(&client), SocketAddr::new(client_ip, 0)).unwrap();
    for app in [&lo_app, &own_app] {
        let mut s = connect_async(Some(&client), app.addr(), SocketOpts::default(), T)
            .await
            .unwrap();
        assert_eq!(
            Identity::read_from_async(&mut s).await.unwrap().local,
            app.addr()
        );
    }
    assert_nothing_pending(&outbound, "loopback traffic must not be captured");
}

#[tokio::test(flavor = "current_thread")]
async fn the_proxys_marked_sockets_are_not_captured() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (client, client_ip) = ns_of(&topo, "client");
    let (server, server_ip) = ns_of(&topo, "server");
    redirect::install(&client, &RedirectConfig::default()).unwrap();
    let outbound = proxy_listener(&client, 15001);
    let real = TestServer::identity(Some(&server), SocketAddr::new(server_ip, 80)).unwrap();

    let opts = SocketOpts {
        mark: Some(MARK),
        nodelay: true,
        ..SocketOpts::default()
    };
    let mut upstream = connect_async(Some(&client), real.addr(), opts, T)
        .await
        .unwrap();
    assert_eq!(sockopt::mark(&upstream).unwrap(), MARK);
    let seen = Identity::read_from_async(&mut upstream).await.unwrap();
    assert_eq!(
        seen.local,
        real.addr(),
        "marked connection reached the real destination"
    );
    assert_eq!(seen.peer.ip(), client_ip);
    assert_nothing_pending(&outbound, "marked traffic must not be captured");
}

#[tokio::test(flavor = "current_thread")]
async fn inbound_goes_to_15006_except_hbone_on_15008() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (server, server_ip) = ns_of(&topo, "server");
    let (other, other_ip) = ns_of(&topo, "other");
    redirect::install(&server, &RedirectConfig::default()).unwrap();
    let plain = proxy_listener(&server, 15006);
    let hbone = proxy_listener(&server, 15008);

    let dst = SocketAddr::new(server_ip, 8080);
    let (conn, (accepted, peer)) = tokio::join!(
        connect_async(Some(&other), dst, SocketOpts::default(), T),
        accept_one(&plain)
    );
    conn.unwrap();
    assert_eq!(peer.ip(), other_ip);
    let local = accepted.local_addr().unwrap();
    assert_eq!(
        local,
        SocketAddr::new(server_ip, 15006),
        "prerouting redirect keeps the pod's address"
    );
    assert_eq!(sockopt::original_dst(&accepted, local).unwrap(), dst);

    let dst = SocketAddr::new(server_ip, 15008);
    let (conn, (accepted, peer)) = tokio::join!(
        connect_async(Some(&other), dst, SocketOpts::default(), T),
        accept_one(&hbone)
    );
    conn.unwrap();
    assert_eq!(peer.ip(), other_ip);
    assert_eq!(accepted.local_addr().unwrap(), dst);
    assert_nothing_pending(&plain, "HBONE must not be redirected to 15006");
}

#[tokio::test(flavor = "current_thread")]
async fn transparent_connect_keeps_the_client_ip_only_with_reply_routing() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (server, server_ip) = ns_of(&topo, "server");
    let (_, client_ip) = ns_of(&topo, "client");
    let app = TestServer::identity(Some(&server), SocketAddr::new(server_ip, 8080)).unwrap();
    let opts = SocketOpts {
        mark: Some(MARK),
        transparent_src: Some(SocketAddr::new(client_ip, 0)),
        nodelay: true,
    };

    redirect::install(&server, &RedirectConfig::default()).unwrap();
    let mut conn = connect_async(Some(&server), app.addr(), opts, T)
        .await
        .expect("transparent connect establishes with the reply routing installed");
    assert_eq!(conn.local_addr().unwrap().ip(), client_ip);
    assert!(sockopt::is_transparent(&conn, false).unwrap());
    let seen = Identity::read_from_async(&mut conn).await.unwrap();
    assert_eq!(
        seen.peer.ip(),
        client_ip,
        "the app sees the original client's IP"
    );
    assert_eq!(seen.local, app.addr());

    // Without the rules the app's SYN-ACK is routed out of eth0 to the real
    // client, so the handshake cannot complete: the routing is what makes it work.
    redirect::remove(&server).unwrap();
    let short = Duration::from_millis(1500);
    let r = connect_async(Some(&server), app.addr(), opts, short).await;
    assert!(
        r.is_err(),
        "transparent connect succeeded without reply routing"
    );
}

fn fwmark_rules(topo: &Topology, pod: &str) -> usize {
    let rules = topo.exec(pod, &["ip", "-4", "rule", "show"]).unwrap();
    rules
        .lines()
        .filter(|l| l.starts_with(&format!("{RULE_PREF}:")))
        .count()
}

#[tokio::test(flavor = "current_thread")]
async fn install_is_idempotent_and_remove_restores_plain_behaviour() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (client, client_ip) = ns_of(&topo, "client");
    let (server, server_ip) = ns_of(&topo, "server");
    let cfg = RedirectConfig::default();
    redirect::install(&client, &cfg).unwrap();
    redirect::install(&client, &cfg).unwrap();
    let table = topo
        .exec("client", &["nft", "list", "table", "inet", "trellis"])
        .unwrap();
    for want in [
        "redirect to :15001",
        "redirect to :15006",
        "tcp dport 15008 return",
        "ct mark set 0x0000053a",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
    assert_eq!(table.matches("redirect to :15001").count(), 1, "{table}");
    assert_eq!(
        fwmark_rules(&topo, "client"),
        1,
        "reinstall must not stack rules"
    );
    let table_routes = topo
        .exec(
            "client",
            &[
                "ip",
                "-4",
                "route",
                "show",
                "table",
                &ROUTE_TABLE.to_string(),
            ],
        )
        .unwrap();
    assert!(
        table_routes.contains("local default dev lo"),
        "{table_routes}"
    );

    redirect::remove(&client).unwrap();
    redirect::remove(&client).unwrap();
    let tables = topo.exec("client", &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("trellis"), "{tables}");
    assert_eq!(fwmark_rules(&topo, "client"), 0);

    // Plain behaviour: the app's connection reaches the real server directly.
    let outbound = proxy_listener(&client, 15001);
    let real = TestServer::identity(Some(&server), SocketAddr::new(server_ip, 80)).unwrap();
    let mut s = connect_async(Some(&client), real.addr(), SocketOpts::default(), T)
        .await
        .unwrap();
    let seen = Identity::read_from_async(&mut s).await.unwrap();
    assert_eq!((seen.peer.ip(), seen.local), (client_ip, real.addr()));
    assert_nothing_pending(&outbound, "nothing is captured after remove");
}

#[test]
fn install_into_a_bad_config_fails_without_touching_the_pod() {
    if !require_root() {
        return;
    }
    let topo = topology();
    let (client, _) = ns_of(&topo, "client");
    let bad = RedirectConfig {
        proxy_mark: 0,
        ..RedirectConfig::default()
    };
    let e = redirect::install(&client, &bad).unwrap_err();
    assert!(
        e.to_string().contains("invalid capture configuration"),
        "{e}"
    );
    let tables = topo.exec("client", &["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("trellis"), "{tables}");
}

// The ruleset text and config checks need no root.

#[test]
fn default_ruleset_has_each_capture_rule_in_order() {
    let text = redirect::rules_text(&RedirectConfig::default());
    assert!(text.starts_with("table inet trellis {"), "{text}");
    for want in [
        "type nat hook prerouting priority -100",
        "tcp dport 15008 return",
        "redirect to :15006",
        "type nat hook output priority -100",
        "meta mark 0x539 return",
        "redirect to :15001",
        "type route hook output priority -150",
        "meta mark 0x539 oifname \"lo\" ct state new ct mark set 0x53a",
        "ct direction reply ct mark 0x53a meta mark set 0x53a",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // lo and the proxy's mark are exempt before any redirect.
    let at = |s: &str| text.find(s).unwrap();
    assert!(at("iifname \"lo\" return") < at("redirect to :15006"));
    assert!(at("oifname \"lo\" return") < at("redirect to :15001"));
    assert!(at("meta mark 0x539 return") < at("redirect to :15001"));
}

#[test]
fn ruleset_follows_the_config() {
    let cfg = RedirectConfig {
        outbound_port: 1001,
        inbound_plain_port: 1006,
        hbone_port: 1008,
        proxy_mark: 0x10,
    };
    let text = redirect::rules_text(&cfg);
    for want in [
        "redirect to :1001",
        "redirect to :1006",
        "dport 1008 return",
        "meta mark 0x10 return",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("1500"), "{text}");
}

#[test]
fn bad_configs_are_refused_with_reasons() {
    let with = |f: fn(&mut RedirectConfig)| {
        let mut c = RedirectConfig::default();
        f(&mut c);
        c.validate()
            .expect_err("config should be refused")
            .to_string()
    };
    assert!(with(|c| c.outbound_port = 0).contains("non-zero"));
    assert!(with(|c| c.hbone_port = 15001).contains("must differ"));
    assert!(with(|c| c.proxy_mark = 0).contains("unmarked"));
    assert!(with(|c| c.proxy_mark = redirect::REPLY_MARK).contains("collides"));
    assert!(RedirectConfig::default().validate().is_ok());
}
