//! The waypoint-against-nginx results: rows with targets, JSON and Markdown.

use serde_json::{json, Value};

use super::client::Proto;
use super::load::{LoadResult, RunBrief};
use super::profile::Profile;

/// One proxy's two runs for one protocol.
#[derive(Clone, Debug)]
pub struct ProxyRuns {
    /// Open loop at the fixed rate.
    pub fixed: LoadResult,
    /// Closed loop at fixed concurrency.
    pub max: LoadResult,
}

impl ProxyRuns {
    pub fn to_json(&self) -> Value {
        json!({"fixed_rate": self.fixed.to_json(), "max_rate": self.max.to_json()})
    }
}

/// Everything measured for one protocol.
#[derive(Clone, Debug)]
pub struct ProtoResults {
    pub proto: Proto,
    /// Err: the installed nginx does not support this mode (nginx -t's words).
    pub nginx: Result<ProxyRuns, String>,
    pub waypoint: ProxyRuns,
    /// The mesh without the waypoint (L4 only), at the fixed rate.
    pub l4: LoadResult,
    /// The same with the node proxies on the proxy's CPU: the floor of any
    /// waypoint path (see `Path::L4Floor`).
    pub l4_floor: LoadResult,
}

impl ProtoResults {
    pub fn to_json(&self) -> Value {
        json!({
            "nginx": match &self.nginx {
                Ok(r) => r.to_json(),
                Err(why) => json!({"unsupported": why}),
            },
            "waypoint": self.waypoint.to_json(),
            "mesh_l4_no_waypoint": {"fixed_rate": self.l4.to_json()},
            "mesh_l4_via_proxy_cpu": {"fixed_rate": self.l4_floor.to_json()},
        })
    }
}

/// One line of a protocol's table.
#[derive(Debug, Clone)]
pub struct Row {
    pub proto: Proto,
    pub metric: String,
    pub nginx: String,
    pub waypoint: String,
    pub l4: String,
    /// The mesh without L7, node proxies on the proxy's CPU (see `Path::L4Floor`).
    pub floor: String,
    pub compare: String,
    pub target: String,
    /// None: informational.
    pub pass: Option<bool>,
}

const NA: &str = "—";

fn f(x: f64, d: usize) -> String {
    format!("{x:.d$}")
}

/// `value` followed by each repetition's figure, when there are several.
fn with_runs(value: String, runs: &[RunBrief], get: fn(&RunBrief) -> f64) -> String {
    if runs.len() < 2 {
        return value;
    }
    let each: Vec<String> = runs.iter().map(|r| format!("{:.0}", get(r))).collect();
    format!("{value} ({})", each.join(", "))
}

fn ratio(w: f64, n: f64) -> String {
    if n > 0.0 {
        format!("{:.2}×", w / n)
    } else {
        NA.into()
    }
}

/// The comparison rows of one protocol. Targets (from the issue): the
/// waypoint's requests per CPU-second at least nginx's, and its p99 at the
/// fixed rate no worse than nginx's.
pub fn rows(r: &ProtoResults, rate: f64, concurrency: usize) -> Vec<Row> {
    let p = r.proto;
    let w = &r.waypoint;
    let n = r.nginx.as_ref().ok();
    let ng = |get: &dyn Fn(&ProxyRuns) -> String| n.map(get).unwrap_or_else(|| "n/a".into());
    let mut v = Vec::new();
    let mut push = |metric: String,
                    nginx: String,
                    waypoint: String,
                    (l4, floor): (String, String),
                    compare: String,
                    target: &str,
                    pass: Option<bool>| {
        v.push(Row {
            proto: p,
            metric,
            nginx,
            waypoint,
            l4,
            floor,
            compare,
            target: target.into(),
            pass,
        });
    };
    push(
        format!("open loop at {rate:.0} req/s: achieved (req/s)"),
        ng(&|n| f(n.fixed.rps, 0)),
        f(w.fixed.rps, 0),
        (f(r.l4.rps, 0), f(r.l4_floor.rps, 0)),
        NA.into(),
        NA,
        None,
    );
    type Get = fn(&LoadResult) -> f64;
    let lat: [(&str, Get); 4] = [
        ("p50", |l| l.latency.p50_us),
        ("p90", |l| l.latency.p90_us),
        ("p99", |l| l.latency.p99_us),
        ("p99.9", |l| l.latency.p999_us),
    ];
    let p99 = |b: &RunBrief| b.p99_us;
    for (name, get) in lat {
        let (wv, nv) = (get(&w.fixed), n.map(|n| get(&n.fixed)));
        let is_p99 = name == "p99";
        let cell = |v: f64, l: &LoadResult| {
            if is_p99 {
                with_runs(f(v, 0), &l.runs, p99)
            } else {
                f(v, 0)
            }
        };
        push(
            format!("latency {name} (µs)"),
            n.map(|n| cell(get(&n.fixed), &n.fixed))
                .unwrap_or_else(|| "n/a".into()),
            cell(wv, &w.fixed),
            (cell(get(&r.l4), &r.l4), cell(get(&r.l4_floor), &r.l4_floor)),
            nv.map(|x| format!("{:+.0} µs", wv - x))
                .unwrap_or_else(|| NA.into()),
            if is_p99 { "waypoint ≤ nginx" } else { NA },
            if is_p99 { nv.map(|x| wv <= x) } else { None },
        );
    }
    push(
        "errors (fixed rate)".into(),
        ng(&|n| n.fixed.errors.to_string()),
        w.fixed.errors.to_string(),
        (r.l4.errors.to_string(), r.l4_floor.errors.to_string()),
        NA.into(),
        "0",
        Some(w.fixed.errors == 0 && n.is_none_or(|n| n.fixed.errors == 0)),
    );
    push(
        "proxy CPU per request, fixed rate (µs)".into(),
        ng(&|n| f(n.fixed.proxy_us_per_req(), 1)),
        f(w.fixed.proxy_us_per_req(), 1),
        (NA.into(), NA.into()),
        n.map(|n| ratio(w.fixed.proxy_us_per_req(), n.fixed.proxy_us_per_req()))
            .unwrap_or_else(|| NA.into()),
        NA,
        None,
    );
    let per_cpu = |b: &RunBrief| b.per_proxy_cpu_s;
    push(
        "requests per proxy CPU-second, fixed rate".into(),
        ng(&|n| with_runs(f(n.fixed.per_proxy_cpu_s(), 0), &n.fixed.runs, per_cpu)),
        with_runs(f(w.fixed.per_proxy_cpu_s(), 0), &w.fixed.runs, per_cpu),
        (NA.into(), NA.into()),
        n.map(|n| ratio(w.fixed.per_proxy_cpu_s(), n.fixed.per_proxy_cpu_s()))
            .unwrap_or_else(|| NA.into()),
        "waypoint ≥ nginx",
        n.map(|n| w.fixed.per_proxy_cpu_s() >= n.fixed.per_proxy_cpu_s()),
    );
    push(
        format!("closed loop, {concurrency} in flight: max rate (req/s)"),
        ng(&|n| with_runs(f(n.max.rps, 0), &n.max.runs, |b| b.rps)),
        with_runs(f(w.max.rps, 0), &w.max.runs, |b| b.rps),
        (NA.into(), NA.into()),
        n.map(|n| ratio(w.max.rps, n.max.rps))
            .unwrap_or_else(|| NA.into()),
        NA,
        None,
    );
    push(
        "requests per proxy CPU-second, max rate".into(),
        ng(&|n| with_runs(f(n.max.per_proxy_cpu_s(), 0), &n.max.runs, per_cpu)),
        with_runs(f(w.max.per_proxy_cpu_s(), 0), &w.max.runs, per_cpu),
        (NA.into(), NA.into()),
        n.map(|n| ratio(w.max.per_proxy_cpu_s(), n.max.per_proxy_cpu_s()))
            .unwrap_or_else(|| NA.into()),
        "waypoint ≥ nginx",
        n.map(|n| w.max.per_proxy_cpu_s() >= n.max.per_proxy_cpu_s()),
    );
    let busy = |l: &LoadResult| {
        let u = &l.usage;
        format!(
            "{:.0}% / {:.0}% / {:.0}%",
            u.pct(u.proxy_cpu_s),
            u.pct(u.bench_cpu_s),
            u.pct(u.mesh_cpu_s)
        )
    };
    push(
        "max rate, % of a CPU: proxy (CPU 1) / load generator + servers / node proxies (both CPU 0)".into(),
        ng(&|n| busy(&n.max)),
        busy(&w.max),
        (NA.into(), NA.into()),
        NA.into(),
        NA,
        None,
    );
    push(
        "max rate: latency p50 / p99 (µs)".into(),
        ng(&|n| format!("{:.0} / {:.0}", n.max.latency.p50_us, n.max.latency.p99_us)),
        format!("{:.0} / {:.0}", w.max.latency.p50_us, w.max.latency.p99_us),
        (NA.into(), NA.into()),
        NA.into(),
        NA,
        None,
    );
    push(
        "max rate: errors".into(),
        ng(&|n| n.max.errors.to_string()),
        w.max.errors.to_string(),
        (NA.into(), NA.into()),
        NA.into(),
        "0",
        Some(w.max.errors == 0 && n.is_none_or(|n| n.max.errors == 0)),
    );
    let others = |l: &LoadResult| l.usage.pct(l.usage.others_cpu_s);
    push(
        "noise: other CPU use on the machine, fixed / max rate (% of one CPU)".into(),
        ng(&|n| format!("{:.0} / {:.0}", others(&n.fixed), others(&n.max))),
        format!("{:.0} / {:.0}", others(&w.fixed), others(&w.max)),
        (
            format!("{:.0}", others(&r.l4)),
            format!("{:.0}", others(&r.l4_floor)),
        ),
        NA.into(),
        NA,
        None,
    );
    push(
        "node proxies' CPU per request, fixed / max rate (µs, both together)".into(),
        NA.into(),
        format!(
            "{:.1} / {:.1}",
            w.fixed.mesh_us_per_req(),
            w.max.mesh_us_per_req()
        ),
        (
            f(r.l4.mesh_us_per_req(), 1),
            f(r.l4_floor.mesh_us_per_req(), 1),
        ),
        NA.into(),
        NA,
        None,
    );
    v
}

pub fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "protocol": r.proto.key(),
                    "metric": r.metric,
                    "nginx": r.nginx,
                    "waypoint": r.waypoint,
                    "mesh_l4_no_waypoint": r.l4,
                    "mesh_l4_via_proxy_cpu": r.floor,
                    "waypoint_vs_nginx": r.compare,
                    "target": r.target,
                    "pass": r.pass,
                })
            })
            .collect(),
    )
}

fn pass_cell(p: Option<bool>) -> &'static str {
    match p {
        Some(true) => "PASS",
        Some(false) => "**FAIL**",
        None => "—",
    }
}

/// The summary table: the targets only, every protocol.
fn summary(rows: &[Row]) -> String {
    let mut s = String::from(
        "| protocol | target | nginx | waypoint | waypoint vs nginx | pass? |\n|---|---|---:|---:|---:|:---:|\n",
    );
    for r in rows.iter().filter(|r| r.pass.is_some() && r.target != "0") {
        s += &format!(
            "| {} | {} ({}) | {} | {} | {} | {} |\n",
            r.proto.label(),
            r.metric,
            r.target,
            r.nginx,
            r.waypoint,
            r.compare,
            pass_cell(r.pass)
        );
    }
    s
}

/// The whole report: notes, the target summary, one table per protocol, profiles.
pub fn markdown(
    title: &str,
    notes: &[String],
    rows: &[Row],
    profiles: &[(String, Profile)],
    analysis: &[String],
) -> String {
    let mut s = format!("# {title}\n\n");
    for n in notes {
        s += &format!("- {n}\n");
    }
    s += "\n## Targets\n\n";
    s += &summary(rows);
    let failed = rows.iter().filter(|r| r.pass == Some(false)).count();
    let passed = rows.iter().filter(|r| r.pass == Some(true)).count();
    s += &format!(
        "\n{passed} of {} checks pass (targets above, plus zero errors).\n",
        passed + failed
    );
    for proto in Proto::ALL {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.proto == proto).collect();
        if mine.is_empty() {
            continue;
        }
        s += &format!(
            "\n## {}\n\n| metric | nginx | waypoint | mesh L4, no waypoint | mesh L4 via CPU 1 (floor) | waypoint vs nginx | target | pass? |\n|---|---:|---:|---:|---:|---:|---|:---:|\n",
            proto.label()
        );
        for r in mine {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.metric,
                r.nginx,
                r.waypoint,
                r.l4,
                r.floor,
                r.compare,
                r.target,
                pass_cell(r.pass)
            );
        }
    }
    if !analysis.is_empty() {
        s += "\n## What dominates the waypoint's CPU time\n\nFrom the profiles below (self time by group), scaled by the CPU per request of the measured run of the same load (closed loop, or the fixed rate):\n\n";
        for a in analysis {
            s += &format!("- {a}\n");
        }
    }
    if !profiles.is_empty() {
        s += "\n### Syscalls and context switches per request (perf stat, profiled runs)\n\n| event |";
        for (name, _) in profiles {
            s += &format!(" {name} |");
        }
        s += "\n|---|";
        s += &"---:|".repeat(profiles.len());
        s += "\n";
        let mut events: Vec<&str> = Vec::new();
        for (_, p) in profiles {
            for (e, _) in &p.per_request {
                if !events.contains(&e.as_str()) {
                    events.push(e);
                }
            }
        }
        for e in events {
            s += &format!("| {e} |");
            for (_, p) in profiles {
                match p.per_request.iter().find(|(x, _)| x == e) {
                    Some((_, v)) => s += &format!(" {v:.2} |"),
                    None => s += " 0 |",
                }
            }
            s += "\n";
        }
    }
    for (name, p) in profiles {
        s += &format!(
            "\n### Profile: {name} ({} samples)\n\nSelf time by group:\n\n| group | self % |\n|---|---:|\n",
            p.samples
        );
        for (g, pct) in &p.groups {
            s += &format!("| {g} | {pct:.1} |\n");
        }
        s += "\nTop symbols by self time:\n\n| self % | symbol |\n|---:|---|\n";
        for (pct, sym) in &p.top_self {
            s += &format!("| {pct:.2} | `{}` |\n", sym.replace('|', "\\|"));
        }
        if !p.top_inclusive.is_empty() {
            s += "\nTrellis and metrics frames by inclusive time (callees included):\n\n| incl. % | symbol |\n|---:|---|\n";
            for (pct, sym) in &p.top_inclusive {
                s += &format!("| {pct:.2} | `{}` |\n", sym.replace('|', "\\|"));
            }
        }
    }
    s
}
