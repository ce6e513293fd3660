use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::serve::Relay;
use super::*;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[test]
fn parses_flags_and_reports_every_problem() {
    let tls_files = "--cert-chain c.pem --key k.pem --root r.pem";
    // (flags, Ok(mode, role, mark, buffer, has tls) or the error fragments)
    type Want = Result<(Mode, Role, u32, usize, bool), Vec<&'static str>>;
    let cases: Vec<(String, Want)> = vec![
        (
            "--mode tcp --role outbound --listen 127.0.0.1:15001".into(),
            Ok((Mode::Tcp, Role::Outbound, DEFAULT_MARK, DEFAULT_BUFFER, false)),
        ),
        (
            "--mode splice --role inbound --listen 0.0.0.0:15006 --mark 0 --buffer 1048576".into(),
            Ok((Mode::Splice, Role::Inbound, 0, 1 << 20, false)),
        ),
        (
            "--mode uring --role outbound --listen 127.0.0.1:15001".into(),
            Ok((Mode::Uring, Role::Outbound, DEFAULT_MARK, DEFAULT_BUFFER, false)),
        ),
        (
            "--mode uring-fixed --role inbound --listen 0.0.0.0:15006".into(),
            Ok((Mode::UringFixed, Role::Inbound, DEFAULT_MARK, DEFAULT_BUFFER, false)),
        ),
        (
            "--mode uring-zc --role inbound --listen 0.0.0.0:15006 --buffer 65536".into(),
            Ok((Mode::UringZc, Role::Inbound, DEFAULT_MARK, 65536, false)),
        ),
        (
            format!("--mode uring --role outbound --listen 127.0.0.1:15001 {tls_files}"),
            Err(vec!["for --mode tls and uring-tls only"]),
        ),
        (
            format!("--mode uring-tls --role outbound --listen 127.0.0.1:15001 {tls_files} --peer-id spiffe://td/ns/n/sa/s"),
            Ok((Mode::UringTls, Role::Outbound, DEFAULT_MARK, DEFAULT_BUFFER, true)),
        ),
        (
            "--mode uring-tls --role inbound --listen 0.0.0.0:15006".into(),
            Err(vec!["--mode uring-tls needs --cert-chain, --key and --root"]),
        ),
        (
            format!("--mode tls --role inbound --listen 0.0.0.0:15006 {tls_files} --mark 0x53b"),
            Ok((Mode::Tls, Role::Inbound, 0x53b, DEFAULT_BUFFER, true)),
        ),
        (
            format!("--mode tls --role outbound --listen 127.0.0.1:15001 {tls_files} --peer-id spiffe://td/ns/n/sa/s"),
            Ok((Mode::Tls, Role::Outbound, DEFAULT_MARK, DEFAULT_BUFFER, true)),
        ),
        ("".into(), Err(vec!["--mode is required", "--role is required", "--listen is required"])),
        (
            "--mode udp --role sideways --listen nowhere".into(),
            Err(vec!["--mode \"udp\"", "--role \"sideways\"", "--listen \"nowhere\""]),
        ),
        (
            "--mode tls --role inbound --listen 0.0.0.0:15006".into(),
            Err(vec!["needs --cert-chain, --key and --root"]),
        ),
        (
            format!("--mode tls --role outbound --listen 127.0.0.1:15001 {tls_files}"),
            Err(vec!["needs --peer-id"]),
        ),
        (
            format!("--mode tcp --role outbound --listen 127.0.0.1:15001 {tls_files}"),
            Err(vec!["for --mode tls and uring-tls only"]),
        ),
        (
            "--mode tcp --role outbound --listen 127.0.0.1:15001 --buffer 12 --mark x --bogus 1".into(),
            Err(vec!["--buffer \"12\"", "--mark \"x\"", "unknown flag --bogus"]),
        ),
        (
            "--mode tcp --role outbound --listen".into(),
            Err(vec!["--listen needs a value"]),
        ),
    ];
    for (flags, want) in cases {
        let got = parse_args(&args(&flags));
        match (got, want) {
            (Ok(c), Ok((mode, role, mark, buffer, tls))) => {
                assert_eq!(
                    (c.mode, c.role, c.mark, c.buffer, c.tls.is_some()),
                    (mode, role, mark, buffer, tls),
                    "{flags}"
                );
            }
            (Err(e), Err(fragments)) => {
                let msg = e.to_string();
                for f in fragments {
                    assert!(msg.contains(f), "{flags}: {msg:?} lacks {f:?}");
                }
                assert!(msg.contains("usage: trellis-relay"), "{msg}");
            }
            (got, want) => panic!("{flags}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn upstream_is_the_original_destination_unless_it_loops() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    let peer = a("10.0.1.2:40000");
    let pod = a("10.0.2.2:15006");
    let lo = a("127.0.0.1:15001");
    // (role, local, original, Ok(dst) or the error's name)
    type Case = (
        Role,
        SocketAddr,
        Option<SocketAddr>,
        Result<SocketAddr, &'static str>,
    );
    let cases: [Case; 7] = [
        (
            Role::Outbound,
            lo,
            Some(a("10.0.2.2:5201")),
            Ok(a("10.0.2.2:5201")),
        ),
        (
            Role::Inbound,
            pod,
            Some(a("10.0.2.2:5201")),
            Ok(a("10.0.2.2:5201")),
        ),
        (Role::Outbound, lo, None, Err("NotRedirected")),
        (Role::Inbound, pod, None, Err("NotRedirected")),
        // A direct connection to the inbound relay's port is redirected to itself.
        (Role::Inbound, pod, Some(pod), Err("Loop")),
        (
            Role::Outbound,
            lo,
            Some(a("127.0.0.1:8080")),
            Err("Loopback"),
        ),
        // Another pod's port that happens to equal ours is no loop.
        (
            Role::Outbound,
            lo,
            Some(a("10.0.2.2:15001")),
            Ok(a("10.0.2.2:15001")),
        ),
    ];
    for (role, local, original, want) in cases {
        let got = upstream(role, local.port(), peer, local, original);
        match (got, want) {
            (Ok(d), Ok(w)) => assert_eq!(d, w, "{role:?} {original:?}"),
            (Err(e), Err(name)) => {
                assert!(
                    format!("{e:?}").starts_with(name),
                    "{role:?} {original:?}: {e:?}"
                )
            }
            (got, want) => panic!("{role:?} {original:?}: got {got:?}, want {want:?}"),
        }
    }
}

/// An echo server on loopback; its address.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Starts `relay` on loopback relaying every connection to `dst`; its
/// address and a channel with each connection's result.
async fn serve_to(
    relay: Relay,
    dst: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<serve::Copied, RelayError>>,
) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let (relay, tx) = (relay.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tx.send(relay.relay_to(s, peer, dst).await);
            });
        }
    });
    (addr, rx)
}

fn relay(mode: Mode, role: Role, tls: Option<TlsFiles>) -> Relay {
    Relay::new(RelayConfig {
        mode,
        role,
        listen: "127.0.0.1:0".parse().unwrap(),
        mark: 0,
        buffer: 64 * 1024,
        tls,
    })
    .unwrap()
}

/// Certificates of `client` and `server` (service accounts) from one dev CA.
fn identities(dir: &std::path::Path) -> (TlsFiles, TlsFiles) {
    let ca = hbone::DevCa::generate("cluster.local").unwrap();
    let files = |sa: &str, peer: Option<String>| {
        let d = dir.join(sa);
        std::fs::create_dir_all(&d).unwrap();
        let c = crate::sidecars::mesh::write_identity(
            &ca,
            &hbone::Identity::new("cluster.local", "bench", sa),
            &d,
        )
        .unwrap();
        TlsFiles {
            chain: c.chain,
            key: c.key,
            root: c.root,
            peer_id: peer,
        }
    };
    let server = files("server", None);
    let client = files(
        "client",
        Some("spiffe://cluster.local/ns/bench/sa/server".into()),
    );
    (client, server)
}

/// Sends `n` bytes through `addr` and reads them all back.
async fn round_trip(addr: SocketAddr, n: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let recv = r.read_to_end(&mut got);
    let ((), read) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(send, recv) })
            .await
            .expect("round trip within 20 s");
    read.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");
    got
}

#[tokio::test]
async fn tls_pairs_relay_both_ways_and_count_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = identities(dir.path());
    let app = echo().await;
    for mode in [Mode::Tls, Mode::UringTls] {
        let (inbound, mut in_results) =
            serve_to(relay(mode, Role::Inbound, Some(server.clone())), app).await;
        let (outbound, mut out_results) =
            serve_to(relay(mode, Role::Outbound, Some(client.clone())), inbound).await;
        for n in [3 << 20, 1] {
            round_trip(outbound, n).await;
            for rx in [&mut out_results, &mut in_results] {
                let c = rx.recv().await.unwrap().unwrap();
                assert_eq!((c.up, c.down), (n as u64, n as u64), "{mode:?}");
            }
        }
    }
}

/// Each TLS mode's outbound relay with the other's inbound one: the ring's
/// records are rustls's records, whoever reads them.
#[tokio::test]
async fn tls_and_uring_tls_relays_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let (client, server) = identities(dir.path());
    let app = echo().await;
    for (out_mode, in_mode) in [(Mode::UringTls, Mode::Tls), (Mode::Tls, Mode::UringTls)] {
        let (inbound, mut in_results) =
            serve_to(relay(in_mode, Role::Inbound, Some(server.clone())), app).await;
        let (outbound, mut out_results) = serve_to(
            relay(out_mode, Role::Outbound, Some(client.clone())),
            inbound,
        )
        .await;
        round_trip(outbound, 2 << 20).await;
        for rx in [&mut out_results, &mut in_results] {
            let c = rx.recv().await.unwrap().unwrap();
            assert_eq!(
                (c.up, c.down),
                (2 << 20, 2 << 20),
                "{out_mode:?} to {in_mode:?}"
            );
        }
    }
}

#[tokio::test]
async fn plaintext_peer_on_the_uring_tls_relay_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server) = identities(dir.path());
    let app = echo().await;
    let (inbound, mut results) =
        serve_to(relay(Mode::UringTls, Role::Inbound, Some(server)), app).await;
    let mut s = TcpStream::connect(inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), results.recv())
        .await
        .expect("refused within 10 s")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, RelayError::Handshake { side: "server", .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn tcp_splice_and_uring_relay_both_ways() {
    let app = echo().await;
    for mode in [
        Mode::Tcp,
        Mode::Splice,
        Mode::Uring,
        Mode::UringFixed,
        Mode::UringZc,
    ] {
        let (inbound, mut in_results) = serve_to(relay(mode, Role::Inbound, None), app).await;
        let (outbound, mut out_results) =
            serve_to(relay(mode, Role::Outbound, None), inbound).await;
        round_trip(outbound, 5 << 20).await;
        for rx in [&mut out_results, &mut in_results] {
            let c = rx.recv().await.unwrap().unwrap();
            assert_eq!((c.up, c.down), (5 << 20, 5 << 20), "{mode:?}");
        }
    }
}

#[tokio::test]
async fn plaintext_peer_on_the_tls_relay_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_, server) = identities(dir.path());
    let app = echo().await;
    let (inbound, mut results) = serve_to(relay(Mode::Tls, Role::Inbound, Some(server)), app).await;
    let mut s = TcpStream::connect(inbound).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // The relay answers with an alert or just closes; it never relays the bytes.
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("the relay closes the connection");
    assert!(
        !buf.windows(3).any(|w| w == b"GET"),
        "plaintext came back: {buf:?}"
    );
    let e = results.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(e, RelayError::Handshake { side: "server", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("does not speak TLS"), "{e}");
}

#[tokio::test]
async fn outbound_tls_relay_refuses_a_server_with_another_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (mut client, server) = identities(dir.path());
    client.peer_id = Some("spiffe://cluster.local/ns/bench/sa/someone-else".into());
    let app = echo().await;
    let (inbound, _in_results) = serve_to(relay(Mode::Tls, Role::Inbound, Some(server)), app).await;
    let (outbound, mut results) =
        serve_to(relay(Mode::Tls, Role::Outbound, Some(client)), inbound).await;
    let mut s = TcpStream::connect(outbound).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let e = results.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(e, RelayError::Handshake { side: "client", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("someone-else"), "{e}");
}

#[test]
fn bad_certificate_files_fail_at_start_not_at_the_first_connection() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsFiles {
        chain: dir.path().join("none.pem"),
        key: dir.path().join("none.key"),
        root: dir.path().join("root.pem"),
        peer_id: None,
    };
    let e = Relay::new(RelayConfig {
        mode: Mode::Tls,
        role: Role::Inbound,
        listen: "127.0.0.1:0".parse().unwrap(),
        mark: 0,
        buffer: DEFAULT_BUFFER,
        tls: Some(missing),
    })
    .err()
    .expect("missing files are an error");
    assert!(e.to_string().contains("none.pem"), "{e}");
}

#[test]
fn every_mode_parses_back_from_its_name() {
    for m in Mode::ALL {
        assert_eq!(Mode::parse(m.name()), Some(m));
    }
    assert_eq!(Mode::parse("io_uring"), None);
}

/// Several connections at once through one ring, each with its own bytes.
#[tokio::test]
async fn uring_relays_concurrent_connections() {
    let app = echo().await;
    for mode in [Mode::Uring, Mode::UringZc] {
        let (inbound, mut in_results) = serve_to(relay(mode, Role::Inbound, None), app).await;
        let (outbound, mut out_results) =
            serve_to(relay(mode, Role::Outbound, None), inbound).await;
        let sizes = [1usize, 70_000, 1 << 20, 3 << 20];
        let trips: Vec<_> = sizes
            .iter()
            .map(|&n| tokio::spawn(round_trip(outbound, n)))
            .collect();
        for t in trips {
            t.await.unwrap();
        }
        for rx in [&mut out_results, &mut in_results] {
            let mut got: Vec<u64> = Vec::new();
            for _ in sizes {
                let c = rx.recv().await.unwrap().unwrap();
                assert_eq!(c.up, c.down, "{mode:?}");
                got.push(c.up);
            }
            got.sort();
            let want: Vec<u64> = sizes.iter().map(|&n| n as u64).collect();
            assert_eq!(got, want, "{mode:?}");
        }
    }
}

/// An app that resets the connection mid-transfer: the io_uring relay
/// ends the connection with the error and the bytes so far, and does not hang.
#[tokio::test]
async fn uring_relay_ends_a_connection_the_app_resets() {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1000];
            let _ = s.read_exact(&mut buf).await;
            // Closing with unread bytes received sends RST.
            drop(s);
        }
    });
    for mode in [Mode::Uring, Mode::UringFixed, Mode::UringZc] {
        let (addr, mut results) = serve_to(relay(mode, Role::Inbound, None), app).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let data = vec![7u8; 8 << 20];
        // The relay's send to the reset app fails; so, soon, do ours.
        let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&data)).await;
        let r = tokio::time::timeout(Duration::from_secs(20), results.recv())
            .await
            .expect("the relay ends the connection within 20 s")
            .unwrap();
        match r {
            Err(RelayError::Copy { up, .. }) => assert!(up < 8 << 20, "{mode:?}: up={up}"),
            other => panic!("{mode:?}: {other:?}"),
        }
    }
}
