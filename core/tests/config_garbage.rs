//! Broken config files get an error, never a panic: every truncation of the
//! example file and a bounded set of seeded byte mutations must parse to
//! `Ok` or `Err` without panicking, and a store keeps its last good state.

use trellis_api::config;
use trellis_api::Update;
use trellis_core::state::{ProxyState, StateStore};

const EXAMPLE: &str = include_str!("../../api/examples/local-config.yaml");

/// Small deterministic generator (xorshift) so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn every_truncation_parses_or_errors() {
    let mut errors = 0;
    for end in (0..EXAMPLE.len()).filter(|&i| EXAMPLE.is_char_boundary(i)) {
        if config::parse(&EXAMPLE[..end]).is_err() {
            errors += 1;
        }
    }
    // Most prefixes cut a required field or a mapping in half.
    assert!(
        errors > EXAMPLE.len() / 4,
        "only {errors} truncations were rejected"
    );
}

#[test]
fn mutated_files_parse_or_error_and_the_store_keeps_the_last_good_config() {
    let good = config::parse(EXAMPLE).expect("example parses");
    let store = StateStore::new(ProxyState::new(good.clone()).expect("example is valid"));
    let version = store.version();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let noise = b"{}[]:-,\"'\n #&*!|>%@`\t0x\xff";
    let mut rejected = 0;
    for _ in 0..2000 {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for _ in 0..1 + rng.next() % 4 {
            let at = (rng.next() as usize) % bytes.len();
            bytes[at] = noise[(rng.next() as usize) % noise.len()];
        }
        let text = String::from_utf8_lossy(&bytes);
        match config::parse(&text) {
            Ok(cfg) => {
                // A mutation may still be a valid config; applying it is fine,
                // but then restore the good one for the next round.
                if store.apply(Update::Snapshot(cfg)).is_ok() {
                    store
                        .apply(Update::Snapshot(good.clone()))
                        .expect("good config applies");
                }
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(
        rejected > 1000,
        "only {rejected} of 2000 mutations were rejected"
    );
    assert_eq!(store.load().config(), &good, "store holds the good config");
    assert!(store.version() >= version);
}
