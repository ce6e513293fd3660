//! A future wrapper that is polled only when its own waker fired.
//!
//! `tokio::select!` polls every branch each time the task wakes. On a data
//! path most wake-ups are for the busy branch (socket readiness, h2 frames),
//! while the others (a keep-alive timer, a drain or cancellation signal)
//! almost never become ready. Re-polling them still costs: a `Notified` takes
//! its waiter-list lock to refresh its waker, a `Sleep` re-registers its
//! waker, and an unbiased `select!` draws a random number to pick the order.
//! Measured with callgrind on a 64 B ping-pong through two node proxies,
//! that was ~5% of each proxy's instructions per round trip.
//!
//! [`Quiet`] gives the wrapped future its own waker, which records that it
//! fired and then wakes the task. The inner future is polled on the first
//! poll, after its waker fired, and when the task's waker changes; otherwise
//! polling `Quiet` is a flag check. This is sound for any future that
//! follows the `Future` contract (it needs polling again only after it woke
//! its waker), which every tokio and h2 future does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps `fut` so that it is polled only when it asked to be; see the module docs.
pub fn quiet<F: Future>(fut: F) -> Quiet<F> {
    Quiet {
        inner: fut,
        signal: Arc::new(Signal {
            fired: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }),
        waker: None,
        last_task: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`quiet`].
    pub struct Quiet<F> {
        #[pin]
        inner: F,
        signal: Arc<Signal>,
        // The waker handed to `inner`, built once.
        waker: Option<Waker>,
        // The task waker `signal.task` holds, to notice when it changes.
        last_task: Option<Waker>,
    }
}

struct Signal {
    /// Set by the inner future's waker; also set initially so the first poll reaches it.
    fired: AtomicBool,
    /// The task to wake on its behalf.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let same_task = this
            .last_task
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if same_task && !this.signal.fired.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        if !same_task {
            *this.last_task = Some(cx.waker().clone());
        }
        // Re-arm on every poll of the inner future: a wake-up takes the
        // waker out of `task`. Registering before clearing `fired` means a
        // wake-up that lands in between is seen by the poll just below, and
        // one that lands after it sets `fired` and wakes the task again.
        this.signal.task.register(cx.waker());
        this.signal.fired.store(false, Ordering::Release);
        let waker = this
            .waker
            .get_or_insert_with(|| Waker::from(this.signal.clone()));
        let mut inner_cx = Context::from_waker(waker);
        this.inner.poll(&mut inner_cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// Counts its polls; ready once `ready` is set, waking through the last waker it saw.
    struct Probe {
        polls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: WakerSlot,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// The waker slot a [`Probe`] fills when it returns `Pending`.
    type WakerSlot = Arc<std::sync::Mutex<Option<Waker>>>;

    fn probe() -> (Probe, Arc<AtomicUsize>, Arc<AtomicBool>, WakerSlot) {
        let polls = Arc::new(AtomicUsize::new(0));
        let ready = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(std::sync::Mutex::new(None));
        let p = Probe {
            polls: polls.clone(),
            ready: ready.clone(),
            waker: waker.clone(),
        };
        (p, polls, ready, waker)
    }

    #[test]
    fn inner_is_polled_only_after_its_own_wake() {
        let (p, polls, ready, waker) = probe();
        let mut q = Box::pin(quiet(p));
        let task = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&task);
        assert!(q.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "first poll reaches the inner future"
        );
        for _ in 0..5 {
            assert!(q.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "polls without a wake are skipped"
        );
        ready.store(true, Ordering::SeqCst);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(q.as_mut().poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn every_wake_reaches_the_task_not_only_the_first() {
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (p, polls, _ready, waker) = probe();
        let mut q = Box::pin(quiet(p));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let task = Waker::from(count.clone());
        let mut cx = Context::from_waker(&task);
        assert!(q.as_mut().poll(&mut cx).is_pending());
        for round in 1..=3 {
            waker.lock().unwrap().take().unwrap().wake();
            assert_eq!(
                count.0.load(Ordering::SeqCst),
                round,
                "wake {round} reached the task"
            );
            assert!(q.as_mut().poll(&mut cx).is_pending());
            assert_eq!(polls.load(Ordering::SeqCst), round + 1);
        }
    }

    #[test]
    fn a_new_task_waker_repolls_the_inner_future() {
        let (p, polls, _ready, _waker) = probe();
        let mut q = Box::pin(quiet(p));
        let w1 = futures_util::task::noop_waker();
        assert!(q.as_mut().poll(&mut Context::from_waker(&w1)).is_pending());
        // A waker that does not `will_wake` the first one: the inner future
        // must see it (through the signal), so it is polled again.
        struct Other;
        impl Wake for Other {
            fn wake(self: Arc<Self>) {}
        }
        let w2 = Waker::from(Arc::new(Other));
        assert!(q.as_mut().poll(&mut Context::from_waker(&w2)).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_quiet_timer_in_select_still_fires() {
        let mut timer = std::pin::pin!(quiet(tokio::time::sleep(Duration::from_millis(50))));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        tokio::spawn(async move {
            for i in 0..3 {
                tx.send(i).await.unwrap();
            }
            std::future::pending::<()>().await;
        });
        let mut got = Vec::new();
        // Bounded by a separate timer: a quiet timer that never fired fails here, not hangs.
        let done = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    biased;
                    Some(v) = rx.recv() => got.push(v),
                    () = &mut timer => break,
                }
            }
        })
        .await;
        assert!(done.is_ok(), "the quiet timer never fired");
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[test]
    fn a_cancellation_from_another_thread_wakes_the_task() {
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let token = tokio_util::sync::CancellationToken::new();
        let mut q = Box::pin(quiet(token.cancelled()));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let task = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&task);
        assert!(q.as_mut().poll(&mut cx).is_pending());
        assert!(q.as_mut().poll(&mut cx).is_pending());
        let t2 = token.clone();
        std::thread::spawn(move || t2.cancel()).join().unwrap();
        assert!(flag.0.load(Ordering::SeqCst), "the task was woken");
        assert!(q.as_mut().poll(&mut cx).is_ready());
    }
}
