//! Per-connection state must stay small: every open connection holds one of
//! these futures, so their size is the proxy's memory per connection (before
//! socket buffers). Growth here is a regression to look at, not to wave by.

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use trellis_api::config::LocalConfig;
use trellis_core::metrics::Metrics;
use trellis_core::state::{ProxyState, StateStore};
use trellis_node_proxy::certs::CertManager;
use trellis_node_proxy::context::{ProxyCtx, Scope, WorkerCtx};
use trellis_node_proxy::settings::Settings;
use trellis_node_proxy::{inbound, inbound_plain, outbound};

fn size_of_future<F: Future>(_: &F) -> usize {
    std::mem::size_of::<F>()
}

/// Upper bounds per handler future, with headroom over today's sizes (the
/// test prints them); they catch an accidental inline buffer or handshake.
/// The HBONE session holds the h2 server connection and is shared by up to
/// 100 streams, so it may be larger than a per-connection future.
const MAX_OUTBOUND: usize = 2048;
const MAX_PLAINTEXT: usize = 1024;
const MAX_HBONE_SESSION: usize = 10 * 1024;

#[tokio::test]
async fn connection_futures_stay_small() {
    let settings = Settings::parse_from(["p", "--config", "x.yaml", "--ca-dir", "ca"]);
    let (_trigger, drain) = trellis_core::drain::new();
    let ca = hbone::DevCa::generate("cluster.local").unwrap();
    let proxy = Arc::new(ProxyCtx {
        settings,
        state: Arc::new(StateStore::new(
            ProxyState::new(LocalConfig::default()).unwrap(),
        )),
        metrics: Metrics::new(),
        certs: Arc::new(CertManager::dev(ca, None)),
        drain,
        limits: trellis_core::limits::ConnLimits::new(
            trellis_core::limits::Limits::resolve(0, 0, 1024),
            &prometheus::Registry::new(),
        ),
        shutdown: CancellationToken::new(),
        h2: hbone::H2Settings::default(),
        transparent_ok: AtomicBool::new(true),
        on_demand: Some(trellis_core::source::OnDemand::default()),
    });
    let ctx = Arc::new(WorkerCtx::new(proxy, 0));
    let scope = Arc::new(Scope::new("w".into(), None, false));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        streams.push((c, s));
    }
    let mut it = streams.into_iter().map(|(_, s)| s);
    let out = outbound::handle(ctx.clone(), it.next().unwrap(), addr, scope.clone(), None);
    let inb = inbound::handle(ctx.clone(), it.next().unwrap(), addr, scope.clone());
    let plain = inbound_plain::handle(ctx.clone(), it.next().unwrap(), addr, scope.clone());
    let sizes = [
        ("outbound", size_of_future(&out), MAX_OUTBOUND),
        (
            "inbound hbone session",
            size_of_future(&inb),
            MAX_HBONE_SESSION,
        ),
        ("inbound plaintext", size_of_future(&plain), MAX_PLAINTEXT),
    ];
    println!("connection future sizes: {sizes:?}");
    for (name, size, max) in sizes {
        assert!(
            size <= max,
            "{name} connection future is {size} bytes (> {max}); box the rare paths"
        );
    }
}
