//! Reading callgrind profiles: instructions by function and by crate, and
//! call counts.
//!
//! Why instructions: on this VM wall-clock figures for one round trip move by
//! ±10 µs from run to run, more than most single changes to the data path
//! are worth. An instruction count of the same binary under the same load is
//! exact and repeatable, so a change of a few percent is visible in one run.
//! It is a proxy for CPU time (it ignores cache misses and the kernel), so a
//! gain here is confirmed by the benchmarks before it is claimed.
//!
//! Only what the report needs is read from the format (see valgrind's
//! "Callgrind Format Specification"): `fn=` and `cfn=` with name
//! compression (`(id) name` once, `(id)` afterwards), cost lines
//! (`<position> <Ir>`, positions possibly relative or `*`), and `calls=`
//! lines, whose following cost line is the callee's inclusive cost and is
//! not the caller's own.

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CallgrindError {
    #[error("line {line}: {what}")]
    Malformed { line: usize, what: String },
    #[error("the profile has no `events: Ir` line; was it written by --tool=callgrind?")]
    NoIr,
}

/// A profile's instruction counts.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// Instructions executed in each function itself.
    pub self_ir: HashMap<String, u64>,
    /// How often each function was called.
    pub calls: HashMap<String, u64>,
}

impl Profile {
    pub fn total_ir(&self) -> u64 {
        self.self_ir.values().sum()
    }

    /// Calls of the function named exactly `name`.
    pub fn calls_named(&self, name: &str) -> u64 {
        self.calls.get(name).copied().unwrap_or(0)
    }

    /// Self instructions grouped by [`crate_of`], largest first.
    pub fn by_crate(&self) -> Vec<(String, u64)> {
        let mut m: HashMap<String, u64> = HashMap::new();
        for (k, v) in &self.self_ir {
            *m.entry(crate_of(k)).or_default() += v;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

/// The crate (or C symbol) a demangled function name belongs to:
/// `<h2::client::Connection<T,B> as Future>::poll` -> `h2`,
/// `__memcpy_avx_unaligned_erms` -> `__memcpy_avx_unaligned_erms`.
pub fn crate_of(name: &str) -> String {
    let n = name.trim_start_matches('<').trim_start_matches('&');
    let end = n
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(n.len());
    if end == 0 {
        return name.to_string();
    }
    n[..end].to_string()
}

/// Parses the text of one callgrind output file.
pub fn parse(text: &str) -> Result<Profile, CallgrindError> {
    let mut p = Profile::default();
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut current: Option<String> = None;
    let mut callee: Option<String> = None;
    let mut skip_next_cost = false;
    let mut saw_ir = false;
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if let Some(events) = line.strip_prefix("events:") {
            // Ir must be the first event: the reports below read column 1.
            saw_ir = events.split_whitespace().next() == Some("Ir");
            continue;
        }
        if let Some(rest) = line.strip_prefix("fn=") {
            current = Some(compressed_name(rest, &mut names, lineno)?);
            continue;
        }
        if let Some(rest) = line.strip_prefix("cfn=") {
            callee = Some(compressed_name(rest, &mut names, lineno)?);
            continue;
        }
        if let Some(rest) = line.strip_prefix("calls=") {
            let count = rest
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u64>().ok())
                .ok_or_else(|| bad(lineno, format!("bad calls= line {line:?}")))?;
            let name = callee
                .clone()
                .ok_or_else(|| bad(lineno, "calls= before any cfn="))?;
            *p.calls.entry(name).or_default() += count;
            skip_next_cost = true;
            continue;
        }
        let first = line.as_bytes().first().copied();
        let is_cost = matches!(first, Some(b'0'..=b'9' | b'+' | b'-' | b'*'));
        if !is_cost {
            continue;
        }
        if skip_next_cost {
            // The callee's inclusive cost, already counted in the callee itself.
            skip_next_cost = false;
            continue;
        }
        let mut cols = line.split_whitespace();
        cols.next(); // position
        let Some(ir) = cols.next() else { continue };
        let ir: u64 = ir
            .parse()
            .map_err(|_| bad(lineno, format!("bad cost {ir:?}")))?;
        let f = current
            .clone()
            .ok_or_else(|| bad(lineno, "cost line before any fn="))?;
        *p.self_ir.entry(f).or_default() += ir;
    }
    if !saw_ir {
        return Err(CallgrindError::NoIr);
    }
    Ok(p)
}

fn bad(line: usize, what: impl Into<String>) -> CallgrindError {
    CallgrindError::Malformed {
        line,
        what: what.into(),
    }
}

/// `(id) name` defines id; `(id)` refers to it; a bare name has no id.
fn compressed_name(
    rest: &str,
    names: &mut HashMap<u64, String>,
    lineno: usize,
) -> Result<String, CallgrindError> {
    let Some(after) = rest.strip_prefix('(') else {
        return Ok(rest.to_string());
    };
    let close = after
        .find(')')
        .ok_or_else(|| bad(lineno, format!("unclosed name id in {rest:?}")))?;
    let id: u64 = after[..close]
        .parse()
        .map_err(|_| bad(lineno, format!("bad name id in {rest:?}")))?;
    let name = after[close + 1..].trim_start();
    if name.is_empty() {
        names
            .get(&id)
            .cloned()
            .ok_or_else(|| bad(lineno, format!("name id ({id}) used before it was defined")))
    } else {
        names.insert(id, name.to_string());
        Ok(name.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# callgrind format
version: 1
positions: line
events: Ir
summary: 1000

ob=(1) /bin/proxy
fl=(1) src/a.rs
fn=(1) <h2::client::Connection<T,B> as core::future::future::Future>::poll
10 100
+2 50
cfn=(2) __memcpy_avx_unaligned_erms
calls=3 0
* 30
fn=(2)
0 30
fn=(3) tokio::runtime::task::raw::poll
5 20
cfn=(1)
calls=2 10
* 180
cfn=(2)
calls=1 0
* 10
fn=(2)
0 10
";

    #[test]
    fn self_costs_exclude_the_callees_inclusive_lines() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(
            p.self_ir["<h2::client::Connection<T,B> as core::future::future::Future>::poll"],
            150
        );
        assert_eq!(p.self_ir["__memcpy_avx_unaligned_erms"], 40);
        assert_eq!(p.self_ir["tokio::runtime::task::raw::poll"], 20);
        assert_eq!(p.total_ir(), 210);
    }

    #[test]
    fn calls_are_counted_per_callee_through_name_ids() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.calls["__memcpy_avx_unaligned_erms"], 4);
        assert_eq!(
            p.calls_named("<h2::client::Connection<T,B> as core::future::future::Future>::poll"),
            2,
            "cfn=(1) refers back to the name defined by fn=(1)"
        );
        assert_eq!(p.calls_named("__memcpy_avx_unaligned_erms"), 4);
        assert_eq!(p.calls_named("memcpy"), 0);
    }

    #[test]
    fn by_crate_groups_and_sorts() {
        let p = parse(SAMPLE).unwrap();
        let c = p.by_crate();
        assert_eq!(c[0], ("h2".to_string(), 150));
        assert_eq!(c[1], ("__memcpy_avx_unaligned_erms".to_string(), 40));
        assert_eq!(c[2], ("tokio".to_string(), 20));
    }

    #[test]
    fn crate_of_table() {
        for (name, want) in [
            ("tokio::runtime::task::raw::poll", "tokio"),
            ("<h2::share::RecvStream as Drop>::drop", "h2"),
            ("__memcpy_avx_unaligned_erms", "__memcpy_avx_unaligned_erms"),
            (
                "ring_core_0_17_14__gcm_ghash_avx",
                "ring_core_0_17_14__gcm_ghash_avx",
            ),
            ("0x000000000001f000", "0x000000000001f000"),
            ("(below main)", "(below main)"),
        ] {
            assert_eq!(crate_of(name), want, "{name}");
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for (text, what) in [
            ("events: Ir\nfn=(7)\n", "used before it was defined"),
            ("events: Ir\nfn=(x) f\n", "bad name id"),
            ("events: Ir\nfn=(1 f\n", "unclosed"),
            ("events: Ir\n10 5\n", "before any fn="),
            ("events: Ir\nfn=f\n10 many\n", "bad cost"),
            ("events: Ir\nfn=f\ncalls=x 1\n", "bad calls="),
            ("events: Ir\nfn=f\ncalls=1 1\n", "before any cfn="),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(what), "{text:?}: {e}");
        }
        assert!(matches!(parse("fn=f\n10 5\n"), Err(CallgrindError::NoIr)));
    }
}
