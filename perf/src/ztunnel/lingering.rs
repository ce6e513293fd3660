//! Sockets a killed ztunnel leaves in a pod: the connections it had
//! accepted on the capture ports live on in the kernel after the process
//! is gone (seen: one in TIME_WAIT on 15001 in the client pod, where
//! ztunnel closed first), and they are not marked SO_REUSEADDR, so the
//! next column's relay cannot bind 127.0.0.1:15001 until they expire
//! ("Address already in use" for the tcp relay after the ztunnel column,
//! 60 s). The pair waits for them before the pods are handed on.

use std::time::{Duration, Instant};

use trellis_netns::NetNs;

/// TCP states by their hex code in /proc/net/tcp.
fn state_name(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => "LISTEN",
        "0B" => "CLOSING",
        _ => "UNKNOWN",
    }
}

/// (local port, state) of every socket of a /proc/net/tcp{,6} table whose
/// local port is one of `ports`. TIME_WAIT counts too: a socket without
/// SO_REUSEADDR keeps the port from a new listener even then, and the
/// kernel does not say which ones had it.
pub fn blocking(table: &str, ports: &[u16]) -> Vec<(u16, &'static str)> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            let state = state_name(f.get(3)?);
            ports.contains(&port).then_some((port, state))
        })
        .collect()
}

/// `list` as "15001 TIME_WAIT x2000, 15006 ESTABLISHED x1": a run of
/// many connections (the connection-rate phase) leaves thousands.
pub fn summary(list: &[(u16, &'static str)]) -> String {
    let mut counts: std::collections::BTreeMap<(u16, &str), usize> = Default::default();
    for k in list {
        *counts.entry(*k).or_default() += 1;
    }
    counts
        .iter()
        .map(|((port, state), n)| format!("{port} {state} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`wait_free`] found.
pub struct Lingered {
    /// What held the ports at the first look.
    pub first: Vec<(u16, &'static str)>,
    /// What still held them at the end (empty: free).
    pub left: Vec<(u16, &'static str)>,
    pub waited: Duration,
}

/// Waits up to `within` until no socket in `ns` blocks `ports`.
pub fn wait_free(ns: &NetNs, ports: &[u16], within: Duration) -> Lingered {
    let start = Instant::now();
    let mut first = None;
    loop {
        let table = ns
            .run_in(|| {
                let a = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
                let b = std::fs::read_to_string("/proc/thread-self/net/tcp6").unwrap_or_default();
                a + &b
            })
            .unwrap_or_default();
        let left = blocking(&table, ports);
        let first = first.get_or_insert_with(|| left.clone());
        if left.is_empty() || start.elapsed() > within {
            return Lingered {
                first: std::mem::take(first),
                left,
                waited: start.elapsed(),
            };
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_on_the_capture_ports_in_any_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:3A99 020112C6:D2F0 05 00000000:00000000 00:00000000 00000000     0        0 0 1\n\
   1: 0100007F:3A99 020112C6:D2F2 06 00000000:00000000 03:00000000 00000000     0        0 0 1\n\
   2: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1\n\
   3: 020112C6:1B58 020212C6:D000 01 00000000:00000000 00:00000000 00000000     0        0 0 1\n\
   4: 00000000000000000000000000000000:3AA0 00000000000000000000000000000000:0000 09 0:0 0 0 0 0 0 1\n";
        // 0x3A99 = 15001, 0x3A9E = 15006, 0x3AA0 = 15008, 0x1B58 = 7000.
        assert_eq!(
            blocking(table, &[15001, 15006, 15008]),
            [
                (15001, "FIN_WAIT2"),
                (15001, "TIME_WAIT"),
                (15006, "LISTEN"),
                (15008, "LAST_ACK")
            ]
        );
        assert!(blocking(table, &[5201]).is_empty());
        assert!(blocking("", &[15001]).is_empty());
    }

    #[test]
    fn a_summary_counts_each_port_and_state_once() {
        let cases: &[(&[(u16, &'static str)], &str)] = &[
            (&[], ""),
            (&[(15001, "TIME_WAIT")], "15001 TIME_WAIT x1"),
            (
                &[
                    (15006, "LISTEN"),
                    (15001, "TIME_WAIT"),
                    (15001, "TIME_WAIT"),
                    (15001, "FIN_WAIT2"),
                ],
                "15001 FIN_WAIT2 x1, 15001 TIME_WAIT x2, 15006 LISTEN x1",
            ),
        ];
        for (list, want) in cases {
            assert_eq!(summary(list), *want, "{list:?}");
        }
    }
}
