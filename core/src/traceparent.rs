//! A fresh W3C trace context for each tunnel, as ztunnel sends on its
//! HBONE CONNECT: version 00, random trace and parent ids, flags 00 (not
//! sampled: the proxy records no spans, it only lets the hops of one
//! connection be correlated).

/// Length of a version-00 `traceparent` value.
pub const LEN: usize = 55;

/// A new `traceparent` value: `00-<32 hex trace id>-<16 hex parent id>-00`.
///
/// One allocation of exactly [`LEN`] bytes; the ids come from `fastrand`'s
/// thread-local generator (unpredictability is not needed, uniqueness is).
pub fn generate() -> String {
    // All-zero ids are invalid per W3C; redraw (odds 2^-64 and 2^-128).
    let trace_id = loop {
        let t = fastrand::u128(..);
        if t != 0 {
            break t;
        }
    };
    let parent_id = loop {
        let p = fastrand::u64(..);
        if p != 0 {
            break p;
        }
    };
    let mut out = String::with_capacity(LEN);
    out.push_str("00-");
    push_hex(&mut out, trace_id, 32);
    out.push('-');
    push_hex(&mut out, u128::from(parent_id), 16);
    out.push_str("-00");
    out
}

/// Appends the low `digits` nibbles of `v` as lowercase hex, most significant first.
fn push_hex(out: &mut String, v: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// The structure W3C Trace Context level 1 requires of version 00.
    fn well_formed(tp: &str) -> bool {
        let parts: Vec<&str> = tp.split('-').collect();
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
        tp.len() == LEN
            && matches!(
                parts.as_slice(),
                [v, t, p, f]
                    if *v == "00"
                        && t.len() == 32 && lower_hex(t) && nonzero(t)
                        && p.len() == 16 && lower_hex(p) && nonzero(p)
                        && (*f == "00" || *f == "01")
            )
    }

    #[test]
    fn structure_check_itself() {
        for (tp, ok) in [
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                true,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                true,
            ),
            (
                "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
                false,
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-00",
                false,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-00",
                false,
            ),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-00",
                false,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-00",
                false,
            ),
        ] {
            assert_eq!(well_formed(tp), ok, "{tp}");
        }
    }

    #[test]
    fn generated_values_are_well_formed_and_unique() {
        let n = 10_000;
        let seen: HashSet<String> = (0..n).map(|_| generate()).collect();
        assert_eq!(seen.len(), n, "traceparents repeat");
        for tp in &seen {
            assert!(well_formed(tp), "{tp}");
            assert_eq!(tp.capacity(), LEN, "one exact allocation");
        }
        let trace_ids: HashSet<&str> = seen.iter().map(|t| &t[3..35]).collect();
        assert_eq!(trace_ids.len(), n, "trace ids repeat");
    }

    #[test]
    fn hex_digits_are_written_most_significant_first() {
        let mut s = String::new();
        push_hex(&mut s, 0x0123_abcd, 8);
        assert_eq!(s, "0123abcd");
        s.clear();
        push_hex(&mut s, u128::MAX, 32);
        assert_eq!(s, "f".repeat(32));
    }
}
