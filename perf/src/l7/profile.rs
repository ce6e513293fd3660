//! `perf record` of one proxy process while a closure runs load, and a
//! summary of where its CPU time went: self time per symbol, the same rolled
//! up into groups (kernel, crypto, TLS, HTTP/2, HTTP/1, runtime, allocator,
//! metrics, ...), and inclusive time of the waypoint's own functions.
//!
//! The machine is a VM without hardware counters: `cpu-clock` sampling,
//! DWARF call graphs (Rust release builds keep no frame pointers). Profiled
//! load runs after the measured ones, so their numbers are not perturbed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

/// Where a proxy's CPU time went.
#[derive(Clone, Debug, Default)]
pub struct Profile {
    pub samples: u64,
    /// (percent of samples, symbol) by self time, descending.
    pub top_self: Vec<(f64, String)>,
    /// (group, percent) of self time, descending.
    pub groups: Vec<(String, f64)>,
    /// (percent, symbol) by inclusive time, for the proxy's own code.
    pub top_inclusive: Vec<(f64, String)>,
    /// Syscalls and context switches per request answered (perf stat).
    pub per_request: Vec<(String, f64)>,
    /// The proxy's CPU per request in the *measured* (unprofiled) run of the
    /// same load, to turn shares into microseconds; 0 if unknown.
    pub cpu_us_per_request: f64,
}

impl Profile {
    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "groups": self.groups.iter().map(|(g, p)| json!({"group": g, "self_pct": p})).collect::<Vec<_>>(),
            "top_self": self.top_self.iter().map(|(p, s)| json!({"self_pct": p, "symbol": s})).collect::<Vec<_>>(),
            "top_inclusive": self.top_inclusive.iter().map(|(p, s)| json!({"inclusive_pct": p, "symbol": s})).collect::<Vec<_>>(),
            "cpu_us_per_request_measured": (self.cpu_us_per_request * 100.0).round() / 100.0,
            "per_request": self.per_request.iter().map(|(e, v)| json!({"event": e, "per_request": (v * 100.0).round() / 100.0})).collect::<Vec<_>>(),
        })
    }
}

/// Syscalls (and context switches) counted with `perf stat` while profiling.
pub const SYSCALL_EVENTS: &[&str] = &[
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_readv",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_recvmsg",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_futex",
    "context-switches",
];

impl Profile {
    /// One line: the CPU per request split into kernel and user space, and
    /// the largest user-space groups, in microseconds.
    pub fn breakdown(&self) -> String {
        let us = |pct: f64| self.cpu_us_per_request * pct / 100.0;
        let is_kernel = |g: &str| g.starts_with("kernel");
        let kernel: f64 = self
            .groups
            .iter()
            .filter(|(g, _)| is_kernel(g))
            .map(|(_, p)| p)
            .sum();
        let user: Vec<String> = self
            .groups
            .iter()
            .filter(|(g, _)| !is_kernel(g))
            .take(7)
            .map(|(g, p)| format!("{g} {:.1} µs", us(*p)))
            .collect();
        format!(
            "{:.1} µs of CPU per request: kernel {:.1} µs ({kernel:.0}%), user space {:.1} µs ({:.0}%), of which {}",
            self.cpu_us_per_request,
            us(kernel),
            us(100.0 - kernel),
            100.0 - kernel,
            user.join(", ")
        )
    }
}

/// How long perf may take to write its data after SIGINT.
const PERF_EXIT: Duration = Duration::from_secs(60);

/// Runs `load` while `perf record` samples `pid` into `data` and `perf
/// stat` counts its [`SYSCALL_EVENTS`]; returns the load's result and the
/// counts (event name without its `syscalls:sys_enter_` prefix).
pub fn record<T>(
    pid: u32,
    data: &Path,
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, BTreeMap<String, u64>)> {
    let pid_s = pid.to_string();
    let stat_file = data.with_extension("perfstat.csv");
    let rec = crate::harness::run::perf_record(&pid_s, data)?;
    let stat = Command::new("perf")
        .args([
            "stat",
            "-x",
            ",",
            "-e",
            &SYSCALL_EVENTS.join(","),
            "-p",
            &pid_s,
            "-o",
        ])
        .arg(&stat_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut children = vec![rec];
    match stat {
        Ok(c) => children.push(c),
        Err(e) => {
            crate::harness::run::stop_perf(&mut children, PERF_EXIT);
            return Err(e).context("starting perf stat");
        }
    }
    std::thread::sleep(Duration::from_millis(1000)); // let them attach
    let r = load();
    crate::harness::run::stop_perf(&mut children, PERF_EXIT);
    let counts = std::fs::read_to_string(&stat_file)
        .map(|t| crate::harness::run::perf_stat_counts(&t))
        .unwrap_or_default();
    Ok((r?, counts))
}

fn report(data: &Path, children: bool) -> Result<String> {
    let mut cmd = Command::new("perf");
    cmd.args(["report", "--stdio", "-g", "none", "--sort", "sym"]);
    if children {
        cmd.args(["--children", "--percent-limit", "0.5"]);
    } else {
        // Every symbol, with its sample count: the groups add up to 100%.
        cmd.args(["--no-children", "-n", "--percent-limit", "0"]);
    }
    let out = cmd
        .arg("-i")
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf report")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Summarises a `perf record` file.
pub fn summarize(data: &Path, top: usize) -> Result<Profile> {
    let mut p = Profile::default();
    let flat = report(data, false)?;
    let rows: Vec<(u64, String)> = flat
        .lines()
        .filter_map(|l| parse_counted(l.trim()))
        .collect();
    p.samples = rows.iter().map(|(n, _)| n).sum();
    let total = p.samples.max(1) as f64;
    let pct = move |n: u64| 100.0 * n as f64 / total;
    let mut groups: Vec<(String, u64)> = Vec::new();
    for (n, sym) in &rows {
        let g = group(sym);
        match groups.iter_mut().find(|(name, _)| name == g) {
            Some((_, v)) => *v += n,
            None => groups.push((g.to_string(), *n)),
        }
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.1));
    p.groups = groups
        .into_iter()
        .map(|(g, n)| (g, (pct(n) * 10.0).round() / 10.0))
        .collect();
    p.top_self = rows
        .iter()
        .take(top)
        .map(|(n, s)| ((pct(*n) * 100.0).round() / 100.0, shorten(s)))
        .collect();
    let inclusive = report(data, true)?;
    let own = [
        "trellis_waypoint::",
        "hbone::",
        "trellis_core::",
        "prometheus::",
    ];
    for line in inclusive.lines() {
        let Some((pct, sym)) = parse_row(line.trim(), 2) else {
            continue;
        };
        // Inlined frames repeat their caller's line; one of each is enough.
        let sym = shorten(sym.trim_end_matches(" (inlined)"));
        if own.iter().any(|o| sym.contains(o))
            && !p.top_inclusive.iter().any(|(_, s)| *s == sym)
            && p.top_inclusive.len() < top
        {
            p.top_inclusive.push((pct, sym));
        }
    }
    Ok(p)
}

/// A symbol for display: generic arguments below the first level become
/// `…` (`drop_in_place<hyper::H2Stream<…>>`), at most 140 characters.
pub fn shorten(sym: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for c in sym.chars() {
        match c {
            '<' => {
                depth += 1;
                if depth <= 2 {
                    out.push('<');
                }
                if depth == 2 {
                    out.push('…');
                }
            }
            '>' => {
                if depth <= 2 {
                    out.push('>');
                }
                depth = depth.saturating_sub(1);
            }
            _ if depth <= 1 => out.push(c),
            _ => {}
        }
    }
    if out.chars().count() > 140 {
        out = out.chars().take(139).collect::<String>() + "…";
    }
    out
}

/// `  4.89%   147  [.] symbol` → (147, "[.] symbol").
fn parse_counted(line: &str) -> Option<(u64, String)> {
    let line = line.trim();
    if line.starts_with('#') {
        return None;
    }
    let (pct, rest) = line.split_once(char::is_whitespace)?;
    pct.strip_suffix('%')?.parse::<f64>().ok()?;
    let (n, sym) = rest.trim_start().split_once(char::is_whitespace)?;
    Some((n.parse().ok()?, sym.trim().to_string()))
}

/// `  12.34%  [k] symbol` (one percentage column) or
/// `  40.00%  12.34%  [.] symbol` (children, self): the first percentage and the symbol.
fn parse_row(line: &str, pct_cols: usize) -> Option<(f64, String)> {
    let line = line.trim();
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let mut rest = line;
    let mut first = None;
    for _ in 0..pct_cols {
        let (tok, r) = rest.split_once(char::is_whitespace)?;
        let v: f64 = tok.strip_suffix('%')?.parse().ok()?;
        first.get_or_insert(v);
        rest = r.trim_start();
    }
    let sym = rest.trim();
    Some((first?, sym.to_string()))
}

/// The code path a symbol belongs to: `<hyper::X as Y>::f` → `hyper::X`;
/// `core::ptr::drop_in_place<h2::Y>` → `h2::Y` (drop glue counts as the
/// dropped type's crate).
fn head(sym: &str) -> &str {
    let mut s = sym.strip_prefix("[.] ").unwrap_or(sym);
    loop {
        s = s
            .trim_start_matches(['<', '&', '*'])
            .trim_start_matches("mut ");
        match s.strip_prefix("core::ptr::drop_in_place<") {
            Some(inner) => s = inner,
            None => break,
        }
    }
    let end = s.find(['<', ' ', '(', '>']).unwrap_or(s.len());
    &s[..end]
}

/// The group a symbol's self time counts towards (first match wins).
fn group(sym: &str) -> &'static str {
    if sym.starts_with("[k] ") {
        return "kernel (TCP/IP, veth, syscalls, scheduler)";
    }
    let h = head(sym);
    let lower = h.to_ascii_lowercase();
    let starts = |ps: &[&str]| ps.iter().any(|p| h.starts_with(p));
    let has = |ps: &[&str]| ps.iter().any(|p| lower.contains(p));
    if starts(&["ngx_"]) {
        "nginx"
    } else if starts(&["ring::", "ring_core"])
        || has(&[
            "aes", "gcm", "chacha", "poly1305", "sha256", "sha512", "x25519",
        ])
    {
        "crypto (AES-GCM, SHA, ring)"
    } else if starts(&["rustls::", "tokio_rustls::"]) {
        "rustls (TLS records)"
    } else if starts(&["h2::"]) {
        "h2 (HTTP/2 framing, HPACK)"
    } else if starts(&["hyper::", "hyper_util::", "httparse::"]) {
        "hyper (HTTP/1 parsing, HTTP glue)"
    } else if starts(&["tokio::", "mio::"]) {
        "tokio (runtime, I/O driver, timers)"
    } else if starts(&[
        "alloc::alloc",
        "alloc::raw_vec",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_realloc",
        "__rdl_",
    ]) || starts(&["mi_", "_mi_", "mimalloc", "je_", "_rjem_"]) // mimalloc's, jemalloc's internals
        || has(&[
            "malloc", "free", "realloc", "calloc", "_int_", "tcache", "memalign",
        ])
    {
        "allocator (malloc/free)"
    } else if has(&["memcpy", "memmove", "memset", "memcmp"]) {
        "memcpy / memmove / memset"
    } else if starts(&["prometheus::"]) {
        "prometheus (metrics)"
    } else if starts(&["tracing", "sharded_slab"]) {
        "tracing (spans, logs)"
    } else if starts(&["http::", "bytes::", "http_body"]) {
        "http / bytes (header maps, buffers)"
    } else if starts(&["trellis_waypoint::"]) {
        "trellis waypoint"
    } else if starts(&["hbone::", "trellis_core::"]) {
        "trellis hbone / core"
    } else if starts(&["trellis_node_proxy::"]) {
        "trellis node proxy"
    } else if starts(&["ztunnel::"]) {
        "ztunnel (its own code)"
    } else if starts(&["alloc::", "core::", "std::"]) {
        "Rust std (strings, vecs, fmt)"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_groups_parse() {
        let cases = [
            (
                "  12.34%  [k] _raw_spin_unlock_irqrestore",
                1,
                Some((12.34, "[k] _raw_spin_unlock_irqrestore")),
            ),
            (
                "  40.00%   1.50%  [.] hyper::proto::h1::role::parse_headers",
                2,
                Some((40.0, "[.] hyper::proto::h1::role::parse_headers")),
            ),
            ("# Samples: 12K of event 'cpu-clock'", 1, None),
            ("", 1, None),
        ];
        for (line, cols, want) in cases {
            let got = parse_row(line, cols);
            assert_eq!(got.as_ref().map(|(p, s)| (*p, s.as_str())), want, "{line}");
        }
        assert_eq!(
            parse_counted("4.89%   147  [.] __memmove_avx512_unaligned_erms"),
            Some((147, "[.] __memmove_avx512_unaligned_erms".to_string()))
        );
        assert_eq!(
            shorten("[.] core::ptr::drop_in_place<hyper::H2Stream<a::B<c>,d>>"),
            "[.] core::ptr::drop_in_place<hyper::H2Stream<…>>"
        );
        assert_eq!(parse_counted("# Samples: 3K of event 'cpu-clock'"), None);
        let groups = [
            (
                "[k] tcp_sendmsg",
                "kernel (TCP/IP, veth, syscalls, scheduler)",
            ),
            (
                "[.] ring_core_0_17_14__aes_gcm_enc_update_vaes_avx2",
                "crypto (AES-GCM, SHA, ring)",
            ),
            (
                "[.] prometheus::vec::MetricVec<T>::with_label_values",
                "prometheus (metrics)",
            ),
            (
                "[.] <hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse",
                "hyper (HTTP/1 parsing, HTTP glue)",
            ),
            (
                "[.] core::ptr::drop_in_place<h2::proto::streams::Streams<B,P>>",
                "h2 (HTTP/2 framing, HPACK)",
            ),
            ("[.] _int_malloc", "allocator (malloc/free)"),
            ("[.] _mi_page_retire", "allocator (malloc/free)"),
            (
                "[.] __memmove_avx_unaligned_erms",
                "memcpy / memmove / memset",
            ),
            (
                "[.] <alloc::string::String as core::clone::Clone>::clone",
                "Rust std (strings, vecs, fmt)",
            ),
            ("[.] ngx_http_free_request", "nginx"),
            (
                "[.] trellis_node_proxy::relay::copy::{{closure}}",
                "trellis node proxy",
            ),
            (
                "[.] <ztunnel::copy::BufferedSplitter as ztunnel::copy::ResizeBufRead>::poll_bytes",
                "ztunnel (its own code)",
            ),
            ("[.] something_else", "other"),
        ];
        for (sym, want) in groups {
            assert_eq!(group(sym), want, "{sym}");
        }
        let stat = "# started on x\n\n123,,raw_syscalls:sys_enter,1000,100.00,,\n45,,syscalls:sys_enter_writev,1000,100.00,,\n<not counted>,,syscalls:sys_enter_sendmsg,0,0.00,,\n";
        let m = crate::harness::run::perf_stat_counts(stat);
        assert_eq!(m.get("all syscalls"), Some(&123));
        assert_eq!(m.get("writev"), Some(&45));
        assert_eq!(m.len(), 2);
    }
}
