//! Rate limits with GCRA, the generic cell rate algorithm.
//!
//! GCRA keeps one number per bucket, the *theoretical arrival time* (TAT): when
//! the bucket would be empty again if requests kept arriving at exactly the
//! configured rate. With emission interval `T = 1 / requestsPerSecond` and
//! `burst` requests allowed at once, a request at `now` conforms when
//! `max(TAT, now) + T - now <= burst * T`; it then moves TAT to
//! `max(TAT, now) + T`. A rejected request does not move TAT, so callers that
//! keep hammering do not push their own recovery further away.
//!
//! It is a token bucket without the refill bookkeeping: one `u64` per bucket,
//! updated with a compare-and-swap, so the rule-wide limit is lock-free.
//!
//! `burst` is the bucket's size: from idle, `burst` requests pass at once,
//! then one every `T`. A non-positive or NaN rate admits the burst and then
//! (practically) nothing; config validation should reject such a rate, this
//! module only avoids dividing by zero.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ahash::{AHashMap, RandomState};
use trellis_api::config::l7::RateLimit;

/// The emission interval of a rate that admits nothing: about 146 years.
const NEVER_NS: u64 = u64::MAX / 4;

/// A limit in the units GCRA works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Params {
    /// Nanoseconds between two requests at the steady rate (`T`).
    pub(super) emission_ns: u64,
    /// How far TAT may run ahead of now (`burst * T`).
    pub(super) window_ns: u64,
}

impl Params {
    pub(super) fn new(cfg: &RateLimit) -> Params {
        let rps = cfg.requests_per_second;
        let emission_ns = if rps.is_nan() || rps <= 0.0 {
            NEVER_NS
        } else {
            // At least 1ns, so an absurd rate is "unlimited", not a division by zero later.
            (1e9 / rps).ceil().clamp(1.0, NEVER_NS as f64) as u64
        };
        let burst = u64::from(cfg.burst.max(1));
        Params {
            emission_ns,
            window_ns: emission_ns.saturating_mul(burst),
        }
    }
}

/// One GCRA step for a request at `now_ns`: the new TAT if it conforms, else
/// how long until it would (at least 1ms, rounded up to whole milliseconds so
/// a client that waits exactly that long is admitted).
pub(super) fn step(tat_ns: u64, now_ns: u64, p: Params) -> Result<u64, Duration> {
    let next = tat_ns.max(now_ns).saturating_add(p.emission_ns);
    let conforms_at = next.saturating_sub(p.window_ns);
    if conforms_at <= now_ns {
        Ok(next)
    } else {
        Err(round_up_ms(conforms_at - now_ns))
    }
}

fn round_up_ms(ns: u64) -> Duration {
    Duration::from_millis(ns.div_ceil(1_000_000).max(1))
}

fn nanos_since(base: Instant, now: Instant) -> u64 {
    // An instant before the base (another thread read the clock a little
    // earlier) counts as the base: it only makes that request a few
    // nanoseconds less lucky.
    u64::try_from(now.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

/// The value of a `retry-after` header for a wait: whole seconds, rounded up,
/// at least 1 (the header cannot say "sooner than a second").
pub fn retry_after_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// One shared bucket, lock-free: TAT in nanoseconds since `base`.
#[derive(Debug)]
pub struct Gcra {
    params: Params,
    base: Instant,
    tat_ns: AtomicU64,
}

impl Gcra {
    /// `base` is any instant not after the first `check`; times are measured from it.
    pub fn new(cfg: &RateLimit, base: Instant) -> Gcra {
        Gcra {
            params: Params::new(cfg),
            base,
            tat_ns: AtomicU64::new(0),
        }
    }

    /// Admits a request at `now`, or says how long until one would be admitted.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        let now_ns = nanos_since(self.base, now);
        let mut tat = self.tat_ns.load(Ordering::Acquire);
        loop {
            let next = step(tat, now_ns, self.params)?;
            match self
                .tat_ns
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// How many callers a keyed limiter tracks at most.
const MAX_KEYS: usize = 10_000;
/// Shards, so callers on different worker threads rarely share a lock.
const SHARDS: usize = 16;
const KEYS_PER_SHARD: usize = MAX_KEYS / SHARDS;

#[derive(Debug, Default)]
struct Shard {
    tats: AHashMap<Box<str>, u64>,
    /// No entry can be evicted before this instant (the smallest TAT left by
    /// the last sweep), so a table full of active callers is not rescanned on
    /// every new caller.
    next_sweep_ns: u64,
}

impl Shard {
    /// Drops entries whose bucket is full again (TAT not after now): such an
    /// entry decides exactly like an absent key, so nothing is forgotten.
    fn sweep(&mut self, now_ns: u64) {
        if now_ns < self.next_sweep_ns {
            return;
        }
        self.tats.retain(|_, tat| *tat > now_ns);
        self.next_sweep_ns = self.tats.values().copied().min().unwrap_or(0);
    }
}

/// One bucket per caller identity (SPIFFE principal, or source IP without one).
///
/// The table holds at most `MAX_KEYS` callers. When it is full of callers
/// whose buckets are still draining, a new caller is let through untracked
/// (fail open) and a warning is logged once: rejecting it would punish a
/// caller for other callers' traffic, and the rule-wide `rateLimit` remains
/// the backstop against a flood of identities.
#[derive(Debug)]
pub struct KeyedGcra {
    params: Params,
    /// Set by the first `check`, so tests and callers can use any clock origin.
    base: OnceLock<Instant>,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    warned_full: AtomicBool,
}

impl KeyedGcra {
    pub fn new(cfg: &RateLimit) -> KeyedGcra {
        KeyedGcra {
            params: Params::new(cfg),
            base: OnceLock::new(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            warned_full: AtomicBool::new(false),
        }
    }

    /// Admits a request from `key` at `now`, or says how long until one would be admitted.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let now_ns = nanos_since(*self.base.get_or_init(|| now), now);
        let mut shard = self.shard(key);
        if let Some(tat) = shard.tats.get_mut(key) {
            *tat = step(*tat, now_ns, self.params)?;
            return Ok(());
        }
        // A new caller starts with a full bucket, so its first request always passes.
        let tat = step(0, now_ns, self.params)?;
        if shard.tats.len() >= KEYS_PER_SHARD {
            shard.sweep(now_ns);
        }
        if shard.tats.len() >= KEYS_PER_SHARD {
            drop(shard);
            if !self.warned_full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_callers = MAX_KEYS,
                    "per-caller rate limit table is full of active callers; new callers \
                     pass unlimited until entries expire (the rule-wide rateLimit still applies)"
                );
            }
            return Ok(());
        }
        shard.tats.insert(key.into(), tat);
        Ok(())
    }

    /// How many callers are tracked.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        lock(&self.shards[i])
    }
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic elsewhere mid-update leaves at worst one stale TAT; keep limiting.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
