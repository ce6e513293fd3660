use super::*;
use crate::frames::GOAWAY;

fn frame(kind: u8, payload_len: usize) -> Vec<u8> {
    crate::frames::test_frame(kind, 0, payload_len)
}

fn scan(chunks: &[&[u8]]) -> bool {
    let signal = Arc::new(GoAway::default());
    let mut s = FrameScan::new(signal.clone());
    for c in chunks {
        s.feed(c);
    }
    signal.is_set()
}

#[test]
fn frames_are_followed_across_any_split_and_only_goaway_fires() {
    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;
    const PING: u8 = 0x6;
    let quiet: Vec<u8> = [frame(SETTINGS, 18), frame(DATA, 300), frame(PING, 8)].concat();
    let loud: Vec<u8> = [quiet.clone(), frame(GOAWAY, 8), frame(DATA, 5)].concat();
    let cases: [(&str, &[u8], bool); 3] = [
        ("settings, data, ping", &quiet, false),
        ("then goaway", &loud, true),
        ("empty", &[], false),
    ];
    for (name, bytes, want) in cases {
        assert_eq!(scan(&[bytes]), want, "{name}: in one read");
        for split in 1..bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(scan(&[a, b]), want, "{name}: split at {split}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan(&bytewise), want, "{name}: byte by byte");
    }
}

#[tokio::test]
async fn wait_returns_after_fire_and_at_once_when_already_set() {
    let signal = Arc::new(GoAway::default());
    let waiter = tokio::spawn({
        let s = signal.clone();
        async move { s.wait().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    signal.fire();
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("waiter woken")
        .expect("join");
    tokio::time::timeout(std::time::Duration::from_secs(5), signal.wait())
        .await
        .expect("already set");
}
