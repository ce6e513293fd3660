//! Power-of-two-choices load balancing on active connections.
//!
//! Each worker thread keeps its own counts: SO_REUSEPORT spreads connections
//! evenly over workers, so per-worker counts track the global ones closely
//! without any cross-core sharing on the data path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ahash::AHashMap;

/// Active connection counts per endpoint, for one worker.
#[derive(Clone, Default)]
pub struct ActiveConns {
    // Uncontended (one worker thread), so the lock is a few nanoseconds; it
    // only exists because connection tasks must be `Send`.
    inner: Arc<Mutex<AHashMap<SocketAddr, u32>>>,
}

impl ActiveConns {
    pub fn get(&self, addr: &SocketAddr) -> u32 {
        self.lock().get(addr).copied().unwrap_or(0)
    }

    /// Counts a connection to `addr` until the returned guard drops.
    pub fn track(&self, addr: SocketAddr) -> ActiveGuard {
        *self.lock().entry(addr).or_insert(0) += 1;
        ActiveGuard {
            conns: self.clone(),
            addr,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AHashMap<SocketAddr, u32>> {
        // A poisoned lock only means a panic elsewhere mid-update of a counter;
        // the counts stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks an index into `candidates` with power-of-two-choices.
    pub fn pick<T>(&self, candidates: &[T], addr_of: impl Fn(&T) -> SocketAddr) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(0),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let map = self.lock();
                let load = |i: usize| map.get(&addr_of(&candidates[i])).copied().unwrap_or(0);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

/// Decrements the endpoint's active count on drop.
pub struct ActiveGuard {
    conns: ActiveConns,
    addr: SocketAddr,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let mut map = self.conns.lock();
        if let Some(n) = map.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, i], 80))
    }

    #[test]
    fn empty_and_single() {
        let lb = ActiveConns::default();
        assert_eq!(lb.pick(&[] as &[SocketAddr], |a| *a), None);
        assert_eq!(lb.pick(&[addr(1)], |a| *a), Some(0));
    }

    #[test]
    fn prefers_less_loaded_of_two() {
        let lb = ActiveConns::default();
        let eps = [addr(1), addr(2)];
        let _busy: Vec<_> = (0..5).map(|_| lb.track(addr(1))).collect();
        // With two candidates both are always sampled, so the idle one wins every time.
        for _ in 0..100 {
            assert_eq!(lb.pick(&eps, |a| *a), Some(1));
        }
    }

    #[test]
    fn guard_releases() {
        let lb = ActiveConns::default();
        {
            let _g = lb.track(addr(3));
            assert_eq!(lb.get(&addr(3)), 1);
        }
        assert_eq!(lb.get(&addr(3)), 0);
    }

    #[test]
    fn spreads_over_endpoints() {
        let lb = ActiveConns::default();
        let eps: Vec<_> = (1..=4).map(addr).collect();
        let mut guards = Vec::new();
        for _ in 0..400 {
            let i = lb.pick(&eps, |a| *a).unwrap();
            guards.push(lb.track(eps[i]));
        }
        for ep in &eps {
            let n = lb.get(ep);
            assert!((80..=120).contains(&n), "endpoint {ep} got {n} of 400");
        }
    }
}
