//! The bulk benchmark's report: each column's figures over the repeats
//! (mean and spread), and Trellis's ratio to each floor.

use serde_json::{json, Value};

use super::columns::Column;
use super::measure::{Rtt, Sample};
use crate::harness::hist::round2;

/// Mean, min and max of one figure over the repeats.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    /// None for no values.
    pub fn of(values: &[f64]) -> Option<Stat> {
        if values.is_empty() {
            return None;
        }
        let n = values.len();
        Some(Stat {
            mean: values.iter().sum::<f64>() / n as f64,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        })
    }

    /// (max - min) / mean: how far apart the repeats are.
    pub fn spread(&self) -> f64 {
        if self.mean == 0.0 {
            0.0
        } else {
            (self.max - self.min) / self.mean
        }
    }

    /// `mean (min–max)` with `digits` decimals; the mean alone for one value.
    pub fn cell(&self, digits: usize) -> String {
        if self.n < 2 {
            format!("{:.digits$}", self.mean)
        } else {
            format!(
                "{:.digits$} ({:.digits$}–{:.digits$})",
                self.mean, self.min, self.max
            )
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "mean": round3(self.mean), "min": round3(self.min), "max": round3(self.max),
            "n": self.n, "spread": round3(self.spread()),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One column over all its repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub column: Column,
    pub gbit_per_s: Stat,
    pub proxy_cpu_s_per_gb: Option<Stat>,
    pub server_cpu_s_per_gb: Stat,
    pub ctx_per_mb: Option<Stat>,
    pub syscalls_per_mb: Option<Stat>,
    pub retransmits: Stat,
    pub rtt_p50_us: Option<Stat>,
    pub rtt_p99_us: Option<Stat>,
    /// What the column adds to direct's round trip in the same round.
    pub added_p50_us: Option<Stat>,
    pub added_p99_us: Option<Stat>,
}

/// `f` of `s`'s round trip minus `f` of direct's in the same round (None
/// without both).
fn added(samples: &[Sample], s: &Sample, f: fn(&Rtt) -> f64) -> Option<f64> {
    let direct = samples
        .iter()
        .find(|d| d.column == Column::Direct && d.round == s.round)?;
    Some(f(s.rtt.as_ref()?) - f(direct.rtt.as_ref()?))
}

/// Summaries in the order of `columns`; a column with no sample is left out.
pub fn summarize(columns: &[Column], samples: &[Sample]) -> Vec<Summary> {
    columns
        .iter()
        .filter_map(|&column| {
            let of = |f: &dyn Fn(&Sample) -> Option<f64>| {
                let v: Vec<f64> = samples
                    .iter()
                    .filter(|s| s.column == column)
                    .filter_map(f)
                    .collect();
                Stat::of(&v)
            };
            Some(Summary {
                column,
                gbit_per_s: of(&|s| Some(s.gbit_per_s))?,
                proxy_cpu_s_per_gb: of(&|s| s.proxy_cpu_s_per_gb()),
                server_cpu_s_per_gb: of(&|s| Some(s.server_cpu_s_per_gb()))?,
                ctx_per_mb: of(&|s| s.ctx_per_mb()),
                syscalls_per_mb: of(&|s| s.syscalls_per_mb()),
                retransmits: of(&|s| Some(s.retransmits as f64))?,
                rtt_p50_us: of(&|s| s.rtt.map(|r| r.p50_us)),
                rtt_p99_us: of(&|s| s.rtt.map(|r| r.p99_us)),
                added_p50_us: (column != Column::Direct)
                    .then(|| of(&|s| added(samples, s, |r| r.p50_us)))
                    .flatten(),
                added_p99_us: (column != Column::Direct)
                    .then(|| of(&|s| added(samples, s, |r| r.p99_us)))
                    .flatten(),
            })
        })
        .collect()
}

/// A Trellis column against one other column, on the means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio {
    /// The Trellis column (an engine).
    pub of: Column,
    pub against: Column,
    /// Trellis's throughput ÷ the column's.
    pub throughput: f64,
    /// Trellis's proxy CPU per GB ÷ the column's (None against direct).
    pub cpu_per_gb: Option<f64>,
    /// What Trellis adds to the 64 B round trip's p50 ÷ what the column
    /// adds (None against direct, or without round trips).
    pub added_rtt_p50: Option<f64>,
}

/// Each Trellis column's ratio to every other column (none without a
/// Trellis column).
pub fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let trellis = summaries
        .iter()
        .filter(|s| s.column.trellis_args().is_some());
    trellis
        .flat_map(|t| {
            summaries
                .iter()
                .filter(move |s| s.column != t.column)
                .map(move |s| Ratio {
                    of: t.column,
                    against: s.column,
                    throughput: t.gbit_per_s.mean / s.gbit_per_s.mean,
                    cpu_per_gb: match (&t.proxy_cpu_s_per_gb, &s.proxy_cpu_s_per_gb) {
                        (Some(a), Some(b)) if b.mean > 0.0 => Some(a.mean / b.mean),
                        _ => None,
                    },
                    added_rtt_p50: match (&t.added_p50_us, &s.added_p50_us) {
                        (Some(a), Some(b)) if b.mean > 0.0 => Some(a.mean / b.mean),
                        _ => None,
                    },
                })
        })
        .collect()
}

fn opt_cell(s: &Option<Stat>, digits: usize) -> String {
    s.as_ref().map_or_else(|| "–".into(), |s| s.cell(digits))
}

/// The Markdown report: notes, the table of columns, the ratios, every sample.
pub fn markdown(
    title: &str,
    notes: &[String],
    summaries: &[Summary],
    samples: &[Sample],
) -> String {
    let mut md = format!("# {title}\n\n");
    for n in notes {
        md += &format!("- {n}\n");
    }
    md += "\nMean over the repeats, (min–max) when there are several.\n\n";
    md += "| column | throughput (Gbit/s) | proxy CPU (s/GB) | CPU 1 busy (s/GB) | ctx switches /MB | syscalls /MB | retransmits |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|\n";
    for s in summaries {
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {:.0} |\n",
            s.column.label(),
            s.gbit_per_s.cell(2),
            opt_cell(&s.proxy_cpu_s_per_gb, 3),
            s.server_cpu_s_per_gb.cell(3),
            opt_cell(&s.ctx_per_mb, 2),
            opt_cell(&s.syscalls_per_mb, 1),
            s.retransmits.mean,
        );
    }
    let r = ratios(summaries);
    if !r.is_empty() {
        md += "\nEach Trellis column ÷ each other column (on the means):\n\n";
        md += "| Trellis | against | throughput | proxy CPU per GB | added 64 B RTT p50 |\n|---|---|---:|---:|---:|\n";
        let x_cell = |v: Option<f64>| v.map_or_else(|| "–".into(), |c| format!("{c:.2}×"));
        for x in r {
            md += &format!(
                "| {} | {} | {:.2}× | {} | {} |\n",
                x.of.name(),
                x.against.label(),
                x.throughput,
                x_cell(x.cpu_per_gb),
                x_cell(x.added_rtt_p50),
            );
        }
    }
    md += &rtt_table(summaries);
    md += &kinds_table(summaries, samples);
    md += "\nEvery run, in the order measured:\n\n";
    md += "| round | column | Gbit/s | proxy CPU (s/GB) | CPU 1 busy (s/GB) | retransmits | RTT p50 (µs) | RTT p99 (µs) |\n|---:|---|---:|---:|---:|---:|---:|---:|\n";
    for s in samples {
        let rtt = |f: fn(&Rtt) -> f64| {
            s.rtt
                .as_ref()
                .map_or_else(|| "–".into(), |r| format!("{:.1}", f(r)))
        };
        md += &format!(
            "| {} | {} | {:.2} | {} | {:.3} | {} | {} | {} |\n",
            s.round,
            s.column.name(),
            s.gbit_per_s,
            s.proxy_cpu_s_per_gb()
                .map_or_else(|| "–".into(), |c| format!("{c:.3}")),
            s.server_cpu_s_per_gb(),
            s.retransmits,
            rtt(|r| r.p50_us),
            rtt(|r| r.p99_us),
        );
    }
    md
}

/// The 64 B round trip of each column and what it adds to direct's; empty
/// when no round trips were measured.
pub fn rtt_table(summaries: &[Summary]) -> String {
    if summaries.iter().all(|s| s.rtt_p50_us.is_none()) {
        return String::new();
    }
    let mut md = String::from("\n64 B round trip, µs (mean over the rounds; added: minus direct's in the same round):\n\n| column | p50 | p99 | added p50 | added p99 |\n|---|---:|---:|---:|---:|\n");
    for s in summaries {
        md += &format!(
            "| {} | {} | {} | {} | {} |\n",
            s.column.label(),
            opt_cell(&s.rtt_p50_us, 1),
            opt_cell(&s.rtt_p99_us, 1),
            opt_cell(&s.added_p50_us, 1),
            opt_cell(&s.added_p99_us, 1),
        );
    }
    md
}

/// Syscalls per MB by kind, each column's mean over its rounds, kinds
/// ordered by the largest figure; empty when nothing was counted.
pub fn kinds_table(summaries: &[Summary], samples: &[Sample]) -> String {
    let mean = |column: Column, kind: &str| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.column == column)
            .filter_map(|s| s.kind_per_mb(kind))
            .collect();
        Stat::of(&v).map(|s| s.mean)
    };
    let columns: Vec<Column> = summaries
        .iter()
        .map(|s| s.column)
        .filter(|&c| {
            samples
                .iter()
                .any(|s| s.column == c && !s.syscall_kinds.is_empty())
        })
        .collect();
    if columns.is_empty() {
        return String::new();
    }
    let mut kinds: Vec<(String, f64)> = Vec::new();
    for s in samples.iter().filter(|s| columns.contains(&s.column)) {
        for k in s.syscall_kinds.keys() {
            if !kinds.iter().any(|(n, _)| n == k) {
                let top = columns
                    .iter()
                    .filter_map(|&c| mean(c, k))
                    .fold(0.0, f64::max);
                kinds.push((k.clone(), top));
            }
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut md = String::from("\nSyscalls and context switches per MB by kind (perf stat, both processes of a column; mean over the rounds):\n\n| per MB |");
    let mut rule = String::from("|---|");
    for c in &columns {
        md += &format!(" {} |", c.name());
        rule += "---:|";
    }
    md += &format!("\n{rule}\n");
    for (k, _) in &kinds {
        md += &format!("| {k} |");
        for &c in &columns {
            md += &mean(c, k).map_or_else(|| " – |".to_string(), |v| format!(" {v:.2} |"));
        }
        md += "\n";
    }
    md
}

/// The JSON report: the summaries, the ratios and every sample.
pub fn to_json(notes: &[String], summaries: &[Summary], samples: &[Sample], setup: Value) -> Value {
    let opt = |s: &Option<Stat>| s.as_ref().map_or(Value::Null, Stat::to_json);
    json!({
        "notes": notes,
        "setup": setup,
        "columns": summaries.iter().map(|s| json!({
            "column": s.column.name(),
            "label": s.column.label(),
            "gbit_per_s": s.gbit_per_s.to_json(),
            "proxy_cpu_s_per_gb": opt(&s.proxy_cpu_s_per_gb),
            "server_cpu_busy_s_per_gb": s.server_cpu_s_per_gb.to_json(),
            "ctx_switches_per_mb": opt(&s.ctx_per_mb),
            "syscalls_per_mb": opt(&s.syscalls_per_mb),
            "retransmits": s.retransmits.to_json(),
            "rtt_p50_us": opt(&s.rtt_p50_us),
            "rtt_p99_us": opt(&s.rtt_p99_us),
            "added_rtt_p50_us": opt(&s.added_p50_us),
            "added_rtt_p99_us": opt(&s.added_p99_us),
        })).collect::<Vec<_>>(),
        "trellis_ratios": ratios(summaries).iter().map(|r| json!({
            "of": r.of.name(),
            "against": r.against.name(),
            "throughput": round3(r.throughput),
            "proxy_cpu_per_gb": r.cpu_per_gb.map(round3),
            "added_rtt_p50": r.added_rtt_p50.map(round3),
        })).collect::<Vec<_>>(),
        "samples": samples.iter().map(|s| json!({
            "round": s.round,
            "column": s.column.name(),
            "gbit_per_s": round2(s.gbit_per_s),
            "bytes": s.bytes,
            "retransmits": s.retransmits,
            "proxy_cpu_s": s.proxy_cpu_s.map(round3),
            "server_cpu_busy_s": round3(s.server_cpu_busy_s),
            "ctx_switches": s.ctx_switches,
            "syscalls": s.syscalls,
            "rtt_p50_us": s.rtt.map(|r| round2(r.p50_us)),
            "rtt_p99_us": s.rtt.map(|r| round2(r.p99_us)),
            "syscall_kinds": s.syscall_kinds,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(column: Column, round: usize, gbit: f64, cpu_s: Option<f64>) -> Sample {
        Sample {
            column,
            round,
            gbit_per_s: gbit,
            // 2 GB per run: CPU per GB is half the CPU seconds.
            bytes: 2_000_000_000,
            retransmits: round as u64,
            proxy_cpu_s: cpu_s,
            server_cpu_busy_s: 1.0,
            ctx_switches: cpu_s.map(|_| 4000),
            syscalls: None,
            rtt: None,
            syscall_kinds: Default::default(),
        }
    }

    #[test]
    fn syscall_kinds_per_mb_side_by_side() {
        let with = |column, round, kinds: &[(&str, u64)]| Sample {
            syscall_kinds: kinds.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            ..sample(column, round, 4.0, Some(1.0))
        };
        // 2 GB per run: 2000 MB.
        let samples = vec![
            with(
                Column::Trellis,
                0,
                &[("all syscalls", 120_000), ("writev", 20_000)],
            ),
            with(
                Column::Ztunnel,
                0,
                &[("all syscalls", 200_000), ("madvise", 4_000)],
            ),
            with(
                Column::Trellis,
                1,
                &[("all syscalls", 124_000), ("writev", 22_000)],
            ),
            sample(Column::TcpRelay, 0, 8.0, Some(1.0)),
        ];
        let s = summarize(
            &[Column::TcpRelay, Column::Trellis, Column::Ztunnel],
            &samples,
        );
        let md = kinds_table(&s, &samples);
        assert!(md.contains("| per MB | trellis | ztunnel |"), "{md}");
        assert!(md.contains("| all syscalls | 61.00 | 100.00 |"), "{md}");
        assert!(md.contains("| writev | 10.50 | – |"), "{md}");
        assert!(md.contains("| madvise | – | 2.00 |"), "{md}");
        let at = |k: &str| md.find(&format!("| {k} |")).unwrap();
        assert!(at("all syscalls") < at("writev") && at("writev") < at("madvise"));
        // Nothing counted: no table.
        assert_eq!(kinds_table(&s[..1], &samples[3..]), "");
    }

    #[test]
    fn round_trips_are_added_over_direct_in_the_same_round() {
        let with = |column, round, p50: f64| Sample {
            rtt: Some(Rtt {
                p50_us: p50,
                p99_us: 2.0 * p50,
            }),
            ..sample(column, round, 4.0, Some(1.0))
        };
        let samples = vec![
            with(Column::Direct, 0, 100.0),
            with(Column::TcpRelay, 0, 130.0),
            with(Column::Trellis, 0, 150.0),
            with(Column::Ztunnel, 0, 160.0),
            // Direct was slower in this round: what the others add is
            // measured against it, not against round 0's.
            with(Column::Direct, 1, 120.0),
            with(Column::TcpRelay, 1, 150.0),
            with(Column::Trellis, 1, 170.0),
            with(Column::Ztunnel, 1, 180.0),
            // A round without direct adds nothing to the added figures.
            with(Column::Trellis, 2, 999.0),
        ];
        let cols = [
            Column::Direct,
            Column::TcpRelay,
            Column::Trellis,
            Column::Ztunnel,
        ];
        let s = summarize(&cols, &samples);
        assert_eq!(s[0].added_p50_us, None, "direct adds nothing to itself");
        assert_eq!(s[1].added_p50_us.unwrap().mean, 30.0);
        assert_eq!(s[1].added_p99_us.unwrap().mean, 60.0);
        let t = s[2].added_p50_us.unwrap();
        assert_eq!((t.mean, t.n), (50.0, 2));
        assert_eq!(s[3].added_p50_us.unwrap().mean, 60.0);
        let r = ratios(&s);
        let against = |c| r.iter().find(|x| x.against == c).unwrap().added_rtt_p50;
        assert_eq!(against(Column::Direct), None);
        assert!((against(Column::Ztunnel).unwrap() - 50.0 / 60.0).abs() < 1e-9);
        assert!((against(Column::TcpRelay).unwrap() - 50.0 / 30.0).abs() < 1e-9);
        let md = rtt_table(&s);
        assert!(md.contains("| Istio ztunnel (node proxies, shared mode) | 170.0 (160.0–180.0) | 340.0 (320.0–360.0) | 60.0 (60.0–60.0) | 120.0 (120.0–120.0) |"), "{md}");
        // No round trips: no table.
        assert_eq!(
            rtt_table(&summarize(&cols, &[sample(Column::Direct, 0, 1.0, None)])),
            ""
        );
    }

    #[test]
    fn stats_of_values() {
        // (values, mean, min, max, spread)
        let cases: [(&[f64], f64, f64, f64, f64); 3] = [
            (&[2.0], 2.0, 2.0, 2.0, 0.0),
            (&[1.0, 2.0, 3.0], 2.0, 1.0, 3.0, 1.0),
            (&[0.0, 0.0], 0.0, 0.0, 0.0, 0.0),
        ];
        for (v, mean, min, max, spread) in cases {
            let s = Stat::of(v).unwrap();
            assert_eq!(
                (s.mean, s.min, s.max, s.n),
                (mean, min, max, v.len()),
                "{v:?}"
            );
            assert_eq!(s.spread(), spread, "{v:?}");
        }
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(Stat::of(&[1.0, 3.0]).unwrap().cell(1), "2.0 (1.0–3.0)");
        assert_eq!(Stat::of(&[1.0]).unwrap().cell(2), "1.00");
    }

    #[test]
    fn summaries_and_ratios_per_column() {
        let samples = vec![
            sample(Column::Direct, 0, 20.0, None),
            sample(Column::TcpRelay, 0, 10.0, Some(1.0)),
            sample(Column::Trellis, 0, 4.0, Some(3.0)),
            sample(Column::Direct, 1, 22.0, None),
            sample(Column::TcpRelay, 1, 12.0, Some(1.4)),
            sample(Column::Trellis, 1, 6.0, Some(3.4)),
        ];
        let cols = [
            Column::Direct,
            Column::TcpRelay,
            Column::TlsRelay,
            Column::Trellis,
        ];
        let s = summarize(&cols, &samples);
        // No TLS samples: no TLS row.
        let names: Vec<Column> = s.iter().map(|s| s.column).collect();
        assert_eq!(names, [Column::Direct, Column::TcpRelay, Column::Trellis]);
        assert_eq!(s[0].gbit_per_s.mean, 21.0);
        assert_eq!(s[0].proxy_cpu_s_per_gb, None);
        assert!((s[1].proxy_cpu_s_per_gb.unwrap().mean - 0.6).abs() < 1e-9);
        assert_eq!(s[2].ctx_per_mb.unwrap().mean, 2.0);
        assert_eq!(s[2].retransmits.mean, 0.5);
        let r = ratios(&s);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].against, r[0].throughput, r[0].cpu_per_gb),
            (Column::Direct, 5.0 / 21.0, None)
        );
        assert_eq!(r[1].against, Column::TcpRelay);
        assert!((r[1].throughput - 5.0 / 11.0).abs() < 1e-9);
        assert!((r[1].cpu_per_gb.unwrap() - 3.2 / 1.2).abs() < 1e-9);
        // Without Trellis there is nothing to compare.
        assert!(ratios(&s[..2]).is_empty());
        // Two engines: each against every other column, the other included.
        let mut both = samples.clone();
        both.push(sample(Column::TrellisLite, 0, 8.0, Some(2.0)));
        let cols = [Column::Direct, Column::Trellis, Column::TrellisLite];
        let r = ratios(&summarize(&cols, &both));
        let pairs: Vec<(Column, Column)> = r.iter().map(|x| (x.of, x.against)).collect();
        assert_eq!(
            pairs,
            [
                (Column::Trellis, Column::Direct),
                (Column::Trellis, Column::TrellisLite),
                (Column::TrellisLite, Column::Direct),
                (Column::TrellisLite, Column::Trellis),
            ]
        );
        assert!((r[3].throughput - 8.0 / 5.0).abs() < 1e-9);
        let md = markdown("t", &["note".into()], &s, &samples);
        assert!(
            md.contains(
                "| TCP relay pair (tokio copy) | 11.00 (10.00–12.00) | 0.600 (0.500–0.700) |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| TCP relay pair (tokio copy) | 0.45× | 2.67× |"),
            "{md}"
        );
    }
}
