//! The metric and label names a Grafana dashboard's PromQL queries use, so
//! a test can hold them against the names the code exports. Pure, and only
//! as much of PromQL as names need: strings, `{...}` matchers, `by (...)`
//! lists, `[...]` ranges and Grafana's `$variables` are recognised; any
//! other identifier not followed by `(` and not a keyword is a metric.

use std::collections::BTreeSet;

use serde_json::Value;

/// Labels that Prometheus itself adds (`instance`, `job` to every target,
/// `le` to every histogram bucket), so no code names them.
pub const PROMETHEUS_LABELS: [&str; 3] = ["instance", "job", "le"];

/// Suffixes of a histogram's series; the code registers the bare name.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Aggregation operators, binary operators and modifiers.
const KEYWORDS: [&str; 24] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
];
/// Modifiers followed by a list of labels.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The names one query uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    pub metrics: BTreeSet<String>,
    pub labels: BTreeSet<String>,
}

/// The metric and label names of `expr`, or why it cannot be read.
pub fn names(expr: &str) -> Result<Names, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Names::default();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i)?,
            '[' => {
                i = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .map(|p| i + p + 1)
                    .ok_or_else(|| format!("unclosed '[' in {expr:?}"))?
            }
            '{' => i = labels_until(&chars, i + 1, '}', true, &mut out.labels, expr)?,
            '$' => i = skip_variable(&chars, i + 1),
            c if c.is_ascii_digit() || (c == '.' && next_is_digit(&chars, i)) => {
                i = skip_number(&chars, i)
            }
            c if is_ident_start(c) => {
                let (word, end) = ident(&chars, i);
                let after = skip_space(&chars, end);
                let next = chars.get(after).copied();
                if LABEL_LISTS.contains(&word.as_str()) {
                    if next == Some('(') {
                        i = labels_until(&chars, after + 1, ')', false, &mut out.labels, expr)?;
                        continue;
                    }
                } else if next != Some('(') && !KEYWORDS.contains(&word.as_str()) {
                    out.metrics.insert(word);
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(out)
}

/// Whether the code exports metric `name`: its name (or a histogram's
/// bare name) is a string literal of `source`.
pub fn metric_exported(name: &str, source: &str) -> bool {
    let quoted = |n: &str| source.contains(&format!("\"{n}\""));
    quoted(name)
        || HISTOGRAM_SUFFIXES
            .iter()
            .filter_map(|s| name.strip_suffix(s))
            .any(quoted)
}

/// Whether label `name` is one the code exports or Prometheus adds.
pub fn label_exported(name: &str, source: &str) -> bool {
    PROMETHEUS_LABELS.contains(&name) || source.contains(&format!("\"{name}\""))
}

/// Every `(panel title, expr)` of a Grafana dashboard, rows' panels included.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.to_string(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn next_is_digit(chars: &[char], i: usize) -> bool {
    chars.get(i + 1).is_some_and(char::is_ascii_digit)
}

fn ident(chars: &[char], start: usize) -> (String, usize) {
    let end = chars[start..]
        .iter()
        .position(|&c| !is_ident(c))
        .map_or(chars.len(), |p| start + p);
    (chars[start..end].iter().collect(), end)
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// Past a number: digits, a decimal point, an exponent (`1e3`).
fn skip_number(chars: &[char], mut i: usize) -> usize {
    while chars
        .get(i)
        .is_some_and(|&c| c.is_ascii_alphanumeric() || c == '.')
    {
        i += 1;
    }
    i
}

/// Past `$name` or `${name}` (Grafana's variables); `i` is after the `$`.
fn skip_variable(chars: &[char], i: usize) -> usize {
    if chars.get(i) == Some(&'{') {
        chars[i..]
            .iter()
            .position(|&c| c == '}')
            .map_or(chars.len(), |p| i + p + 1)
    } else {
        ident(chars, i).1
    }
}

/// Past a quoted string starting at `start`.
fn skip_string(chars: &[char], start: usize) -> Result<usize, String> {
    let quote = chars[start];
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string starting at character {start}"))
}

/// Label names up to `close`: the matchers of `{...}` (`name op "value"`,
/// so strings and operators are skipped) or, with `values` false, the
/// plain list of `by (...)`, where anything but names and commas is wrong.
fn labels_until(
    chars: &[char],
    mut i: usize,
    close: char,
    values: bool,
    labels: &mut BTreeSet<String>,
    expr: &str,
) -> Result<usize, String> {
    while i < chars.len() {
        match chars[i] {
            c if c == close => return Ok(i + 1),
            c if is_ident_start(c) => {
                let (word, end) = ident(chars, i);
                labels.insert(word);
                i = end;
            }
            '"' | '\'' | '`' if values => i = skip_string(chars, i)?,
            c if values || c == ',' || c.is_whitespace() => i += 1,
            other => return Err(format!("{other:?} in a label list of {expr:?}")),
        }
    }
    Err(format!(
        "unclosed '{}' in {expr:?}",
        if values { '{' } else { '(' }
    ))
}
