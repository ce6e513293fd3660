use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trellis_api::config::l7::{Dur, LbAlgorithm, LoadBalancer};

use super::{slow_start, Balancer, IDLE, PASS_EVERY};

const MS: Duration = Duration::from_millis(1);
const WINDOW: Duration = Duration::from_secs(10);

fn ep(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 1, 0, i], 8080))
}

fn eps(n: u8) -> Vec<SocketAddr> {
    (1..=n).map(ep).collect()
}

fn balancer(algorithm: LbAlgorithm, slow_start: Option<Duration>) -> Balancer {
    Balancer::new(&LoadBalancer {
        algorithm,
        slow_start: slow_start.map(Dur),
    })
}

fn rng() -> fastrand::Rng {
    fastrand::Rng::with_seed(0x7e_1115)
}

/// Picks `n` times at `now`, without load; how often each candidate won.
fn shares(b: &Balancer, cands: &[SocketAddr], n: usize, now: Instant) -> Vec<usize> {
    let mut rng = rng();
    let mut counts = vec![0; cands.len()];
    for _ in 0..n {
        counts[b.pick(cands, now, &mut rng).unwrap()] += 1;
    }
    counts
}

#[test]
fn types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Balancer>();
    send_sync::<super::LoadGuard>();
}

#[test]
fn no_candidates_and_one_candidate() {
    let t0 = Instant::now();
    for alg in [LbAlgorithm::PeakEwma, LbAlgorithm::RoundRobin] {
        for ss in [None, Some(WINDOW)] {
            let b = balancer(alg, ss);
            assert_eq!(b.pick(&[], t0, &mut rng()), None, "{alg:?} {ss:?}");
            assert_eq!(b.pick(&[ep(1)], t0, &mut rng()), Some(0), "{alg:?} {ss:?}");
        }
    }
}

#[test]
fn round_robin_spreads_evenly() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::RoundRobin, None);
    assert_eq!(shares(&b, &eps(4), 400, t0), vec![100; 4]);
}

#[test]
fn p2c_prefers_the_faster_endpoint() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    let cands = eps(4);
    let mut rng = rng();
    let mut counts = [0; 4];
    for i in 0..1000u32 {
        let now = t0 + i * MS;
        let k = b.pick(&cands, now, &mut rng).unwrap();
        counts[k] += 1;
        let latency = if k == 0 { MS } else { 20 * MS };
        b.start(cands[k]).finish_at(latency, true, now + latency);
    }
    // The fast one wins whenever it is one of the two drawn: half the time.
    assert!(counts[0] > 420, "{counts:?}");
    for (k, c) in counts.iter().enumerate().skip(1) {
        assert!(*c < 220, "endpoint {k}: {counts:?}");
    }
}

#[test]
fn p2c_avoids_the_endpoint_with_requests_outstanding() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    let cands = eps(2);
    let _busy: Vec<_> = (0..3).map(|_| b.start(ep(1))).collect();
    assert_eq!(b.outstanding(ep(1)), 3);
    assert_eq!(shares(&b, &cands, 100, t0), vec![0, 100]);
}

#[test]
fn p2c_avoids_an_endpoint_that_fails_fast() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    b.start(ep(1)).finish_at(MS, false, t0);
    b.start(ep(2)).finish_at(50 * MS, true, t0);
    assert!(b.latency_estimate(ep(1), t0).unwrap() >= Duration::from_secs(1));
    assert_eq!(shares(&b, &eps(2), 100, t0), vec![0, 100]);
}

#[test]
fn peak_ewma_jumps_up_and_decays_down() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    let est = |now| b.latency_estimate(ep(1), now).unwrap();
    b.start(ep(1)).finish_at(10 * MS, true, t0);
    b.start(ep(1)).finish_at(200 * MS, true, t0);
    assert_eq!(est(t0), 200 * MS, "a peak is taken at once");
    // Fast answers pull it down over seconds, not instantly.
    let mut now = t0;
    for _ in 0..10 {
        now += 100 * MS;
        b.start(ep(1)).finish_at(10 * MS, true, now);
    }
    let after_1s = est(now);
    assert!(after_1s > 150 * MS && after_1s < 200 * MS, "{after_1s:?}");
    for _ in 0..290 {
        now += 100 * MS;
        b.start(ep(1)).finish_at(10 * MS, true, now);
    }
    assert!(est(now) < 11 * MS, "{:?}", est(now));
}

#[test]
fn an_idle_estimate_regresses_to_the_typical_latency() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    b.start(ep(1)).finish_at(500 * MS, true, t0);
    for _ in 0..200 {
        b.start(ep(2)).finish_at(10 * MS, true, t0);
    }
    let later = t0 + Duration::from_secs(60);
    let est = b.latency_estimate(ep(1), later).unwrap();
    // Typical is a balancer-wide average dominated by the 10ms answers.
    assert!(est < 15 * MS, "{est:?}");
}

#[test]
fn guards_count_outstanding_requests() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    let g1 = b.start(ep(1));
    let g2 = b.start(ep(1));
    assert_eq!(b.outstanding(ep(1)), 2);
    g1.finish_at(MS, true, t0);
    assert_eq!(b.outstanding(ep(1)), 1);
    drop(g2);
    assert_eq!(b.outstanding(ep(1)), 0);
    // Dropped without a sample: only the first request's latency is known.
    assert_eq!(b.latency_estimate(ep(1), t0), Some(MS));

    let rr = balancer(LbAlgorithm::RoundRobin, None);
    let _g = rr.start(ep(1));
    assert_eq!(rr.outstanding(ep(1)), 0, "round robin keeps no load");
}

#[test]
fn slow_start_weight_table() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    // (first seen, window, age, weight)
    let cases = [
        (None, Some(WINDOW), s(0), 1.0), // warm
        (Some(t0), None, s(0), 1.0),     // slow start off
        (Some(t0), Some(Duration::ZERO), s(0), 1.0),
        (Some(t0), Some(WINDOW), s(0), slow_start::MIN_WEIGHT),
        (Some(t0), Some(WINDOW), s(1), 0.1),
        (Some(t0), Some(WINDOW), s(5), 0.5),
        (Some(t0), Some(WINDOW), s(10), 1.0),
        (Some(t0), Some(WINDOW), s(100), 1.0),
    ];
    for (first_seen, window, age, want) in cases {
        let got = slow_start::weight(first_seen, window, t0 + age);
        assert!(
            (got - want).abs() < 1e-9,
            "{first_seen:?} {window:?} {age:?}: {got}"
        );
    }
}

#[test]
fn round_robin_slow_start_ramps_a_new_endpoint() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::RoundRobin, Some(WINDOW));
    // The first pick's endpoints are warm.
    b.pick(&eps(4), t0, &mut rng());
    let cands = eps(5);
    let early = shares(&b, &cands, 4100, t0);
    // Weight 0.1 against four of weight 1: about 100 of 4100.
    assert!((50..=160).contains(&early[4]), "{early:?}");
    let half = shares(&b, &cands, 4500, t0 + WINDOW / 2);
    // Weight 0.5 against four of weight 1: about 500 of 4500.
    assert!((400..=600).contains(&half[4]), "{half:?}");
    let full = shares(&b, &cands, 1000, t0 + WINDOW);
    assert_eq!(full, vec![200; 5]);
}

#[test]
fn p2c_slow_start_ramps_a_new_endpoint() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, Some(WINDOW));
    b.pick(&eps(4), t0, &mut rng());
    let cands = eps(5);
    let early = shares(&b, &cands, 1000, t0 + MS);
    assert!(early[4] < 30, "{early:?}");
    let full = shares(&b, &cands, 1000, t0 + WINDOW + MS);
    assert!((150..=250).contains(&full[4]), "{full:?}");
}

#[test]
fn mark_warm_names_the_warm_endpoints() {
    let t0 = Instant::now();
    // Without it, everything in the first pick is warm.
    let b = balancer(LbAlgorithm::RoundRobin, Some(WINDOW));
    assert_eq!(shares(&b, &eps(5), 1000, t0), vec![200; 5]);
    // With it, an endpoint it did not name is new even in the first pick.
    let b = balancer(LbAlgorithm::RoundRobin, Some(WINDOW));
    b.mark_warm(&eps(4), t0);
    let counts = shares(&b, &eps(5), 1000, t0);
    assert!(counts[4] < 60, "{counts:?}");
}

#[test]
fn endpoints_gone_for_long_are_forgotten() {
    let t0 = Instant::now();
    let b = balancer(LbAlgorithm::PeakEwma, None);
    let many: Vec<_> = (1..=100).map(ep).collect();
    b.pick(&many, t0, &mut rng());
    assert_eq!(b.tracked(), 100);
    let held = b.start(ep(50));
    // Still among the candidates after a while: kept.
    b.pick(&many, t0 + PASS_EVERY, &mut rng());
    assert_eq!(b.tracked(), 100);
    // Gone for longer than IDLE: dropped, except one with a request outstanding.
    let later = t0 + PASS_EVERY + IDLE;
    b.pick(&[ep(200), ep(201)], later, &mut rng());
    assert_eq!(b.tracked(), 3);
    drop(held);
    assert_eq!(b.outstanding(ep(50)), 0);
}
