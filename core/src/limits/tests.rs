use super::*;

#[test]
fn default_limits_leave_descriptor_headroom() {
    // (RLIMIT_NOFILE, max connections, max pending handshakes)
    let cases: [(u64, usize, usize); 5] = [
        (1024, 384, 96),
        (20_000, 9_000, 1024),
        (65_536, 29_491, 1024),
        (1_048_576, 471_859, 1024),
        (100, 1, 1),
    ];
    for (nofile, conns, pending) in cases {
        let l = Limits::resolve(0, 0, nofile);
        assert_eq!(l.max_connections, conns, "nofile {nofile}");
        assert_eq!(l.max_pending_handshakes, pending, "nofile {nofile}");
        assert!(
            (l.max_connections as u64) * FDS_PER_CONNECTION < nofile.max(2),
            "nofile {nofile}"
        );
    }
    assert_eq!(
        Limits::resolve(10, 3, 1024),
        Limits {
            max_connections: 10,
            max_pending_handshakes: 3
        },
        "flags win"
    );
}

#[test]
fn handshakes_get_the_short_timeout_from_half_the_bound() {
    let cases: [(usize, usize, Duration); 5] = [
        (0, 100, HANDSHAKE_TIMEOUT),
        (49, 100, HANDSHAKE_TIMEOUT),
        (50, 100, PRESSURE_HANDSHAKE_TIMEOUT),
        (99, 100, PRESSURE_HANDSHAKE_TIMEOUT),
        (0, 1, HANDSHAKE_TIMEOUT),
    ];
    for (pending, max, want) in cases {
        assert_eq!(handshake_timeout(pending, max), want, "{pending}/{max}");
    }
}

fn limiter(max_connections: usize, max_pending: usize) -> (Arc<ConnLimits>, Registry) {
    let registry = Registry::new();
    let l = ConnLimits::new(
        Limits {
            max_connections,
            max_pending_handshakes: max_pending,
        },
        &registry,
    );
    (l, registry)
}

fn refused(registry: &Registry, reason: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "trellis_connections_refused_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[test]
fn connections_past_the_limit_are_refused_and_counted_until_one_ends() {
    let (l, reg) = limiter(2, 10);
    let a = l.try_connection().expect("first");
    let _b = l.try_connection().expect("second");
    assert!(l.try_connection().is_none());
    assert!(l.try_connection().is_none());
    assert_eq!(refused(&reg, "connection_limit"), 2);
    drop(a);
    assert_eq!(l.active(), 1);
    let _c = l.try_connection().expect("a slot freed");
}

#[tokio::test]
async fn the_oldest_pending_handshake_is_evicted_past_the_bound() {
    let (l, reg) = limiter(100, 2);
    let first = l.begin_handshake();
    let second = l.begin_handshake();
    assert_eq!(
        second.timeout(),
        PRESSURE_HANDSHAKE_TIMEOUT,
        "1 of 2 pending"
    );
    // A third pushes out the first, not itself or the second.
    let _third = l.begin_handshake();
    tokio::time::timeout(Duration::from_secs(5), first.evicted())
        .await
        .expect("the oldest was evicted");
    assert_eq!(refused(&reg, "handshake_evicted"), 1);
    // A finished handshake is never the one evicted.
    drop(second);
    let _fourth = l.begin_handshake();
    let fifth = l.begin_handshake();
    assert_eq!(refused(&reg, "handshake_evicted"), 2);
    drop(first);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), fifth.evicted())
            .await
            .is_err(),
        "the newest stays"
    );
}

#[test]
fn the_queue_stays_bounded_when_handshakes_finish_in_order() {
    let (l, _reg) = limiter(100, 10);
    for _ in 0..10_000 {
        drop(l.begin_handshake());
    }
    let held = l.begin_handshake();
    assert!(
        l.lock().queue.len() <= 2 * 64 + 1,
        "{}",
        l.lock().queue.len()
    );
    assert_eq!(l.lock().count, 1);
    drop(held);
    assert_eq!(l.lock().count, 0);
}
