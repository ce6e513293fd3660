//! Retry delays: exponential, capped, with jitter so that components
//! restarted together (or many watches of one process) do not all hit a
//! recovering API server in the same instant.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// Back to the first delay, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay, with fresh randomness.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(fastrand::f64())
    }

    /// The next delay for a `unit` in [0, 1): between half and all of the
    /// capped exponential step ("equal jitter": never near zero, so a
    /// failing server is not hammered).
    pub(crate) fn next_with(&mut self, unit: f64) -> Duration {
        let step = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(16)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        // (unit, expected delay) in order of attempts.
        let cases = [
            (0.0, ms(50)),
            (1.0, ms(200)),
            (0.5, ms(300)),
            (0.0, ms(400)),
            (1.0, ms(1000)),
            (0.0, ms(500)),
        ];
        for (i, (unit, want)) in cases.into_iter().enumerate() {
            assert_eq!(b.next_with(unit), want, "attempt {i}");
        }
        for _ in 0..100 {
            assert!(b.next_with(1.0) <= ms(1000));
        }
        b.reset();
        assert_eq!(b.next_with(1.0), ms(100));
    }
}
