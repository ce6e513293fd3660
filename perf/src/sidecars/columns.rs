//! The L4 workloads with one column per mesh: direct, Trellis ambient,
//! Trellis ambient + waypoint, Envoy sidecars L4 and L7, Trellis
//! sidecar-shaped, as a Markdown table and JSON.

use serde_json::{json, Value};

use crate::l4::report::{PathResults, ProxyCosts};

/// One column: a path's results and, for a mesh, its processes' costs.
pub struct Column<'a> {
    pub name: &'a str,
    pub results: &'a PathResults,
    /// None for the direct path.
    pub costs: Option<&'a ProxyCosts>,
}

impl Column<'_> {
    fn idle_rss_mib(&self) -> Option<f64> {
        self.costs
            .map(|c| c.idle_rss_kib.iter().map(|(_, k)| *k).sum::<u64>() as f64 / 1024.0)
    }
}

/// (label, value of a column as text).
type Metric = (&'static str, fn(&Column) -> String);

fn mesh(c: &Column, f: fn(&ProxyCosts) -> f64, digits: usize) -> String {
    c.costs
        .map(|k| format!("{:.*}", digits, f(k)))
        .unwrap_or_else(|| "–".into())
}

const METRICS: [Metric; 10] = [
    ("throughput, Gbit/s", |c| {
        format!("{:.2}", c.results.throughput.gbit_per_s)
    }),
    ("64 B RTT p50, µs", |c| {
        format!("{:.1}", c.results.rtt.p50_us)
    }),
    ("64 B RTT p99, µs", |c| {
        format!("{:.1}", c.results.rtt.p99_us)
    }),
    ("HTTP 1k req/s p50, µs", |c| {
        format!("{:.1}", c.results.http.latency.p50_us)
    }),
    ("HTTP 1k req/s p99, µs (errors)", |c| {
        format!(
            "{:.1} ({})",
            c.results.http.latency.p99_us, c.results.http.errors
        )
    }),
    ("new connections/s (errors)", |c| {
        format!(
            "{:.0} ({})",
            c.results.conn.conns_per_s, c.results.conn.errors
        )
    }),
    ("mesh CPU, s per GB", |c| mesh(c, |k| k.cpu_s_per_gb, 2)),
    ("mesh CPU, s per 1k HTTP requests", |c| {
        mesh(c, |k| k.cpu_s_per_1k_req, 3)
    }),
    ("mesh CPU, s per 1k connections", |c| {
        mesh(c, |k| k.cpu_s_per_1k_conn, 3)
    }),
    ("mesh idle RSS (all its proxies), MiB", |c| {
        c.idle_rss_mib()
            .map(|m| format!("{m:.1}"))
            .unwrap_or_else(|| "–".into())
    }),
];

pub fn markdown(cols: &[Column]) -> String {
    let mut md = String::from("| |");
    for c in cols {
        md += &format!(" {} |", c.name);
    }
    md += "\n|---|";
    md += &"---|".repeat(cols.len());
    md += "\n";
    for (label, f) in METRICS {
        md += &format!("| {label} |");
        for c in cols {
            md += &format!(" {} |", f(c));
        }
        md += "\n";
    }
    md
}

pub fn to_json(cols: &[Column]) -> Value {
    cols.iter()
        .map(|c| {
            json!({
                "name": c.name,
                "results": c.results.to_json(),
                "mesh": c.costs.map(|k| k.to_json()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(gbit: f64, conns: f64) -> PathResults {
        let mut r = PathResults::default();
        r.throughput.gbit_per_s = gbit;
        r.conn.conns_per_s = conns;
        r
    }

    #[test]
    fn one_column_per_mesh_and_no_mesh_costs_for_direct() {
        let (d, t) = (path(2.5, 2000.0), path(2.0, 1200.0));
        let costs = ProxyCosts {
            cpu_s_per_gb: 1.5,
            idle_rss_kib: vec![("a".into(), 1024), ("b".into(), 2048)],
            ..Default::default()
        };
        let cols = [
            Column {
                name: "direct",
                results: &d,
                costs: None,
            },
            Column {
                name: "mesh",
                results: &t,
                costs: Some(&costs),
            },
        ];
        let md = markdown(&cols);
        // (row label, expected cells)
        let cases = [
            ("throughput, Gbit/s", "| 2.50 | 2.00 |"),
            ("new connections/s (errors)", "| 2000 (0) | 1200 (0) |"),
            ("mesh CPU, s per GB", "| – | 1.50 |"),
            ("mesh idle RSS (all its proxies), MiB", "| – | 3.0 |"),
        ];
        for (label, cells) in cases {
            let line = md
                .lines()
                .find(|l| l.starts_with(&format!("| {label} |")))
                .unwrap_or_else(|| panic!("no row {label}:\n{md}"));
            assert!(line.ends_with(cells), "{line}");
        }
        assert!(
            md.starts_with("| | direct | mesh |\n|---|---|---|\n"),
            "{md}"
        );
        assert_eq!(to_json(&cols).as_array().unwrap().len(), 2);
    }
}
