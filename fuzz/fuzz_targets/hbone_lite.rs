//! The lite HBONE engine's connection state (`hbone::lite`): frame
//! parsing, the preface and SETTINGS, HPACK, header blocks across
//! CONTINUATIONs, stream states, flow control, PING and GOAWAY, fed a
//! peer's bytes in pieces as TLS would hand them over.
//!
//! Input: `[mode][split][bytes]`. Mode bit 0 plays the client (two CONNECT
//! streams already open), else the server (the client preface is fed
//! first). `split` seeds the lengths of the pieces `bytes` is cut into,
//! each 1 to 4 × `split` bytes; 0 feeds it whole.
#![no_main]
use hbone::lite::fuzzing::conn_bytes;
use libfuzzer_sys::fuzz_target;

/// What a connection queues before reading anything: the preface,
/// SETTINGS, a WINDOW_UPDATE and, as the client, two CONNECT heads.
const FIRST_WORDS: usize = 512;

fuzz_target!(|data: &[u8]| {
    let [mode, split, bytes @ ..] = data else {
        return;
    };
    let server = mode & 1 == 0;
    let mut chunks = Vec::new();
    if *split == 0 {
        chunks.push(bytes);
    } else {
        let mut rng = fastrand::Rng::with_seed(u64::from(*split));
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = rng.usize(1..=4 * usize::from(*split)).min(rest.len());
            let (piece, next) = rest.split_at(n);
            chunks.push(piece);
            rest = next;
        }
    }
    let out = conn_bytes(server, &chunks);
    // Whatever the peer sends, our answers (acks, resets, window updates,
    // responses, echoed bytes) stay within a small multiple of it: no
    // frame makes us queue more than a few frames back.
    assert!(
        out <= FIRST_WORDS + 4 * bytes.len(),
        "{out} bytes queued for {} bytes read",
        bytes.len()
    );
});
