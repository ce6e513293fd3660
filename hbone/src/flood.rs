//! Bounding a peer's SETTINGS frames on a server connection.
//!
//! Every SETTINGS frame obliges the receiver to apply it and send an ACK,
//! and h2 does so without limit: an authenticated peer sending SETTINGS
//! back to back (1.6 million in 5 s in trellis-attack-bench) keeps the
//! proxy busy acknowledging them for as long as it likes. A real peer
//! sends one at the start and rarely another. So the server's transport
//! wrapper follows the frame headers it reads (a few integer operations
//! per frame, nothing per byte) and ends the connection when the peer's
//! SETTINGS pass a token bucket: [`SETTINGS_BURST`] at once, refilled at
//! [`SETTINGS_PER_SEC`].

use std::time::Instant;

use crate::frames::{FrameHeaders, ACK, SETTINGS};

/// SETTINGS frames a peer may send at once.
pub const SETTINGS_BURST: f64 = 100.0;
/// SETTINGS frames per second a peer may keep sending after the burst.
pub const SETTINGS_PER_SEC: f64 = 10.0;

/// The peer passed the bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the peer sent {frames} SETTINGS frames, more than {SETTINGS_BURST} at once or \
     {SETTINGS_PER_SEC} a second (a SETTINGS flood); closing its connection"
)]
pub struct SettingsFlood {
    /// SETTINGS frames (not ACKs) seen on the connection.
    pub frames: u64,
}

/// Counts the SETTINGS frames a server reads and keeps them in the bucket.
#[derive(Debug)]
pub(crate) struct SettingsGuard {
    headers: FrameHeaders,
    bucket: Bucket,
}

/// The token bucket and the count, apart from the scanning.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    frames: u64,
}

impl Bucket {
    /// Takes a token for one SETTINGS frame seen at `t`.
    fn take(&mut self, t: Instant) -> Result<(), SettingsFlood> {
        self.frames += 1;
        let refill = t.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = t;
        self.tokens = (self.tokens + refill * SETTINGS_PER_SEC).min(SETTINGS_BURST) - 1.0;
        self.check()
    }

    fn check(&self) -> Result<(), SettingsFlood> {
        if self.tokens < 0.0 {
            return Err(SettingsFlood {
                frames: self.frames,
            });
        }
        Ok(())
    }
}

impl SettingsGuard {
    pub(crate) fn new() -> SettingsGuard {
        SettingsGuard {
            headers: FrameHeaders::from_client(),
            bucket: Bucket {
                tokens: SETTINGS_BURST,
                refilled: Instant::now(),
                frames: 0,
            },
        }
    }

    /// Feeds bytes just read, in order; an error once the peer's SETTINGS
    /// frames pass the bound (and on every call after).
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), SettingsFlood> {
        self.feed_at(bytes, Instant::now)
    }

    fn feed_at(&mut self, bytes: &[u8], now: impl Fn() -> Instant) -> Result<(), SettingsFlood> {
        self.bucket.check()?;
        let bucket = &mut self.bucket;
        self.headers.feed(bytes, |h| {
            if h.kind == SETTINGS && h.flags & ACK == 0 {
                bucket.take(now())?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::frames::{test_frame as frame, TEST_PREFACE};

    /// (case, SETTINGS frames, spacing between them, ACKs and other
    /// frames between them, bytes fed per call, flood expected)
    #[test]
    fn settings_past_the_bucket_end_the_connection() {
        let cases: &[(&str, usize, Duration, bool, usize, bool)] = &[
            ("one at the start", 1, Duration::ZERO, false, 4096, false),
            (
                "a burst at the bound",
                100,
                Duration::ZERO,
                false,
                4096,
                false,
            ),
            ("one past the burst", 101, Duration::ZERO, false, 4096, true),
            (
                "a flood fed a byte at a time",
                500,
                Duration::ZERO,
                false,
                1,
                true,
            ),
            (
                "many, but at the refill rate",
                1_000,
                Duration::from_millis(100),
                false,
                4096,
                false,
            ),
            (
                "ACKs and other frames do not count",
                100,
                Duration::ZERO,
                true,
                7,
                false,
            ),
        ];
        for &(name, n, spacing, others, chunk, want_flood) in cases {
            let t0 = Instant::now();
            let mut g = SettingsGuard::new();
            let mut r = g.feed_at(TEST_PREFACE, || t0);
            for i in 0..n {
                let at = t0 + spacing * i as u32;
                let mut bytes = frame(SETTINGS, 0, 6);
                if others {
                    bytes.extend(frame(SETTINGS, ACK, 0));
                    bytes.extend(frame(0x8, 0, 4));
                    bytes.extend(frame(0x0, 0, 40_000));
                }
                for c in bytes.chunks(chunk) {
                    r = r.and(g.feed_at(c, || at));
                }
            }
            assert_eq!(r.is_err(), want_flood, "{name}: {r:?}");
        }
    }
}
