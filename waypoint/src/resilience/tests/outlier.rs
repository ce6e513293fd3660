use std::net::SocketAddr;
use std::time::{Duration, Instant};

use trellis_api::config::l7::{Dur, OutlierDetection};

use crate::resilience::outlier::{
    ejection_time, Outcome, OutlierDetector, IDLE, MAX_EJECTION, MAX_TRACKED,
};

const BASE: Duration = Duration::from_secs(30);
const S: Duration = Duration::from_secs(1);

fn cfg(
    consecutive_5xx: u32,
    consecutive_connect_failures: u32,
    max_percent: u32,
) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx,
        consecutive_connect_failures,
        base_ejection_time: Dur(BASE),
        max_ejection_percent: max_percent,
    }
}

fn ep(i: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080))
}

/// Reports `outcome` `n` times for `e` (of 4 endpoints); the last result.
fn report_n(
    d: &OutlierDetector,
    e: SocketAddr,
    outcome: Outcome,
    n: u32,
    now: Instant,
) -> Option<Duration> {
    (0..n)
        .map(|_| d.report(e, outcome, 4, now))
        .last()
        .flatten()
}

#[test]
fn ejects_after_consecutive_server_errors() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(3, 2, 50));
    assert_eq!(d.report(ep(1), Outcome::ServerError, 4, t0), None);
    assert_eq!(d.report(ep(1), Outcome::ServerError, 4, t0), None);
    assert!(!d.is_ejected(ep(1), t0));
    assert_eq!(d.report(ep(1), Outcome::ServerError, 4, t0), Some(BASE));
    assert!(d.is_ejected(ep(1), t0));
    assert!(!d.is_ejected(ep(2), t0));
    assert_eq!(d.ejected_now(t0), 1);
}

#[test]
fn streaks_table() {
    use Outcome::{ConnectFailure as C, ServerError as E, Success as K};
    // consecutive5xx 3, consecutiveConnectFailures 2: (outcomes, ejected by the last one)
    let cases: [(&[Outcome], bool); 7] = [
        (&[E, E, E], true),
        (&[E, E, K, E, E], false), // a success breaks the streak
        (&[C, C], true),
        (&[C, K, C], false),
        (&[E, C, E, C], true), // streaks count separately; neither breaks the other
        (&[C, E, E, E], true),
        (&[K, K, E, E], false),
    ];
    let t0 = Instant::now();
    for (outcomes, ejected) in cases {
        let d = OutlierDetector::new(&cfg(3, 2, 50));
        let last = outcomes
            .iter()
            .map(|&o| d.report(ep(1), o, 4, t0))
            .last()
            .flatten();
        assert_eq!(last.is_some(), ejected, "{outcomes:?}");
        assert_eq!(d.is_ejected(ep(1), t0), ejected, "{outcomes:?}");
    }
}

#[test]
fn zero_threshold_turns_a_detector_off() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(0, 2, 50));
    assert_eq!(report_n(&d, ep(1), Outcome::ServerError, 100, t0), None);
    assert_eq!(
        report_n(&d, ep(1), Outcome::ConnectFailure, 2, t0),
        Some(BASE)
    );
}

#[test]
fn ejection_ends_after_its_time_with_clean_streaks() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(3, 2, 50));
    report_n(&d, ep(1), Outcome::ServerError, 3, t0).unwrap();
    // Answers to requests sent before the ejection do not count.
    assert_eq!(report_n(&d, ep(1), Outcome::ServerError, 10, t0 + S), None);
    assert!(d.is_ejected(ep(1), t0 + BASE - Duration::from_millis(1)));
    let back = t0 + BASE;
    assert!(!d.is_ejected(ep(1), back));
    assert_eq!(d.ejected_now(back), 0);
    assert_eq!(report_n(&d, ep(1), Outcome::ServerError, 2, back), None);
}

#[test]
fn each_ejection_lasts_longer_then_the_count_decays() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(3, 2, 50));
    let mut now = t0;
    for n in 1..=3 {
        let dur = report_n(&d, ep(1), Outcome::ServerError, 3, now).unwrap();
        assert_eq!(dur, BASE * n, "ejection {n}");
        now += dur + S;
    }
    // Back for two base periods: the count drops from 3 to 1.
    now += 2 * BASE;
    assert_eq!(
        report_n(&d, ep(1), Outcome::ServerError, 3, now),
        Some(2 * BASE)
    );
    // Back for long enough to forget everything; a success then drops the entry.
    now += 2 * BASE + 10 * BASE;
    assert_eq!(d.report(ep(1), Outcome::Success, 4, now), None);
    assert_eq!(d.tracked(), 0);
}

#[test]
fn ejection_time_table() {
    let cases = [
        (BASE, 1, BASE),
        (BASE, 2, 2 * BASE),
        (BASE, 10, MAX_EJECTION),
        (BASE, 11, MAX_EJECTION),
        (BASE, u32::MAX, MAX_EJECTION),
        (Duration::from_secs(400), 1, Duration::from_secs(400)), // a base above the cap is kept
        (Duration::from_secs(400), 3, Duration::from_secs(400)),
        (Duration::ZERO, 5, Duration::ZERO),
    ];
    for (base, n, want) in cases {
        assert_eq!(ejection_time(base, n), want, "base {base:?} n {n}");
    }
}

#[test]
fn max_ejection_percent_is_respected() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(1, 1, 50));
    // 50% of 4 endpoints: two may be out at once.
    assert!(d.report(ep(1), Outcome::ServerError, 4, t0).is_some());
    assert!(d.report(ep(2), Outcome::ServerError, 4, t0).is_some());
    assert_eq!(d.report(ep(3), Outcome::ServerError, 4, t0), None);
    assert_eq!(d.ejected_now(t0), 2);
    assert!(!d.is_ejected(ep(3), t0));
    // Once the first two are back, the still-failing third goes.
    assert_eq!(
        d.report(ep(3), Outcome::ServerError, 4, t0 + BASE),
        Some(BASE)
    );
}

#[test]
fn percent_rounding_down_to_zero_ejects_nothing() {
    let t0 = Instant::now();
    // (endpoints, max percent, may eject one)
    let cases = [
        (1, 50, false),
        (1, 100, true),
        (2, 50, true),
        (3, 10, false),
        (10, 10, true),
    ];
    for (endpoints, percent, ejects) in cases {
        let d = OutlierDetector::new(&cfg(1, 1, percent));
        let got = d.report(ep(1), Outcome::ConnectFailure, endpoints, t0);
        assert_eq!(got.is_some(), ejects, "{endpoints} endpoints at {percent}%");
    }
}

#[test]
fn healthy_endpoints_are_not_tracked() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(3, 2, 50));
    for i in 0..100 {
        d.report(ep(i), Outcome::Success, 100, t0);
    }
    assert_eq!(d.tracked(), 0);
    d.report(ep(1), Outcome::ServerError, 100, t0);
    assert_eq!(d.tracked(), 1);
    d.report(ep(1), Outcome::Success, 100, t0);
    assert_eq!(d.tracked(), 0);
}

#[test]
fn tracking_is_bounded_and_idle_entries_are_swept() {
    let t0 = Instant::now();
    let d = OutlierDetector::new(&cfg(3, 2, 50));
    let n = MAX_TRACKED as u16;
    for i in 0..n + 10 {
        d.report(ep(i), Outcome::ServerError, 10_000, t0);
    }
    assert_eq!(d.tracked(), MAX_TRACKED);
    // Untracked endpoints are simply never ejected.
    assert_eq!(report_n(&d, ep(n + 1), Outcome::ServerError, 5, t0), None);
    let later = t0 + IDLE + S;
    d.report(ep(n + 1), Outcome::ServerError, 10_000, later);
    assert_eq!(d.tracked(), 1);
}
