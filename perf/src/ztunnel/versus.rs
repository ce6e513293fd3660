//! Issue 12's figures of Trellis's node proxies against Istio's ztunnel,
//! from `trellis-bench`'s L4 workloads run on the same pods in one run:
//! each figure for both, their ratio, the issue's target and whether it
//! is met. Pure: the bench measures, this decides.

use serde_json::{json, Value};

use crate::l4::report::{PathResults, ProxyCosts};

/// One mesh's figures: the workloads through it, and its processes' costs.
#[derive(Clone, Copy)]
pub struct Side<'a> {
    pub results: &'a PathResults,
    pub costs: &'a ProxyCosts,
}

/// What the ratio Trellis ÷ ztunnel must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    /// Shown for context; the issue sets no target against ztunnel.
    None,
}

impl Target {
    fn met(self, ratio: f64) -> Option<bool> {
        if !ratio.is_finite() {
            return match self {
                Target::None => None,
                _ => Some(false),
            };
        }
        match self {
            Target::AtLeast(t) => Some(ratio >= t),
            Target::AtMost(t) => Some(ratio <= t),
            Target::None => None,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtLeast(t) => format!("≥ {t}×"),
            Target::AtMost(t) => format!("≤ {t}×"),
            Target::None => "–".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub figure: &'static str,
    pub trellis: f64,
    pub ztunnel: f64,
    /// Decimals shown for the two values.
    pub digits: usize,
    /// Trellis ÷ ztunnel; not finite when ztunnel's figure is zero.
    pub ratio: f64,
    pub target: Target,
    pub met: Option<bool>,
}

/// A figure: its name, how to read it off a side, its decimals and target.
type Figure = (&'static str, fn(&PathResults, Side) -> f64, usize, Target);

fn rss_mib(kib: &[(String, u64)]) -> f64 {
    kib.iter().map(|(_, k)| *k).sum::<u64>() as f64 / 1024.0
}

/// In the issue's order. Latency is what the mesh adds to the direct
/// path's, since that is what a proxy can change.
const FIGURES: [Figure; 10] = [
    (
        "single-stream throughput, Gbit/s",
        |_, s| s.results.throughput.gbit_per_s,
        2,
        Target::AtLeast(1.15),
    ),
    (
        "proxy CPU per GB, s (both nodes)",
        |_, s| s.costs.cpu_s_per_gb,
        3,
        Target::AtMost(0.85),
    ),
    (
        "added 64 B RTT p50, µs",
        |d, s| s.results.rtt.p50_us - d.rtt.p50_us,
        1,
        Target::AtMost(0.8),
    ),
    (
        "added 64 B RTT p99, µs",
        |d, s| s.results.rtt.p99_us - d.rtt.p99_us,
        1,
        Target::None,
    ),
    (
        "HTTP keep-alive p99 at the fixed rate, µs",
        |_, s| s.results.http.latency.p99_us,
        1,
        Target::AtMost(1.0),
    ),
    (
        "new connections per second",
        |_, s| s.results.conn.conns_per_s,
        0,
        Target::None,
    ),
    (
        "proxy CPU per 1k HTTP requests, s",
        |_, s| s.costs.cpu_s_per_1k_req,
        3,
        Target::None,
    ),
    (
        "proxy CPU per 1k new connections, s",
        |_, s| s.costs.cpu_s_per_1k_conn,
        3,
        Target::None,
    ),
    (
        "idle RSS, both nodes, MiB",
        |_, s| rss_mib(&s.costs.idle_rss_kib),
        1,
        Target::None,
    ),
    (
        "RSS per idle connection, KiB (both nodes)",
        |_, s| s.costs.rss_per_conn_kib,
        2,
        Target::None,
    ),
];

pub fn rows(direct: &PathResults, trellis: Side, ztunnel: Side) -> Vec<Row> {
    FIGURES
        .iter()
        .map(|&(figure, of, digits, target)| {
            let (t, z) = (of(direct, trellis), of(direct, ztunnel));
            let ratio = if z == 0.0 { f64::NAN } else { t / z };
            Row {
                figure,
                trellis: t,
                ztunnel: z,
                digits,
                ratio,
                target,
                met: target.met(ratio),
            }
        })
        .collect()
}

/// The rows of several rounds in one: each figure's median for both, and
/// the median of the rounds' ratios, judged against the target. The
/// rounds alternate the two meshes under the same conditions, so a ratio
/// within a round is a paired measurement; its median resists a round
/// that the machine disturbed better than a ratio of medians would.
/// Every round must have the same figures in the same order.
pub fn over_rounds(rounds: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = rounds.first() else {
        return vec![];
    };
    (0..first.len())
        .map(|i| {
            let col = |f: fn(&Row) -> f64| median(rounds.iter().map(|r| f(&r[i])).collect());
            let ratio = col(|r| r.ratio);
            let r0 = &first[i];
            Row {
                trellis: col(|r| r.trellis),
                ztunnel: col(|r| r.ztunnel),
                ratio,
                met: r0.target.met(ratio),
                ..r0.clone()
            }
        })
        .collect()
}

/// The median; NaN (no ratio) sorts last, and an even count averages the
/// middle two.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "",
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut md = String::from(
        "| figure | Trellis | ztunnel | Trellis ÷ ztunnel | target | |\n|---|---:|---:|---:|---|:---:|\n",
    );
    for r in rows {
        let ratio = if r.ratio.is_finite() {
            format!("{:.2}×", r.ratio)
        } else {
            "–".into()
        };
        md += &format!(
            "| {} | {:.*} | {:.*} | {ratio} | {} | {} |\n",
            r.figure,
            r.digits,
            r.trellis,
            r.digits,
            r.ztunnel,
            r.target.text(),
            verdict(r.met)
        );
    }
    md
}

pub fn to_json(rows: &[Row]) -> Value {
    rows.iter()
        .map(|r| {
            json!({
                "figure": r.figure,
                "trellis": r.trellis,
                "ztunnel": r.ztunnel,
                "ratio": r.ratio.is_finite().then_some(r.ratio),
                "target": r.target.text(),
                "met": r.met,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(gbit: f64, rtt_p50: f64, http_p99: f64) -> PathResults {
        let mut r = PathResults::default();
        r.throughput.gbit_per_s = gbit;
        r.rtt.p50_us = rtt_p50;
        r.http.latency.p99_us = http_p99;
        r
    }

    fn costs(cpu_per_gb: f64, idle: &[u64]) -> ProxyCosts {
        ProxyCosts {
            cpu_s_per_gb: cpu_per_gb,
            idle_rss_kib: idle.iter().map(|k| ("n".to_string(), *k)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ratios_are_judged_against_the_issues_targets() {
        let direct = path(15.0, 20.0, 100.0);
        // (what, Trellis (Gbit/s, RTT p50, HTTP p99, CPU/GB), ztunnel's, figure, ratio, met)
        type Case = (
            &'static str,
            (f64, f64, f64, f64),
            (f64, f64, f64, f64),
            &'static str,
            f64,
            Option<bool>,
        );
        let cases: &[Case] = &[
            (
                "throughput ahead by the margin",
                (4.62, 60.0, 400.0, 1.2),
                (4.0, 60.0, 400.0, 1.5),
                "single-stream throughput, Gbit/s",
                1.155,
                Some(true),
            ),
            (
                "throughput ahead, short of the margin",
                (4.4, 60.0, 400.0, 1.2),
                (4.0, 60.0, 400.0, 1.5),
                "single-stream throughput, Gbit/s",
                1.1,
                Some(false),
            ),
            (
                "CPU per GB under the target",
                (4.0, 60.0, 400.0, 1.26),
                (4.0, 60.0, 400.0, 1.5),
                "proxy CPU per GB, s (both nodes)",
                0.84,
                Some(true),
            ),
            (
                "CPU per GB level",
                (4.0, 60.0, 400.0, 1.5),
                (4.0, 60.0, 400.0, 1.5),
                "proxy CPU per GB, s (both nodes)",
                1.0,
                Some(false),
            ),
            (
                "added RTT counts from direct's",
                (4.0, 52.0, 400.0, 1.5),
                (4.0, 60.0, 400.0, 1.5),
                "added 64 B RTT p50, µs",
                0.8,
                Some(true),
            ),
            (
                "the same RTT is level, not 0.87x",
                (4.0, 60.0, 400.0, 1.5),
                (4.0, 60.0, 400.0, 1.5),
                "added 64 B RTT p50, µs",
                1.0,
                Some(false),
            ),
            (
                "keep-alive p99 below ztunnel's",
                (4.0, 60.0, 390.0, 1.5),
                (4.0, 60.0, 400.0, 1.5),
                "HTTP keep-alive p99 at the fixed rate, µs",
                0.975,
                Some(true),
            ),
            (
                "keep-alive p99 above ztunnel's",
                (4.0, 60.0, 410.0, 1.5),
                (4.0, 60.0, 400.0, 1.5),
                "HTTP keep-alive p99 at the fixed rate, µs",
                1.025,
                Some(false),
            ),
        ];
        for (what, t, z, figure, ratio, met) in cases {
            let (pt, pz) = (path(t.0, t.1, t.2), path(z.0, z.1, z.2));
            let (ct, cz) = (costs(t.3, &[1024]), costs(z.3, &[2048]));
            let rows = rows(
                &direct,
                Side {
                    results: &pt,
                    costs: &ct,
                },
                Side {
                    results: &pz,
                    costs: &cz,
                },
            );
            let r = rows.iter().find(|r| r.figure == *figure).expect(figure);
            assert!((r.ratio - ratio).abs() < 1e-9, "{what}: ratio {}", r.ratio);
            assert_eq!(r.met, *met, "{what}");
        }
    }

    #[test]
    fn rounds_give_medians_and_the_median_ratio() {
        let direct = path(15.0, 20.0, 100.0);
        // (Trellis HTTP p99, ztunnel HTTP p99) per round.
        let per_round = [(900.0, 1350.0), (800.0, 800.0), (1000.0, 680.0)];
        let rounds: Vec<Vec<Row>> = per_round
            .iter()
            .map(|(t, z)| {
                let (pt, pz) = (path(4.0, 60.0, *t), path(4.0, 60.0, *z));
                let c = costs(1.5, &[1024]);
                rows(
                    &direct,
                    Side {
                        results: &pt,
                        costs: &c,
                    },
                    Side {
                        results: &pz,
                        costs: &c,
                    },
                )
            })
            .collect();
        let m = over_rounds(&rounds);
        let http = m
            .iter()
            .find(|r| r.figure.starts_with("HTTP keep-alive"))
            .unwrap();
        // Medians 900 and 800; ratios 0.667, 1.0, 1.47: the median ratio is 1.0.
        assert_eq!(
            (http.trellis, http.ztunnel, http.ratio),
            (900.0, 800.0, 1.0)
        );
        assert_eq!(http.met, Some(true));
        assert_eq!(m.len(), FIGURES.len());
        assert!(over_rounds(&[]).is_empty());
        // (values, median)
        let cases: &[(&[f64], f64)] = &[
            (&[3.0], 3.0),
            (&[3.0, 1.0, 2.0], 2.0),
            (&[4.0, 1.0, 2.0, 3.0], 2.5),
            (&[1.0, f64::NAN, 2.0], 2.0),
        ];
        for (v, want) in cases {
            assert_eq!(median(v.to_vec()), *want, "{v:?}");
        }
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn a_zero_figure_gives_no_ratio_and_a_target_is_then_missed() {
        let d = PathResults::default();
        let (t, z) = (path(4.0, 0.0, 0.0), PathResults::default());
        let (ct, cz) = (costs(1.0, &[1024, 1024]), costs(0.0, &[]));
        let rows = rows(
            &d,
            Side {
                results: &t,
                costs: &ct,
            },
            Side {
                results: &z,
                costs: &cz,
            },
        );
        let tp = &rows[0];
        assert!(!tp.ratio.is_finite());
        assert_eq!(tp.met, Some(false));
        let rss = rows
            .iter()
            .find(|r| r.figure.starts_with("idle RSS"))
            .unwrap();
        assert_eq!((rss.trellis, rss.met), (2.0, None));
        let md = markdown(&rows);
        assert!(
            md.contains(
                "| single-stream throughput, Gbit/s | 4.00 | 0.00 | – | ≥ 1.15× | missed |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| idle RSS, both nodes, MiB | 2.0 | 0.0 | – | – |  |"),
            "{md}"
        );
        assert_eq!(to_json(&rows).as_array().unwrap().len(), FIGURES.len());
    }
}
