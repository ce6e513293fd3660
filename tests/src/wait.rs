//! Waiting on conditions with a deadline instead of fixed sleeps: polls with a
//! short, growing pause, and a timeout names what was awaited.

use std::time::{Duration, Instant};

/// The condition did not hold before the deadline.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}")]
pub struct WaitTimeout {
    pub what: String,
    pub waited: Duration,
}

/// First pause between polls; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// Longest pause, so a condition is noticed soon after it holds.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Polls `probe` until it returns `Some`, for at most `timeout`.
/// It is always tried at least once, and once more at the deadline.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T, WaitTimeout> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout {
                what: what.to_string(),
                waited: now - start,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Polls `cond` until it is true, for at most `timeout`.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<(), WaitTimeout> {
    wait_for(timeout, what, || cond().then_some(()))
}

/// [`wait_until`] for async code: sleeps on tokio instead of blocking the runtime thread.
pub async fn wait_until_async(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<(), WaitTimeout> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if cond() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(WaitTimeout {
                what: what.to_string(),
                waited: now - start,
            });
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Panics unless `cond` becomes true within `timeout`; the message quotes the
/// condition, or the format arguments when given.
///
/// `assert_eventually!(Duration::from_secs(5), server.accepted() == 1);`
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr $(,)?) => {
        if let Err(e) = $crate::wait::wait_until($timeout, stringify!($cond), || $cond) {
            panic!("{e}");
        }
    };
    ($timeout:expr, $cond:expr, $($fmt:tt)+) => {
        if let Err(e) = $crate::wait::wait_until($timeout, &format!($($fmt)+), || $cond) {
            panic!("{e}");
        }
    };
}
