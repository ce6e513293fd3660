//! One task for an upstream HTTP/2 connection and everything hyper spawns
//! for it: the h2 connection, its request dispatcher, and each request's
//! body pipe and response future.
//!
//! Why: h2 gives a new stream no send capacity until the connection task
//! has taken it out of its "pending open" queue and written its HEADERS. As
//! separate tokio tasks, a gRPC request's body pipe runs only after the
//! connection task has flushed the HEADERS into the HBONE stream, and by
//! then the HBONE connection's writer is already queued: the HEADERS and
//! the first DATA leave in two TLS records and two `writev`s (measured: 2.13
//! upstream writes per gRPC request). Polled here, in one task, the pipe
//! runs as soon as the connection task has opened its stream, and the
//! connection task runs again in the same turn, so both frames reach the
//! HBONE stream before its writer runs.
//!
//! Not used downstream: there the server's streams are open at once, and
//! polling them in one task saved two task polls per request but cost two
//! allocations, for no fewer instructions (`trellis-instr --waypoint`).
//!
//! The scheduler is a slab of futures and a queue of those woken: each
//! future has its own waker, and only woken futures are polled. Unlike
//! `FuturesUnordered`, it does not yield whenever every future has been
//! polled once (which is most turns of a connection with one request in
//! flight); it yields after [`BUDGET`] polls in one turn.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Polls in one turn of the group's task before it yields to the runtime:
/// a connection's frames for one burst take a handful; many streams woken
/// at once must not starve the worker's other connections.
const BUDGET: usize = 64;

/// Hands futures to a group (hyper's executor for one connection).
#[derive(Clone)]
pub struct GroupExec {
    shared: Arc<Shared>,
}

/// The group's task, run with [`Group::run`].
pub struct Group {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    /// Free indices of `slots`.
    free: Vec<usize>,
    /// Scratch for the indices taken off the ready queue.
    batch: Vec<usize>,
    /// Scratch for the futures taken off the incoming queue: swapped with
    /// it, so neither buffer is allocated again per request.
    incoming: Vec<BoxFuture>,
}

/// The ready-queue index of [`Group::run`]'s own future.
const MAIN: usize = usize::MAX;

/// [`Group::run`]'s own future, polled in place.
struct Main<'a, F> {
    fut: Pin<&'a mut F>,
    wake: Arc<SlotWake>,
    waker: Waker,
}

struct Slot {
    fut: Option<BoxFuture>,
    wake: Arc<SlotWake>,
    /// `wake` as a `Waker`, made once per future rather than per poll.
    waker: Waker,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    task: AtomicWaker,
}

#[derive(Default)]
struct State {
    /// Handed over, not yet in a slot.
    incoming: Vec<BoxFuture>,
    /// Slots woken since their last poll.
    ready: Vec<usize>,
    /// The group's task is in its poll and takes up what is queued before
    /// it returns: a wake then need not wake the task, which would only
    /// poll it once more for nothing.
    polling: bool,
    /// The group's task has ended: later futures get their own task.
    done: bool,
}

/// A slot's waker. A waker kept after its future finished may wake the
/// slot's next occupant: a spurious poll, which futures tolerate.
struct SlotWake {
    index: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut state = self.shared.lock();
        state.ready.push(self.index);
        let polling = state.polling;
        drop(state);
        if !polling {
            self.shared.task.wake();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock, so a poisoned lock
        // still guards a whole queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Group {
    pub fn new() -> (GroupExec, Group) {
        let shared = Arc::new(Shared::default());
        let group = Group {
            shared: shared.clone(),
            slots: Vec::new(),
            free: Vec::new(),
            batch: Vec::new(),
            incoming: Vec::new(),
        };
        (GroupExec { shared }, group)
    }

    /// Runs `main` (in place: it need not be `'static`) and every future
    /// handed to the group, until all have finished.
    pub async fn run<F: Future<Output = ()>>(mut self, main: F) {
        let mut main = std::pin::pin!(main);
        let main_wake = Arc::new(SlotWake {
            index: MAIN,
            queued: AtomicBool::new(true),
            shared: self.shared.clone(),
        });
        self.shared.lock().ready.push(MAIN);
        let mut main = Some(Main {
            fut: main.as_mut(),
            waker: Waker::from(main_wake.clone()),
            wake: main_wake,
        });
        std::future::poll_fn(|cx| self.poll_all(cx, &mut main)).await
    }

    /// Moves handed-over futures into slots, each queued for a first poll.
    fn admit(&mut self, incoming: &mut Vec<BoxFuture>, ready: &mut Vec<usize>) {
        for fut in incoming.drain(..) {
            ready.push(match self.free.pop() {
                // The slot's waker is reused unless one is still held
                // elsewhere (two references: the slot's own pair).
                Some(index) if Arc::strong_count(&self.slots[index].wake) == 2 => {
                    let slot = &mut self.slots[index];
                    slot.wake.queued.store(true, Ordering::Release);
                    slot.fut = Some(fut);
                    index
                }
                Some(index) => {
                    self.slots[index] = self.slot(index, fut);
                    index
                }
                None => {
                    let index = self.slots.len();
                    let slot = self.slot(index, fut);
                    self.slots.push(slot);
                    index
                }
            });
        }
    }

    fn slot(&self, index: usize, fut: BoxFuture) -> Slot {
        let wake = Arc::new(SlotWake {
            index,
            queued: AtomicBool::new(true),
            shared: self.shared.clone(),
        });
        Slot {
            fut: Some(fut),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// One turn: polls what was woken (`main` included) until nothing is,
    /// or the budget is spent.
    fn poll_all<F: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        main: &mut Option<Main<'_, F>>,
    ) -> Poll<()> {
        self.shared.task.register(cx.waker());
        let mut polls = 0;
        loop {
            let mut batch = std::mem::take(&mut self.batch);
            {
                let mut state = self.shared.lock();
                std::mem::swap(&mut batch, &mut state.ready);
                let mut incoming = std::mem::take(&mut self.incoming);
                std::mem::swap(&mut incoming, &mut state.incoming);
                if incoming.is_empty() && batch.is_empty() {
                    state.polling = false;
                    if main.is_none() && self.live() == 0 {
                        state.done = true;
                        return Poll::Ready(());
                    }
                    self.batch = batch;
                    self.incoming = incoming;
                    return Poll::Pending;
                }
                if polls >= BUDGET {
                    // Put back what was taken: the next turn starts there.
                    state.ready.append(&mut batch);
                    std::mem::swap(&mut incoming, &mut state.incoming);
                    state.polling = false;
                    drop(state);
                    self.batch = batch;
                    self.incoming = incoming;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                state.polling = true;
                drop(state);
                self.admit(&mut incoming, &mut batch);
                self.incoming = incoming;
            }
            for &index in &batch {
                polls += 1;
                if index == MAIN {
                    if let Some(m) = main {
                        m.wake.queued.store(false, Ordering::Release);
                        if m.fut
                            .as_mut()
                            .poll(&mut Context::from_waker(&m.waker))
                            .is_ready()
                        {
                            *main = None;
                        }
                    }
                    continue;
                }
                let slot = &mut self.slots[index];
                let Some(fut) = slot.fut.as_mut() else {
                    continue;
                };
                // Cleared before the poll: a wake during it queues the slot again.
                slot.wake.queued.store(false, Ordering::Release);
                // A panic ends that future alone, as it would end its own
                // tokio task, not every stream of the connection.
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    fut.as_mut().poll(&mut Context::from_waker(&slot.waker))
                }));
                let finished = match polled {
                    Ok(poll) => poll.is_ready(),
                    Err(_) => {
                        tracing::error!(
                            "a task of an HTTP/2 connection panicked; its stream is dropped"
                        );
                        true
                    }
                };
                if finished {
                    slot.fut = None;
                    self.free.push(index);
                }
            }
            batch.clear();
            self.batch = batch;
        }
    }
}

impl Drop for Group {
    /// Ended or dropped (its runtime shutting down, a future panicking):
    /// nothing is left to poll what is handed over later.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.done = true;
        state.polling = false;
        let incoming = std::mem::take(&mut state.incoming);
        drop(state);
        drop(incoming);
    }
}

impl<F> hyper::rt::Executor<F> for GroupExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut state = self.shared.lock();
        if state.done {
            drop(state);
            tokio::spawn(fut);
            return;
        }
        state.incoming.push(Box::pin(fut));
        let polling = state.polling;
        drop(state);
        if !polling {
            self.shared.task.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::oneshot;

    /// Polls the group once, by hand, with a waker that counts its wakes.
    fn poll_once(group: &mut Pin<Box<dyn Future<Output = ()> + Send>>) -> (Poll<()>, usize) {
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let poll = group.as_mut().poll(&mut Context::from_waker(&waker));
        (poll, count.0.load(Ordering::Relaxed))
    }

    #[test]
    fn a_future_spawned_and_woken_within_a_turn_runs_in_that_turn() {
        // main spawns a waiter, then wakes it: as with hyper's connection
        // task opening a stream whose body pipe waits for capacity.
        let (exec, group) = Group::new();
        let done = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel::<()>();
        let seen = done.clone();
        let spawner = exec.clone();
        let mut group: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(group.run(async move {
            hyper::rt::Executor::execute(&spawner, async move {
                rx.await.expect("sent");
                seen.store(true, Ordering::Release);
            });
            tokio::task::yield_now().await;
            tx.send(()).expect("receiver alive");
        }));
        let (poll, wakes) = poll_once(&mut group);
        assert!(
            done.load(Ordering::Acquire),
            "the waiter ran in the same turn"
        );
        assert_eq!(poll, Poll::Ready(()), "every future finished");
        assert_eq!(wakes, 0, "no extra turn was asked for");
    }

    #[test]
    fn the_group_yields_after_its_budget_and_asks_for_another_turn() {
        let (_exec, group) = Group::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let mut group: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(group.run(std::future::poll_fn(move |cx| {
                counted.fetch_add(1, Ordering::Relaxed);
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })));
        let (poll, wakes) = poll_once(&mut group);
        assert_eq!(poll, Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), BUDGET);
        assert!(wakes >= 1, "it asks to be polled again");
        let (_, _) = poll_once(&mut group);
        assert_eq!(polls.load(Ordering::Relaxed), 2 * BUDGET);
    }

    #[test]
    fn an_idle_future_is_not_polled_until_woken() {
        let (_exec, group) = Group::new();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let (tx, mut rx) = oneshot::channel::<()>();
        let mut group: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(group.run(std::future::poll_fn(move |cx| {
                counted.fetch_add(1, Ordering::Relaxed);
                Pin::new(&mut rx).poll(cx).map(|_| ())
            })));
        assert_eq!(poll_once(&mut group).0, Poll::Pending);
        assert_eq!(poll_once(&mut group).0, Poll::Pending);
        assert_eq!(polls.load(Ordering::Relaxed), 1, "not woken: not polled");
        tx.send(()).expect("receiver alive");
        assert_eq!(poll_once(&mut group).0, Poll::Ready(()));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn every_future_handed_over_runs_even_after_the_group_ended() {
        let (exec, group) = Group::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let (spawner, count) = (exec.clone(), ran.clone());
        let task = tokio::spawn(group.run(async move {
            for _ in 0..100 {
                let count = count.clone();
                hyper::rt::Executor::execute(&spawner, async move {
                    tokio::task::yield_now().await;
                    count.fetch_add(1, Ordering::Relaxed);
                });
                tokio::task::yield_now().await;
            }
        }));
        task.await.expect("the group ends");
        assert_eq!(ran.load(Ordering::Relaxed), 100);
        let (tx, rx) = oneshot::channel();
        hyper::rt::Executor::execute(&exec, async move {
            tx.send(()).expect("receiver alive");
        });
        rx.await
            .expect("a future handed over after the group ended runs on its own task");
    }

    #[test]
    fn a_panicking_future_is_dropped_and_the_others_go_on() {
        let (exec, group) = Group::new();
        let done = Arc::new(AtomicBool::new(false));
        let (seen, spawner) = (done.clone(), exec.clone());
        let mut group: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(group.run(async move {
            hyper::rt::Executor::execute(&spawner, async { panic!("a bug in one stream") });
            tokio::task::yield_now().await;
            seen.store(true, Ordering::Release);
        }));
        let (poll, _) = poll_once(&mut group);
        assert_eq!(
            poll,
            Poll::Ready(()),
            "main finished, the panicked future was dropped"
        );
        assert!(done.load(Ordering::Acquire));
    }

    #[test]
    fn a_free_slot_and_its_waker_are_reused_when_no_one_holds_the_waker() {
        let (exec, mut group) = Group::new();
        let cx = &mut Context::from_waker(Waker::noop());
        let mut no_main: Option<Main<'_, std::future::Ready<()>>> = None;
        // Slot 0 stays busy, so the group does not end.
        let (tx, rx) = oneshot::channel::<()>();
        hyper::rt::Executor::execute(&exec, async move { drop(rx.await) });
        hyper::rt::Executor::execute(&exec, async {});
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Pending);
        let first = Arc::as_ptr(&group.slots[1].wake);
        hyper::rt::Executor::execute(&exec, async {});
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Pending);
        assert_eq!(group.slots.len(), 2);
        assert_eq!(first, Arc::as_ptr(&group.slots[1].wake), "the same waker");

        // A future that keeps its waker somewhere: the next one gets a new one.
        let kept = Arc::new(Mutex::new(None::<Waker>));
        let keep = kept.clone();
        hyper::rt::Executor::execute(
            &exec,
            std::future::poll_fn(move |cx| {
                *keep.lock().unwrap() = Some(cx.waker().clone());
                Poll::Ready(())
            }),
        );
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Pending);
        let held = Arc::as_ptr(&group.slots[1].wake);
        hyper::rt::Executor::execute(&exec, async {});
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Pending);
        assert_eq!(group.slots.len(), 2);
        assert_ne!(held, Arc::as_ptr(&group.slots[1].wake), "a new waker");
        // The stale waker wakes the slot's new occupant at most: harmless.
        kept.lock().unwrap().take().unwrap().wake();
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Pending);
        tx.send(()).unwrap();
        assert_eq!(group.poll_all(cx, &mut no_main), Poll::Ready(()));
    }
}
