//! Connection pool behaviour against a real loopback HBONE server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hbone::{
    client_config, HboneError, Identity, Pool, PoolKey, PoolSettings, PoolStats, WorkloadCert,
};

/// Everything needed to dial one server, plus a count of dials made.
struct Dialer {
    addr: SocketAddr,
    cert: WorkloadCert,
    pki: Arc<Pki>,
    dials: Arc<AtomicUsize>,
}

impl Dialer {
    fn key(&self, expected: &[Identity]) -> PoolKey {
        PoolKey::new(self.cert.identity().clone(), expected.to_vec(), self.addr)
    }

    async fn open(&self, pool: &Pool, key: &PoolKey) -> Result<hbone::H2Stream, HboneError> {
        let (addr, dials) = (self.addr, self.dials.clone());
        let cfg = client_config(&self.cert, &self.pki.bundle, &key.expected)?;
        within(
            pool.connect(key, &request("10.0.0.1:80"), move || async move {
                dials.fetch_add(1, Ordering::SeqCst);
                tls_dial(addr, cfg).await
            }),
        )
        .await
    }

    fn dials(&self) -> usize {
        self.dials.load(Ordering::SeqCst)
    }
}

async fn setup(settings: PoolSettings) -> (Pool, Dialer, TestServer) {
    let pki = Arc::new(Pki::new());
    let server = pki.serve(echo_handler()).await;
    let dialer = Dialer {
        addr: server.addr,
        cert: pki.cert("client"),
        pki,
        dials: Arc::new(AtomicUsize::new(0)),
    };
    (Pool::new(settings), dialer, server)
}

/// Pool stats with `connections` open, carrying `streams` in total.
fn stats(connections: usize, streams: usize) -> PoolStats {
    PoolStats {
        connections,
        streams,
    }
}

fn accepted(server: &mut TestServer) -> usize {
    let mut n = 0;
    while let Ok(ev) = server.events.try_recv() {
        if matches!(ev, ServerEvent::Accepted(_)) {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn reuses_connection_until_stream_limit() {
    let settings = PoolSettings {
        max_streams_per_conn: 3,
        ..PoolSettings::default()
    };
    let (pool, d, mut server) = setup(settings).await;
    let key = d.key(&[id("server")]);
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(d.open(&pool, &key).await.expect("stream"));
    }
    assert_eq!(d.dials(), 1, "three streams share one connection");
    assert_eq!(pool.stats(), stats(1, 3));

    streams.push(d.open(&pool, &key).await.expect("fourth stream"));
    assert_eq!(d.dials(), 2, "limit reached: a second connection");
    assert_eq!(pool.stats(), stats(2, 4));

    // A freed slot on the first connection is reused before dialing again.
    streams.remove(0);
    assert_eq!(pool.stats().streams, 3);
    streams.push(d.open(&pool, &key).await.expect("reuse freed slot"));
    assert_eq!(d.dials(), 2);
    eventually("server saw exactly two tls connections", || {
        accepted(&mut server) == 2
    })
    .await;
}

#[tokio::test]
async fn distinct_keys_get_distinct_connections() {
    let (pool, d, _server) = setup(PoolSettings::default()).await;
    let a = d.key(&[id("server")]);
    let b = d.key(&[id("server"), id("other")]);
    assert_eq!(
        d.key(&[id("other"), id("server")]),
        b,
        "expected identities are sorted"
    );
    let _s1 = d.open(&pool, &a).await.expect("a");
    let _s2 = d.open(&pool, &b).await.expect("b");
    let _s3 = d.open(&pool, &a).await.expect("a again");
    assert_eq!(d.dials(), 2);
    assert_eq!(pool.stats(), stats(2, 3));
}

#[tokio::test]
async fn concurrent_callers_share_one_dial() {
    let (pool, d, _server) = setup(PoolSettings::default()).await;
    let key = d.key(&[id("server")]);
    let (s1, s2, s3) = tokio::join!(
        d.open(&pool, &key),
        d.open(&pool, &key),
        d.open(&pool, &key)
    );
    let _streams = (s1.expect("1"), s2.expect("2"), s3.expect("3"));
    assert_eq!(d.dials(), 1);
    assert_eq!(pool.stats(), stats(1, 3));
}

#[tokio::test]
async fn many_concurrent_callers_all_get_streams() {
    let settings = PoolSettings {
        max_streams_per_conn: 2,
        ..PoolSettings::default()
    };
    let (pool, d, _server) = setup(settings).await;
    let key = d.key(&[id("server")]);
    // Far more callers than one connection takes: several rounds of waiting
    // on other callers' dials must still end in a stream for everyone.
    let opens = (0..25).map(|_| d.open(&pool, &key));
    let streams = futures_util::future::join_all(opens).await;
    let streams: Vec<_> = streams.into_iter().map(|s| s.expect("stream")).collect();
    assert_eq!(pool.stats(), stats(13, 25));
    assert_eq!(d.dials(), 13, "one dial per connection, none wasted");
    drop(streams);
}

#[tokio::test]
async fn failed_dial_is_reported_to_every_waiter() {
    let (pool, d, _server) = setup(PoolSettings::default()).await;
    // Expecting an identity the server does not have: the one shared dial fails.
    let key = d.key(&[id("nobody")]);
    let (r1, r2) = tokio::join!(d.open(&pool, &key), d.open(&pool, &key));
    for r in [r1, r2] {
        match r {
            Err(HboneError::IdentityMismatch { presented, .. }) => {
                assert_eq!(presented, id("server"))
            }
            other => panic!("expected identity mismatch, got {other:?}"),
        }
    }
    assert_eq!(d.dials(), 1);
    assert_eq!(pool.stats(), PoolStats::default());
}

#[tokio::test]
async fn idle_connections_are_evicted_and_closed() {
    let settings = PoolSettings {
        idle_timeout: Duration::from_millis(100),
        ..PoolSettings::default()
    };
    let (pool, d, mut server) = setup(settings).await;
    let busy_key = d.key(&[id("server")]);
    let idle_key = d.key(&[id("server"), id("spare")]);
    let busy = d.open(&pool, &busy_key).await.expect("busy stream");
    drop(d.open(&pool, &idle_key).await.expect("short-lived stream"));
    assert_eq!(pool.stats(), stats(2, 1));
    server.wait_for_accepted(2).await;

    // The idle connection's eviction proves idle_timeout passed and the reaper
    // ran; the busy connection must have survived that same sweep.
    eventually("idle connection evicted", || pool.stats().connections == 1).await;
    assert_eq!(pool.stats(), stats(1, 1));
    // Eviction really closes the connection: the server's serve() returns.
    server.expect_served().await.expect("clean close");

    drop(busy);
    eventually("connection evicted once its last stream ended", || {
        pool.stats() == PoolStats::default()
    })
    .await;
    let _again = d
        .open(&pool, &busy_key)
        .await
        .expect("fresh connection after eviction");
    assert_eq!(d.dials(), 3);
}

#[tokio::test]
async fn closed_connections_are_replaced() {
    let (pool, d, mut server) = setup(PoolSettings::default()).await;
    let key = d.key(&[id("server")]);
    let stream = d.open(&pool, &key).await.expect("stream");
    server.expect_accepted().await;
    server.shutdown();
    drop(stream);
    server
        .expect_served()
        .await
        .expect("graceful shutdown ends the session cleanly");
    let _s = d
        .open(&pool, &key)
        .await
        .expect("new connection replaces the closed one");
    assert_eq!(d.dials(), 2);
    assert_eq!(pool.stats().connections, 1);
}

#[tokio::test]
async fn pool_and_connect_future_are_send() {
    fn send_sync_clone<T: Send + Sync + Clone>(_: &T) {}
    let (pool, d, _server) = setup(PoolSettings::default()).await;
    send_sync_clone(&pool);
    let key = d.key(&[id("server")]);
    // Node-proxy tasks are spawned: the pooled connect must be spawnable.
    let task = tokio::spawn(async move { d.open(&pool, &key).await.map(|_| d.dials()) });
    assert_eq!(within(task).await.expect("join").expect("stream"), 1);
}

#[tokio::test]
async fn a_connection_that_got_goaway_leaves_the_pool_while_its_tunnel_finishes() {
    let (pool, d, mut server) = setup(PoolSettings::default()).await;
    let key = d.key(&[id("server")]);
    let mut old = d.open(&pool, &key).await.expect("stream");
    let signal = old.goaway().expect("a client tunnel has a goaway signal");
    server.expect_accepted().await;
    assert!(!signal.is_set(), "no goaway yet");
    server.shutdown();
    within(signal.wait()).await;
    // New tunnels go to a new connection, not the draining one...
    let fresh = d.open(&pool, &key).await.expect("new tunnel");
    // (The test server sends GOAWAY on the new one at once too; what
    // matters is that the old one was not picked.)
    assert_eq!(d.dials(), 2, "a new connection was dialed");
    // ...while the open tunnel on the old one still carries data.
    assert_eq!(exchange(&mut old, b"still here").await, b"still here");
    server.expect_accepted().await;
    drop(old);
    server
        .expect_served()
        .await
        .expect("the old connection ends cleanly once its tunnel does");
    drop(fresh);
}
