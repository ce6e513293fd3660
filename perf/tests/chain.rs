//! The call-chain harness works through every column's topology: a chain
//! of 3 services on real netns pods, with real node proxies, a real
//! waypoint and real Envoy sidecars, answers with every service's name in
//! order, the open-loop client gets every answer, and each mesh process on
//! the path counted the calls (so none went around the mesh). Functional
//! assertions only; the timings are the bench's (`trellis-bench --only chain`).

use std::time::Duration;

use trellis_e2e::cluster::node_proxy_bin;
use trellis_e2e::waypoint_proc::waypoint_bin;
use trellis_perf::chain::bench::{check_chain, start_services};
use trellis_perf::chain::columns::{Binaries, Column, MeshUp};
use trellis_perf::chain::topo::{Addressing, ChainTopo};
use trellis_perf::l4::http_load::{self, RateConfig};
use trellis_perf::sidecars::envoy::Envoy;

const DEPTH: usize = 3;
const CPU: usize = 0;

#[test]
fn a_three_service_chain_answers_through_every_column() {
    if !trellis_e2e::require_root() {
        return;
    }
    let bins = Binaries {
        node_proxy: node_proxy_bin().unwrap(),
        waypoint: Some(waypoint_bin().unwrap()),
        envoy: Some(Envoy::locate().expect("the pinned Envoy (perf/envoy/install.sh)")),
    };
    let ct = ChainTopo::build().unwrap();
    let client_ns = ct.bt.client.netns().unwrap();
    // (column, mesh processes on the path of 3 services)
    let cases = [
        (Column::Direct, 0),
        (Column::Ambient, 2),
        (Column::AmbientWaypoint, 3),
        (Column::EnvoyL4, 4),
        (Column::EnvoyL7, 4),
        (Column::TrellisSidecar, 4),
    ];
    for (col, procs) in cases {
        let mut mesh =
            MeshUp::start(col, &ct, &bins, CPU).unwrap_or_else(|e| panic!("{}: {e:#}", col.name()));
        assert_eq!(mesh.pids_on_path(&ct, DEPTH).len(), procs, "{}", col.name());
        let hops = start_services(&ct, col, DEPTH, CPU).unwrap();
        // 200 and the body names chain0>chain1>chain2.
        check_chain(&ct, col, DEPTH).unwrap_or_else(|e| panic!("{}: {e:#}", col.name()));

        // The bench's load client against the head: every request answered.
        let head = ct.target(0, col.addressing());
        let r = http_load::fixed_rate(
            &client_ns,
            CPU,
            head,
            RateConfig {
                rate: 100.0,
                duration: Duration::from_millis(300),
                conns: 2,
                timeout: Duration::from_secs(5),
            },
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", col.name()));
        assert_eq!((r.ok, r.errors), (30, 0), "{}", col.name());
        // Every service served the checked call, the warm-up (10 per
        // connection) and the load.
        for h in &hops {
            assert!(
                h.served() >= 51,
                "{}: {} served {}",
                col.name(),
                h.name,
                h.served()
            );
        }
        mesh.check_alive().unwrap();
        mesh.check_carried(&ct, DEPTH)
            .unwrap_or_else(|e| panic!("{}: {e:#}", col.name()));
        assert_eq!(
            col.addressing() == Addressing::Vip,
            col == Column::AmbientWaypoint
        );
        drop(hops);
        drop(mesh);
    }
}
