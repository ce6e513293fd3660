use std::time::{Duration, Instant};

use trellis_api::config::l7::RateLimit;

use crate::resilience::ratelimit::{retry_after_secs, step, Gcra, KeyedGcra, Params};

const MS: Duration = Duration::from_millis(1);

fn limit(rps: f64, burst: u32) -> RateLimit {
    RateLimit {
        requests_per_second: rps,
        burst,
    }
}

#[test]
fn params_from_config() {
    // (rps, burst, emission ns, window ns)
    let cases = [
        (10.0, 3, 100_000_000, 300_000_000),
        (3.0, 1, 333_333_334, 333_333_334),
        (1000.0, 0, 1_000_000, 1_000_000), // burst 0 means 1
        (1e12, 5, 1, 5),                   // absurd rates are unlimited, not a panic
    ];
    for (rps, burst, emission_ns, window_ns) in cases {
        let p = Params::new(&limit(rps, burst));
        assert_eq!(
            p,
            Params {
                emission_ns,
                window_ns
            },
            "rps {rps} burst {burst}"
        );
    }
    for bad in [0.0, -1.0, f64::NAN] {
        assert!(
            Params::new(&limit(bad, 1)).emission_ns > 1_000_000_000_000_000_000,
            "{bad}"
        );
    }
}

#[test]
fn step_table() {
    let p = Params {
        emission_ns: 100,
        window_ns: 300,
    };
    // (tat, now, result)
    let cases: [(u64, u64, Result<u64, Duration>); 6] = [
        (0, 0, Ok(100)),       // idle bucket
        (0, 5_000, Ok(5_100)), // TAT in the past counts as now
        (200, 0, Ok(300)),     // third of a burst of three
        (300, 0, Err(MS)),     // fourth: 100ns to wait, rounded up to 1ms
        (300, 100, Ok(400)),   // one emission interval later
        (
            u64::MAX,
            0,
            Err(Duration::from_millis((u64::MAX - 300).div_ceil(1_000_000))),
        ),
    ];
    for (tat, now, want) in cases {
        assert_eq!(step(tat, now, p), want, "tat {tat} now {now}");
    }
}

#[test]
fn burst_then_reject_with_retry_after() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(10.0, 3), t0);
    for i in 0..3 {
        assert_eq!(g.check(t0), Ok(()), "burst request {i}");
    }
    assert_eq!(g.check(t0), Err(100 * MS));
    assert_eq!(g.check(t0 + 40 * MS), Err(60 * MS));
    assert_eq!(g.check(t0 + 100 * MS), Ok(()));
    assert_eq!(g.check(t0 + 100 * MS), Err(100 * MS));
}

#[test]
fn retry_after_rounds_up_to_the_millisecond() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(3.0, 1), t0);
    assert_eq!(g.check(t0), Ok(()));
    assert_eq!(g.check(t0), Err(334 * MS));
    // Waiting exactly the advertised time is enough.
    assert_eq!(g.check(t0 + 334 * MS), Ok(()));
}

#[test]
fn refills_over_time_up_to_the_burst_only() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(10.0, 3), t0);
    for _ in 0..3 {
        g.check(t0).unwrap();
    }
    g.check(t0).unwrap_err();
    // 250ms refill two slots, not three.
    let t = t0 + 250 * MS;
    assert_eq!(g.check(t), Ok(()));
    assert_eq!(g.check(t), Ok(()));
    assert_eq!(g.check(t), Err(50 * MS));
    // A long idle period refills the burst, and no more.
    let t = t0 + Duration::from_secs(60);
    for _ in 0..3 {
        assert_eq!(g.check(t), Ok(()));
    }
    assert_eq!(g.check(t), Err(100 * MS));
}

#[test]
fn rejected_requests_do_not_delay_recovery() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(10.0, 1), t0);
    g.check(t0).unwrap();
    for _ in 0..100 {
        g.check(t0 + 10 * MS).unwrap_err();
    }
    assert_eq!(g.check(t0 + 100 * MS), Ok(()));
}

#[test]
fn instants_before_the_base_count_as_the_base() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(10.0, 1), t0 + Duration::from_secs(1));
    assert_eq!(g.check(t0), Ok(()));
    assert_eq!(g.check(t0), Err(100 * MS));
}

#[test]
fn concurrent_checks_admit_exactly_the_burst() {
    let t0 = Instant::now();
    let g = Gcra::new(&limit(1.0, 100), t0);
    let admitted: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| s.spawn(|| (0..1000).filter(|_| g.check(t0).is_ok()).count()))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert_eq!(admitted, 100);
}

#[test]
fn retry_after_header_seconds() {
    let cases = [
        (Duration::ZERO, 1),
        (MS, 1),
        (Duration::from_secs(1), 1),
        (Duration::from_millis(1001), 2),
        (Duration::from_secs(2), 2),
        (Duration::from_secs(90), 90),
    ];
    for (d, secs) in cases {
        assert_eq!(retry_after_secs(d), secs, "{d:?}");
    }
}

#[test]
fn keyed_limits_are_per_caller() {
    let t0 = Instant::now();
    let k = KeyedGcra::new(&limit(1.0, 2));
    assert!(k.is_empty());
    assert_eq!(k.check("spiffe://td/ns/a/sa/x", t0), Ok(()));
    assert_eq!(k.check("spiffe://td/ns/a/sa/x", t0), Ok(()));
    assert_eq!(k.check("spiffe://td/ns/a/sa/x", t0), Err(1000 * MS));
    // Another caller has its own bucket.
    assert_eq!(k.check("10.0.0.7", t0), Ok(()));
    assert_eq!(k.check("10.0.0.7", t0), Ok(()));
    assert_eq!(k.check("10.0.0.7", t0), Err(1000 * MS));
    assert_eq!(k.len(), 2);
    assert_eq!(k.check("spiffe://td/ns/a/sa/x", t0 + 1000 * MS), Ok(()));
}

#[test]
fn keyed_table_is_bounded_and_fails_open_for_new_callers() {
    let t0 = Instant::now();
    let k = KeyedGcra::new(&limit(1.0, 1));
    for i in 0..20_000 {
        assert_eq!(k.check(&format!("caller-{i}"), t0), Ok(()), "caller {i}");
    }
    let full = k.len();
    assert!((9_000..=10_000).contains(&full), "{full} callers tracked");
    // The first caller got a slot in its shard, so it is still limited.
    assert!(k.check("caller-0", t0).is_err());
    // Once buckets have refilled, their entries make room for new callers.
    let later = t0 + Duration::from_secs(2);
    for i in 0..1000 {
        assert_eq!(k.check(&format!("late-{i}"), later), Ok(()));
    }
    // (With 1000 new callers every shard has swept, short of odds of 1e-27.)
    assert_eq!(k.len(), 1000);
    assert_eq!(k.check("late-0", later), Err(1000 * MS));
}
