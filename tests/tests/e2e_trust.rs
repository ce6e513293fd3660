//! What the HBONE port refuses: peers from another trust root, a destination
//! presenting an identity other than the one the config promises, plaintext
//! on 15008, and CONNECT requests for a target that is not the pod.

use std::io::{Read, Write};
use std::sync::Arc;

use hbone::{ClientConn, ConnectRequest, DevCa, H2Settings, HboneError, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trellis_e2e::mesh_kit::{errors, wait_errors, workload_mut, Attempt, Mesh, T};
use trellis_e2e::{connect, connect_async};
use trellis_netns::SocketOpts;

const OPENED: &str = "istio_tcp_connections_opened_total";

/// The client can no longer reach the server through the mesh: the
/// connection closes without data, the app never sees it, and each proxy
/// counts the failure under the given reasons.
fn assert_tunnel_refused(m: &Mesh, client_reason: &str, server_reason: &str) {
    let echo = m.echo("server", 8080);
    let (p1, p2) = (m.proxy("node1"), m.proxy("node2"));
    let (c0, s0) = (errors(p1, client_reason), errors(p2, server_reason));
    let got = m
        .attempt_echo("client", m.addr("server", 8080), b"secret")
        .unwrap_or_else(|e| panic!("{e}\n{}", p1.log()));
    assert_eq!(got, Attempt::Closed, "the tunnel must not carry data");
    wait_errors(p1, client_reason, c0 + 1.0);
    wait_errors(p2, server_reason, s0 + 1.0);
    assert_eq!(echo.accepted(), 0, "no connection may reach the app");
    assert_eq!(
        p2.metric(OPENED, &[("reporter", "destination")]),
        0.0,
        "the server side never admitted a stream"
    );
}

#[test]
fn nodes_with_different_trust_roots_cannot_tunnel() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .own_ca("node2")
        .start()
        .unwrap();
    // The client proxy rejects the server's certificate; the server sees
    // the handshake fail.
    assert_tunnel_refused(&m, "upstream_connect_failed", "unknown_identity");
}

#[test]
fn destination_presenting_another_identity_than_configured_is_refused() {
    if !trellis_e2e::require_root() {
        return;
    }
    // node2 believes the server runs as sa/imposter and presents that
    // identity; node1 expects sa/server.
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .member("node2", "server", "demo", "server")
        .node_config("node2", |cfg| {
            workload_mut(cfg, "server").service_account = "imposter".into()
        })
        .start()
        .unwrap();
    assert_tunnel_refused(&m, "identity_mismatch", "unknown_identity");
    assert!(
        m.proxy("node1").log().contains("sa/imposter"),
        "the client proxy's log names the identity presented:\n{}",
        m.proxy("node1").log()
    );
}

#[test]
fn plaintext_on_the_hbone_port_is_closed_and_counted_and_the_proxy_stays_healthy() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .outsider("node1", "outsider")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap();
    let echo = m.echo("server", 8080);
    let p2 = m.proxy("node2");
    let cases: [(&str, &[u8]); 3] = [
        (
            "http/1.1 request",
            b"GET / HTTP/1.1\r\nHost: server\r\n\r\n",
        ),
        (
            "h2 preface without tls",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ),
        ("binary junk", &[0x00, 0xff, 0x15, 0x03, 0x03, 0x00, 0x02]),
    ];
    for (i, (name, bytes)) in cases.iter().enumerate() {
        let mut s = connect(Some(&m.netns("outsider")), m.addr("server", 15008), T)
            .unwrap_or_else(|e| panic!("{name}: connect to 15008: {e}"));
        // The proxy may close before all of it is written.
        let _ = s.write_all(bytes);
        let mut back = Vec::new();
        match s.read_to_end(&mut back) {
            Ok(_) => assert!(back.is_empty(), "{name}: got {back:?}"),
            Err(e) => assert!(
                trellis_e2e::mesh_kit::is_closed_by_peer(&e),
                "{name}: expected a close, got {e}"
            ),
        }
        wait_errors(p2, "plaintext_on_hbone_port", (i + 1) as f64);
        assert!(p2.ready().unwrap(), "{name}: proxy still ready");
    }
    assert_eq!(echo.accepted(), 0);
    // A normal mesh connection still works afterwards.
    let got = m
        .attempt_echo("client", m.addr("server", 8080), b"still here")
        .unwrap();
    assert_eq!(got, Attempt::Echoed(b"still here".to_vec()));
}

/// An HBONE client with its own certificate from the mesh CA, connecting
/// from `from` (a pod outside the mesh, so nothing captures it).
async fn hbone_client(m: &Mesh, from: &str, to: &str) -> Result<ClientConn, HboneError> {
    let ca = DevCa::load_from_dir(&m.ca).expect("mesh ca loads");
    let me = Identity::new("cluster.local", "demo", "tester");
    let cert = ca.issue(&me, std::time::Duration::from_secs(3600)).unwrap();
    let server = Identity::new("cluster.local", "demo", to);
    let tls = hbone::client_config(&cert, &ca.trust_bundle(), &[server]).unwrap();
    let tcp = connect_async(
        Some(&m.netns(from)),
        m.addr(to, 15008),
        SocketOpts::default(),
        T,
    )
    .await
    .map_err(HboneError::Io)?;
    let tls = hbone::tls_connect(tcp, Arc::clone(&tls)).await?;
    ClientConn::handshake(tls, &H2Settings::default()).await
}

#[test]
fn connect_for_a_target_that_is_not_the_destination_pod_gets_400() {
    if !trellis_e2e::require_root() {
        return;
    }
    let m = Mesh::builder()
        .member("node1", "client", "demo", "client")
        .outsider("node1", "outsider")
        .member("node2", "server", "demo", "server")
        .start()
        .unwrap();
    let server_echo = m.echo("server", 8080);
    let client_echo = m.echo("client", 8080);
    let p2 = m.proxy("node2");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = hbone_client(&m, "outsider", "server").await.unwrap();
        // (target, answer) on one connection: bad targets do not end it.
        let cases = [
            (m.addr("client", 8080), Some(400)),
            (m.addr("outsider", 8080), Some(400)),
            ("198.18.99.99:8080".parse().unwrap(), Some(400)),
            (m.addr("server", 8080), None),
        ];
        let mut malformed = errors(p2, "malformed_connect");
        for (target, refused) in cases {
            let r = tokio::time::timeout(T, conn.connect(&ConnectRequest::new(target)))
                .await
                .unwrap_or_else(|_| panic!("CONNECT {target} timed out"));
            match (r, refused) {
                (Err(HboneError::Status(s)), Some(code)) => {
                    assert_eq!(s.as_u16(), code, "CONNECT {target}");
                    malformed += 1.0;
                    assert_eq!(
                        errors(p2, "malformed_connect"),
                        malformed,
                        "CONNECT {target}"
                    );
                }
                (Ok(mut stream), None) => {
                    stream.write_all(b"through").await.unwrap();
                    stream.shutdown().await.unwrap();
                    let mut back = Vec::new();
                    tokio::time::timeout(T, stream.read_to_end(&mut back))
                        .await
                        .expect("echo in time")
                        .unwrap();
                    assert_eq!(back, b"through", "CONNECT {target}");
                }
                (r, want) => panic!("CONNECT {target}: got {r:?}, want refusal {want:?}"),
            }
        }
    });
    assert_eq!(client_echo.accepted(), 0, "a refused target was reached");
    assert_eq!(server_echo.accepted(), 1);
}
