use super::*;
use std::time::Duration;
use tokio::sync::oneshot;

/// Generous bound for things that should happen promptly on a busy 2-core CI box.
const PROMPT: Duration = Duration::from_secs(5);

#[test]
fn handles_can_be_shared_between_threads() {
    fn assert_shareable<T: Clone + Send + Sync>() {}
    fn assert_send<T: Send>() {}
    assert_shareable::<DrainWatcher>();
    assert_send::<DrainTrigger>();
    assert_send::<DrainGuard>();
}

#[tokio::test]
async fn drain_with_nothing_in_flight_completes_and_signals() {
    let (trigger, watcher) = new();
    assert!(!watcher.is_draining());
    let w = watcher.clone();
    let listener = tokio::spawn(async move { w.signaled().await });
    assert_eq!(
        trigger.drain(Duration::from_secs(1)).await,
        DrainOutcome::Completed
    );
    assert!(watcher.is_draining());
    tokio::time::timeout(PROMPT, listener)
        .await
        .expect("listener saw the signal")
        .expect("listener task ran");
    // A watcher that asks after the fact is told at once.
    tokio::time::timeout(PROMPT, watcher.signaled())
        .await
        .expect("late watcher saw the signal");
}

#[tokio::test(start_paused = true)]
async fn signal_does_not_fire_before_drain() {
    let (_trigger, watcher) = new();
    // Paused clock: this timeout elapses in virtual time once nothing else can run.
    let waited = tokio::time::timeout(Duration::from_secs(3600), watcher.signaled()).await;
    assert!(waited.is_err(), "signaled() resolved without a drain");
    assert!(!watcher.is_draining());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_connections_that_finish_on_the_signal() {
    let (trigger, watcher) = new();
    let mut tasks = Vec::new();
    for i in 0..50u64 {
        let guard = watcher.track();
        let w = watcher.clone();
        tasks.push(tokio::spawn(async move {
            w.signaled().await;
            // Finish some in-flight work after the signal, as a connection would.
            for _ in 0..i % 5 {
                tokio::task::yield_now().await;
            }
            drop(guard);
        }));
    }
    assert_eq!(watcher.in_flight(), 50);
    let outcome = tokio::time::timeout(PROMPT, trigger.drain(PROMPT))
        .await
        .expect("drain returned");
    assert_eq!(outcome, DrainOutcome::Completed);
    assert_eq!(watcher.in_flight(), 0);
    for t in tasks {
        t.await.expect("connection task ran");
    }
}

#[tokio::test(start_paused = true)]
async fn drain_reports_stragglers_at_the_deadline() {
    let (trigger, watcher) = new();
    let (_never_tx, never_rx) = oneshot::channel::<()>();
    let stuck = watcher.track();
    let stuck_task = tokio::spawn(async move {
        let _ = never_rx.await;
        drop(stuck);
    });
    let quick = watcher.track();
    let w = watcher.clone();
    tokio::spawn(async move {
        w.signaled().await;
        drop(quick);
    });
    let start = tokio::time::Instant::now();
    let outcome = trigger.drain(Duration::from_secs(30)).await;
    assert_eq!(outcome, DrainOutcome::DeadlineExceeded { remaining: 1 });
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "returned at the deadline, not {took:?}"
    );
    stuck_task.abort();
}

#[tokio::test]
async fn guards_taken_during_the_drain_are_waited_for() {
    let (trigger, watcher) = new();
    let first = watcher.track();
    let w = watcher.clone();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        w.signaled().await;
        // A stream opened on an existing connection while draining.
        let late = w.track();
        drop(first);
        let _ = tx.send(());
        tokio::task::yield_now().await;
        drop(late);
    });
    let outcome = tokio::time::timeout(PROMPT, trigger.drain(PROMPT))
        .await
        .expect("drain returned");
    assert_eq!(outcome, DrainOutcome::Completed);
    assert!(
        rx.await.is_ok(),
        "late stream was opened before the drain completed"
    );
    assert_eq!(watcher.in_flight(), 0);
}
