//! Helpers shared by the unit tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// Log output captured from the current thread.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn lines(&self) -> Vec<String> {
        let buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Serialises log capture across test threads: tracing recomputes its
/// global level filter from every live subscriber, and two thread-local
/// subscribers coming and going at once can race that computation and drop
/// events.
static CAPTURE: Mutex<()> = Mutex::new(());

/// Keeps the capture active; fields drop in order, subscriber first.
pub struct CaptureGuard {
    _default: tracing::subscriber::DefaultGuard,
    _lock: std::sync::MutexGuard<'static, ()>,
}

/// Captures every event on this thread as `LEVEL target: message fields`
/// lines until the guard drops.
pub fn capture_logs() -> (CaptureGuard, Captured) {
    let lock = CAPTURE.lock().unwrap_or_else(|e| e.into_inner());
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let default = tracing::subscriber::set_default(subscriber);
    tracing::callsite::rebuild_interest_cache();
    (
        CaptureGuard {
            _default: default,
            _lock: lock,
        },
        captured,
    )
}
