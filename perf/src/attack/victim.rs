//! Another tenant's steady traffic through the proxy under attack: HTTP/1.1
//! requests at a fixed rate on kept-alive connections (the open-loop
//! generator of the L7 bench, latency from the scheduled time), and a new
//! connection every [`FRESH_EVERY`] (each one a new HBONE stream through
//! the mesh), both checked (status 200 and the whole body).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use trellis_netns::NetNs;

use crate::harness::hist::{self, Summary};
use crate::l7::client::{Target, HTTP_PATH};
use crate::l7::load::{self, LoadResult, RateConfig, Watch};
use crate::l7::HTTP_BODY_BYTES;

/// Time between the starts of two new-connection requests.
pub const FRESH_EVERY: Duration = Duration::from_millis(25);
/// Kept-alive requests per second, over [`KEEPALIVE_CONNS`] connections.
pub const KEEPALIVE_RATE: f64 = 200.0;
pub const KEEPALIVE_CONNS: usize = 4;

/// The victim's figures over one window.
#[derive(Debug, Clone, Default)]
pub struct Victim {
    pub keepalive: Summary,
    pub keepalive_sent: u64,
    pub keepalive_errors: u64,
    pub fresh: Summary,
    pub fresh_sent: u64,
    pub fresh_errors: u64,
    /// New-connection slots passed over because the previous request was
    /// still running (each still shows in the latency of the one that ran).
    pub fresh_skipped: u64,
    pub error_kinds: BTreeMap<String, u64>,
}

impl Victim {
    pub fn errors(&self) -> u64 {
        self.keepalive_errors + self.fresh_errors
    }

    pub fn to_json(&self) -> Value {
        json!({
            "keepalive": {"sent": self.keepalive_sent, "errors": self.keepalive_errors, "latency": self.keepalive.to_json()},
            "new_connections": {"sent": self.fresh_sent, "errors": self.fresh_errors, "skipped_slots": self.fresh_skipped, "latency": self.fresh.to_json()},
            "error_kinds": self.error_kinds,
        })
    }
}

/// Runs both kinds of victim traffic from `ns` for `duration`, threads on `cpu`.
pub fn run(ns: &NetNs, cpu: usize, target: &Target, duration: Duration) -> Result<Victim> {
    let cfg = RateConfig {
        rate: KEEPALIVE_RATE,
        duration,
        conns: KEEPALIVE_CONNS,
        warmup: 3,
        timeout: Duration::from_secs(5),
    };
    let fresh_ns = ns.try_clone()?;
    let fresh_target = target.clone();
    let fresh = std::thread::spawn(move || fresh_loop(&fresh_ns, cpu, &fresh_target, duration));
    let ka: Result<LoadResult> = load::fixed_rate(ns, cpu, target, cfg, &Watch::default());
    let (fh, fsent, ferr, fskip, fkinds) = fresh
        .join()
        .map_err(|_| anyhow::anyhow!("the victim's new-connection thread panicked"))??;
    let ka = ka?;
    let mut kinds = ka.error_kinds.clone();
    for (k, v) in fkinds {
        *kinds.entry(format!("new connection: {k}")).or_default() += v;
    }
    Ok(Victim {
        keepalive: ka.latency,
        keepalive_sent: ka.sent,
        keepalive_errors: ka.errors,
        fresh: Summary::of(&fh),
        fresh_sent: fsent,
        fresh_errors: ferr,
        fresh_skipped: fskip,
        error_kinds: kinds,
    })
}

type Fresh = (Histogram<u64>, u64, u64, u64, BTreeMap<String, u64>);

/// One new connection and one GET every [`FRESH_EVERY`], latency from the
/// scheduled start; bounded by `duration` and the client's own timeout.
fn fresh_loop(ns: &NetNs, cpu: usize, target: &Target, duration: Duration) -> Result<Fresh> {
    crate::harness::sys::pin_current_thread(cpu)?;
    let mut h = hist::new_ns();
    let (mut sent, mut errors, mut skipped) = (0u64, 0u64, 0u64);
    let mut kinds = BTreeMap::new();
    let t0 = Instant::now();
    let mut due = t0;
    while due < t0 + duration {
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sent += 1;
        let r = trellis_e2e::l7kit::http1_request(
            Some(ns),
            target.dst,
            "GET",
            HTTP_PATH,
            &[("host", target.authority.as_str())],
            b"",
        );
        match r {
            Ok(reply) if reply.status == 200 && reply.body.len() == HTTP_BODY_BYTES => {
                hist::record(&mut h, due.elapsed());
            }
            Ok(reply) => {
                errors += 1;
                *kinds.entry(format!("status {}", reply.status)).or_default() += 1;
            }
            Err(e) => {
                errors += 1;
                let k: String = e.to_string().chars().take(80).collect();
                *kinds.entry(k).or_default() += 1;
            }
        }
        due += FRESH_EVERY;
        // Behind schedule by more than a period (a slow answer): skip the
        // missed slots rather than firing them back to back.
        while due + FRESH_EVERY < Instant::now() {
            due += FRESH_EVERY;
            skipped += 1;
        }
    }
    Ok((h, sent, errors, skipped, kinds))
}
