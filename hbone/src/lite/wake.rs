//! Per-stream wakers: which of a connection's sockets became ready.
//!
//! The driver polls every tunnel's socket with a waker of its own. When one
//! fires it records its id and wakes the driver's task, so a wake-up
//! services only the tunnels whose sockets moved, not all of them. The
//! connection's timers and command queue use the same mechanism under ids
//! no stream can have (stream ids stop at 2^31 - 1).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;

/// Ids above any stream id, for the driver's own sources of wake-ups.
pub(crate) const TIMER: u32 = u32::MAX;
pub(crate) const COMMANDS: u32 = u32::MAX - 1;
pub(crate) const SHUTDOWN: u32 = u32::MAX - 2;
pub(crate) const HANDSHAKE: u32 = u32::MAX - 3;
pub(crate) const TLS: u32 = u32::MAX - 4;

/// The ids that fired since the driver last looked, and the driver's task.
#[derive(Default)]
pub(crate) struct ReadySet {
    ids: Mutex<Vec<u32>>,
    task: AtomicWaker,
}

impl ReadySet {
    /// Remembers the task to wake; called at the start of each poll.
    pub(crate) fn register(&self, waker: &Waker) {
        self.task.register(waker);
    }

    /// Moves the ids that fired into `into` (which the caller keeps, so
    /// the two vectors trade allocations instead of making new ones).
    pub(crate) fn take(&self, into: &mut Vec<u32>) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::swap(&mut *ids, into);
    }

    fn push(&self, id: u32) {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        self.task.wake();
    }
}

/// One id's waker.
pub(crate) struct IdWake {
    id: u32,
    /// Set while the id is in the ready set, so it is queued once.
    queued: AtomicBool,
    set: Arc<ReadySet>,
}

impl IdWake {
    /// A waker for `id`, queued once at the start so its source is polled.
    pub(crate) fn new(id: u32, set: &Arc<ReadySet>) -> (Arc<IdWake>, Waker) {
        let w = Arc::new(IdWake {
            id,
            queued: AtomicBool::new(true),
            set: set.clone(),
        });
        set.push(id);
        let waker = Waker::from(w.clone());
        (w, waker)
    }

    /// Called before polling the id's source: a wake from now on queues
    /// the id again.
    pub(crate) fn clear(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for IdWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.set.push(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_queued_once_until_cleared() {
        let set = Arc::new(ReadySet::default());
        let (a, wa) = IdWake::new(3, &set);
        let (_b, wb) = IdWake::new(5, &set);
        let mut ids = Vec::new();
        set.take(&mut ids);
        assert_eq!(ids, [3, 5], "each source is polled once at the start");
        ids.clear();
        wa.wake_by_ref();
        wa.wake_by_ref();
        wb.wake_by_ref();
        set.take(&mut ids);
        assert_eq!(
            ids,
            Vec::<u32>::new(),
            "queued flags were still set: no new entries"
        );
        a.clear();
        wa.wake_by_ref();
        wa.wake_by_ref();
        set.take(&mut ids);
        assert_eq!(ids, [3]);
    }
}
