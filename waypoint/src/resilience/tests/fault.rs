use std::time::Duration;

use trellis_api::config::l7::{Dur, Fault, FaultAbort, FaultDelay};

use crate::resilience::fault::{decide, grpc_status_for_http, FaultAction};

const D: Duration = Duration::from_millis(200);

fn fault(delay_percent: Option<f64>, abort_percent: Option<f64>) -> Fault {
    Fault {
        delay: delay_percent.map(|percent| FaultDelay {
            fixed_delay: Dur(D),
            percent,
        }),
        abort: abort_percent.map(|percent| FaultAbort {
            http_status: 503,
            percent,
        }),
    }
}

#[test]
fn decide_table() {
    // (delay %, abort %, delay roll, abort roll, action)
    let cases = [
        (None, None, 0.0, 0.0, FaultAction::None),
        (Some(100.0), None, 0.999, 0.0, FaultAction::Delay(D)),
        (Some(0.0), None, 0.0, 0.0, FaultAction::None),
        (Some(50.0), None, 0.49, 0.0, FaultAction::Delay(D)),
        (Some(50.0), None, 0.5, 0.0, FaultAction::None),
        (None, Some(100.0), 0.0, 0.999, FaultAction::Abort(503)),
        (None, Some(10.0), 0.0, 0.1, FaultAction::None),
        (None, Some(10.0), 0.0, 0.099, FaultAction::Abort(503)),
        (
            Some(100.0),
            Some(100.0),
            0.3,
            0.3,
            FaultAction::DelayThenAbort(D, 503),
        ),
        // The two roll independently.
        (Some(50.0), Some(50.0), 0.9, 0.1, FaultAction::Abort(503)),
        (Some(50.0), Some(50.0), 0.1, 0.9, FaultAction::Delay(D)),
        (Some(f64::NAN), Some(f64::NAN), 0.0, 0.0, FaultAction::None),
        (Some(0.001), None, 0.000_001, 0.0, FaultAction::Delay(D)),
    ];
    for (delay, abort, rd, ra, want) in cases {
        assert_eq!(
            decide(&fault(delay, abort), rd, ra),
            want,
            "delay {delay:?} abort {abort:?} rolls {rd}/{ra}"
        );
    }
}

#[test]
fn zero_delay_is_no_delay() {
    let mut f = fault(Some(100.0), None);
    f.delay.as_mut().unwrap().fixed_delay = Dur(Duration::ZERO);
    assert_eq!(decide(&f, 0.0, 0.0), FaultAction::None);
}

#[test]
fn grpc_status_mapping_table() {
    let cases = [
        (400, 13),
        (401, 16),
        (403, 7),
        (404, 12),
        (429, 14),
        (502, 14),
        (503, 14),
        (504, 14),
        (500, 2),
        (418, 2),
        (200, 2),
    ];
    for (http, grpc) in cases {
        assert_eq!(grpc_status_for_http(http), grpc, "HTTP {http}");
    }
}
