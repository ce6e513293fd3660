//! The chain's results: one cell per (column, depth), the added latency
//! per hop against direct, the mesh's CPU per 1,000 requests, and the
//! issue's target ratios, as Markdown and JSON.

use serde_json::{json, Value};

use super::columns::Column;
use crate::harness::hist::round2;
use crate::l4::http_load::RateResult;

/// The bound on every ratio: ambient ≤ 0.5× the Envoy sidecars'.
pub const TARGET_RATIO: f64 = 0.5;

/// One chain depth through one column.
#[derive(Debug, Clone)]
pub struct Cell {
    pub column: Column,
    pub depth: usize,
    pub http: RateResult,
    /// CPU seconds (utime+stime) of every mesh process over the phase;
    /// None for direct.
    pub mesh_cpu_s: Option<f64>,
    /// Requests that CPU time served: the measured ones and the load's
    /// warm-up requests (sent in the same window).
    pub requests: u64,
    /// Mesh processes summed.
    pub procs: usize,
}

impl Cell {
    pub fn cpu_s_per_1k(&self) -> Option<f64> {
        self.mesh_cpu_s
            .map(|s| s / (self.requests.max(1) as f64 / 1000.0))
    }

    fn to_json(&self, direct: Option<&Cell>) -> Value {
        let added = direct.map(|d| added_per_hop(self, d));
        json!({
            "column": self.column.key(),
            "depth": self.depth,
            "load": self.http.to_json(),
            "mesh_cpu_s": self.mesh_cpu_s.map(round6),
            "requests_in_cpu_window": self.requests,
            "mesh_cpu_s_per_1k_req": self.cpu_s_per_1k().map(round6),
            "mesh_processes": self.procs,
            "added_per_hop_p50_us": added.map(|a| round2(a.0)),
            "added_per_hop_p99_us": added.map(|a| round2(a.1)),
        })
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// (p50, p99) added per hop against direct at the same depth, µs.
pub fn added_per_hop(c: &Cell, direct: &Cell) -> (f64, f64) {
    let d = c.depth.max(1) as f64;
    (
        (c.http.latency.p50_us - direct.http.latency.p50_us) / d,
        (c.http.latency.p99_us - direct.http.latency.p99_us) / d,
    )
}

fn find(cells: &[Cell], col: Column, depth: usize) -> Option<&Cell> {
    cells.iter().find(|c| c.column == col && c.depth == depth)
}

/// One target of the issue: ambient's figure against an Envoy column's.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub figure: &'static str,
    pub against: Column,
    pub depth: usize,
    pub ambient: f64,
    pub envoy: f64,
    /// ambient / envoy; None when Envoy's figure is not positive.
    pub ratio: Option<f64>,
}

impl Target {
    pub fn met(&self) -> bool {
        self.ratio.is_some_and(|r| r <= TARGET_RATIO)
    }
}

/// The chain targets at the deepest chain measured: added p50,
/// added p99 (whole chain, against direct) and mesh CPU per request, of
/// Trellis ambient against each Envoy column. Empty without ambient and
/// direct.
pub fn targets(cells: &[Cell]) -> Vec<Target> {
    let Some(depth) = cells.iter().map(|c| c.depth).max() else {
        return vec![];
    };
    let (Some(direct), Some(amb)) = (
        find(cells, Column::Direct, depth),
        find(cells, Column::Ambient, depth),
    ) else {
        return vec![];
    };
    type Figure = (&'static str, fn(&Cell, &Cell) -> Option<f64>);
    let figures: [Figure; 3] = [
        ("added p50 over the chain, µs", |c, d| {
            Some(c.http.latency.p50_us - d.http.latency.p50_us)
        }),
        ("added p99 over the chain, µs", |c, d| {
            Some(c.http.latency.p99_us - d.http.latency.p99_us)
        }),
        ("mesh CPU per 1,000 requests, s", |c, _| c.cpu_s_per_1k()),
    ];
    let mut out = Vec::new();
    for (figure, f) in figures {
        for against in [Column::EnvoyL7, Column::EnvoyL4] {
            let Some(env) = find(cells, against, depth) else {
                continue;
            };
            let (Some(a), Some(e)) = (f(amb, direct), f(env, direct)) else {
                continue;
            };
            out.push(Target {
                figure,
                against,
                depth,
                ambient: a,
                envoy: e,
                ratio: (e > 0.0).then(|| a / e),
            });
        }
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

/// The results table (one row per column and depth) and the targets.
pub fn markdown(cells: &[Cell]) -> String {
    let mut md = String::from(
        "| column | depth | req/s (errors) | p50 µs | p99 µs | p99.9 µs | added per hop p50 µs | added per hop p99 µs | mesh CPU s per 1k req | mesh processes |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let direct = find(cells, Column::Direct, c.depth);
        let added = direct
            .filter(|_| c.column != Column::Direct)
            .map(|d| added_per_hop(c, d));
        let l = &c.http.latency;
        md += &format!(
            "| {} | {} | {:.0} ({}) | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |\n",
            c.column.name(),
            c.depth,
            c.http.achieved_rps,
            c.http.errors,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            opt(added.map(|a| a.0), 1),
            opt(added.map(|a| a.1), 1),
            opt(c.cpu_s_per_1k(), 3),
            c.procs,
        );
    }
    let t = targets(cells);
    if !t.is_empty() {
        md += &format!(
            "\nTargets (issue 15 §4) at {} services: Trellis ambient ≤ {TARGET_RATIO}× the Envoy sidecars'.\n\n| figure | against | Trellis ambient | Envoy | ratio | target |\n|---|---|---|---|---|---|\n",
            t[0].depth
        );
        for x in &t {
            md += &format!(
                "| {} | {} | {:.3} | {:.3} | {} | {} |\n",
                x.figure,
                x.against.name(),
                x.ambient,
                x.envoy,
                x.ratio
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "n/a (Envoy adds nothing)".into()),
                if x.met() { "MET" } else { "MISSED" },
            );
        }
    }
    md
}

pub fn to_json(cells: &[Cell]) -> Value {
    json!({
        "cells": cells
            .iter()
            .map(|c| c.to_json(find(cells, Column::Direct, c.depth).filter(|_| c.column != Column::Direct)))
            .collect::<Vec<_>>(),
        "targets": targets(cells).iter().map(|t| json!({
            "figure": t.figure,
            "against": t.against.key(),
            "depth": t.depth,
            "ambient": round6(t.ambient),
            "envoy": round6(t.envoy),
            "ratio": t.ratio.map(round6),
            "target_ratio": TARGET_RATIO,
            "met": t.met(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(column: Column, depth: usize, p50: f64, p99: f64, cpu: Option<f64>) -> Cell {
        let mut http = RateResult::default();
        http.latency.p50_us = p50;
        http.latency.p99_us = p99;
        Cell {
            column,
            depth,
            http,
            mesh_cpu_s: cpu,
            requests: 2000,
            procs: 2,
        }
    }

    #[test]
    fn added_latency_is_per_hop_against_direct() {
        let d = cell(Column::Direct, 5, 500.0, 900.0, None);
        // (column p50, p99, expected per hop p50, p99)
        let cases = [
            (1000.0, 1900.0, 100.0, 200.0),
            (500.0, 900.0, 0.0, 0.0),
            (400.0, 900.0, -20.0, 0.0),
        ];
        for (p50, p99, w50, w99) in cases {
            let c = cell(Column::Ambient, 5, p50, p99, Some(1.0));
            assert_eq!(added_per_hop(&c, &d), (w50, w99), "{p50} {p99}");
        }
        assert_eq!(
            cell(Column::Ambient, 5, 0.0, 0.0, Some(0.5)).cpu_s_per_1k(),
            Some(0.25)
        );
        assert_eq!(d.cpu_s_per_1k(), None);
    }

    #[test]
    fn targets_compare_ambient_with_each_envoy_column_at_the_deepest_chain() {
        let cells = vec![
            cell(Column::Direct, 1, 100.0, 200.0, None),
            cell(Column::Ambient, 1, 1000.0, 9000.0, Some(9.0)),
            cell(Column::Direct, 5, 500.0, 1000.0, None),
            cell(Column::Ambient, 5, 700.0, 1400.0, Some(1.0)),
            cell(Column::EnvoyL7, 5, 1500.0, 2000.0, Some(4.0)),
            cell(Column::EnvoyL4, 5, 500.0, 1200.0, Some(1.5)),
        ];
        let t = targets(&cells);
        // (figure prefix, against, ratio, met)
        let want: [(&str, Column, Option<f64>, bool); 6] = [
            ("added p50", Column::EnvoyL7, Some(0.2), true),
            ("added p50", Column::EnvoyL4, None, false),
            ("added p99", Column::EnvoyL7, Some(0.4), true),
            ("added p99", Column::EnvoyL4, Some(2.0), false),
            ("mesh CPU", Column::EnvoyL7, Some(0.25), true),
            ("mesh CPU", Column::EnvoyL4, Some(1.0 / 1.5), false),
        ];
        assert_eq!(t.len(), want.len(), "{t:?}");
        for (x, (fig, against, ratio, met)) in t.iter().zip(want) {
            assert!(x.figure.starts_with(fig), "{x:?}");
            assert_eq!(x.against, against, "{x:?}");
            assert_eq!(x.depth, 5);
            match (x.ratio, ratio) {
                (Some(a), Some(b)) => assert!((a - b).abs() < 1e-9, "{x:?}"),
                (a, b) => assert_eq!(a, b, "{x:?}"),
            }
            assert_eq!(x.met(), met, "{x:?}");
        }
        let md = markdown(&cells);
        assert!(md.contains("| Trellis ambient | 5 |"), "{md}");
        assert!(md.contains("| 0.20x | MET |"), "{md}");
        assert!(md.contains("n/a (Envoy adds nothing) | MISSED |"), "{md}");
        // Without direct or ambient at the deepest chain: no targets.
        assert!(targets(&cells[..2]).is_empty());
        assert!(targets(&cells[2..3]).is_empty());
        assert_eq!(to_json(&cells)["targets"].as_array().unwrap().len(), 6);
    }
}
