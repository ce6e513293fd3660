//! The waypoint's protocol sniffing of a stream's first bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use trellis_waypoint::sniff::{sniff, Sniffed, MAX_SNIFF};

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(2 * MAX_SNIFF)];
    // Every prefix, as the stream arrives byte by byte.
    for n in 0..=data.len() {
        let verdict = sniff(&data[..n]);
        if n >= MAX_SNIFF {
            assert_ne!(verdict, Sniffed::NeedMore, "{:?}", &data[..n]);
        }
    }
});
