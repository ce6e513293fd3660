//! The waypoint-against-nginx-and-Envoy results: rows with targets, JSON
//! and Markdown.

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
    /// Envoy as the waypoint (HBONE in and out, same routes and policy).
    pub envoy: ProxyRuns,
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
            "envoy_waypoint": self.envoy.to_json(),
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
    pub envoy: String,
    pub l4: String,
    /// The mesh without L7, node proxies on the proxy's CPU (see `Path::L4Floor`).
    pub floor: String,
    pub compare: String,
    pub target: String,
    /// None: informational.
    pub pass: Option<bool>,
    /// The waypoint against the Envoy waypoint.
    pub vs_envoy: String,
    /// The target against the Envoy waypoint (issue 15), and whether it is met.
    pub envoy_target: String,
    pub envoy_pass: Option<bool>,
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

/// A target against another column: its text and whether it is met.
type Target = (&'static str, Option<bool>);
const NONE: Target = (NA, None);

/// The comparison rows of one protocol. Targets: against nginx (issue 14),
/// the waypoint's requests per CPU-second at least nginx's and its p99 at
/// the fixed rate no worse; against the Envoy waypoint (issue 15), requests
/// per CPU-second at least 2× Envoy's at max rate and 1.5× at the fixed
/// rate, and p99 at the fixed rate no worse.
pub fn rows(r: &ProtoResults, rate: f64, concurrency: usize) -> Vec<Row> {
    let p = r.proto;
    let w = &r.waypoint;
    let e = &r.envoy;
    let n = r.nginx.as_ref().ok();
    let ng = |get: &dyn Fn(&ProxyRuns) -> String| n.map(get).unwrap_or_else(|| "n/a".into());
    let mut v = Vec::new();
    // (metric, nginx, waypoint, envoy, (l4, floor), vs nginx, target vs
    // nginx, vs envoy, target vs envoy)
    #[allow(clippy::too_many_arguments)]
    let mut push = |metric: String,
                    nginx: String,
                    waypoint: String,
                    envoy: String,
                    (l4, floor): (String, String),
                    (compare, (target, pass)): (String, Target),
                    (vs_envoy, (envoy_target, envoy_pass)): (String, Target)| {
        v.push(Row {
            proto: p,
            metric,
            nginx,
            waypoint,
            envoy,
            l4,
            floor,
            compare,
            target: target.into(),
            pass,
            vs_envoy,
            envoy_target: envoy_target.into(),
            envoy_pass,
        });
    };
    let none = || (NA.to_string(), NONE);
    let nas = || (NA.to_string(), NA.to_string());
    push(
        format!("open loop at {rate:.0} req/s: achieved (req/s)"),
        ng(&|n| f(n.fixed.rps, 0)),
        f(w.fixed.rps, 0),
        f(e.fixed.rps, 0),
        (f(r.l4.rps, 0), f(r.l4_floor.rps, 0)),
        none(),
        none(),
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
        let (wv, nv, ev) = (get(&w.fixed), n.map(|n| get(&n.fixed)), get(&e.fixed));
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
            cell(ev, &e.fixed),
            (cell(get(&r.l4), &r.l4), cell(get(&r.l4_floor), &r.l4_floor)),
            (
                nv.map(|x| format!("{:+.0} µs", wv - x))
                    .unwrap_or_else(|| NA.into()),
                if is_p99 {
                    ("waypoint ≤ nginx", nv.map(|x| wv <= x))
                } else {
                    NONE
                },
            ),
            (
                format!("{:+.0} µs", wv - ev),
                if is_p99 {
                    ("waypoint ≤ Envoy", Some(wv <= ev))
                } else {
                    NONE
                },
            ),
        );
    }
    push(
        "errors (fixed rate)".into(),
        ng(&|n| n.fixed.errors.to_string()),
        w.fixed.errors.to_string(),
        e.fixed.errors.to_string(),
        (r.l4.errors.to_string(), r.l4_floor.errors.to_string()),
        (
            NA.into(),
            (
                "0",
                Some(w.fixed.errors == 0 && n.is_none_or(|n| n.fixed.errors == 0)),
            ),
        ),
        (NA.into(), ("0", Some(e.fixed.errors == 0))),
    );
    push(
        "proxy CPU per request, fixed rate (µs)".into(),
        ng(&|n| f(n.fixed.proxy_us_per_req(), 1)),
        f(w.fixed.proxy_us_per_req(), 1),
        f(e.fixed.proxy_us_per_req(), 1),
        nas(),
        (
            n.map(|n| ratio(w.fixed.proxy_us_per_req(), n.fixed.proxy_us_per_req()))
                .unwrap_or_else(|| NA.into()),
            NONE,
        ),
        (
            ratio(w.fixed.proxy_us_per_req(), e.fixed.proxy_us_per_req()),
            NONE,
        ),
    );
    let per_cpu = |b: &RunBrief| b.per_proxy_cpu_s;
    let (wf, ef) = (w.fixed.per_proxy_cpu_s(), e.fixed.per_proxy_cpu_s());
    push(
        "requests per proxy CPU-second, fixed rate".into(),
        ng(&|n| with_runs(f(n.fixed.per_proxy_cpu_s(), 0), &n.fixed.runs, per_cpu)),
        with_runs(f(wf, 0), &w.fixed.runs, per_cpu),
        with_runs(f(ef, 0), &e.fixed.runs, per_cpu),
        nas(),
        (
            n.map(|n| ratio(wf, n.fixed.per_proxy_cpu_s()))
                .unwrap_or_else(|| NA.into()),
            (
                "waypoint ≥ nginx",
                n.map(|n| wf >= n.fixed.per_proxy_cpu_s()),
            ),
        ),
        (
            ratio(wf, ef),
            ("waypoint ≥ 1.5× Envoy", Some(wf >= 1.5 * ef)),
        ),
    );
    push(
        format!("closed loop, {concurrency} in flight: max rate (req/s)"),
        ng(&|n| with_runs(f(n.max.rps, 0), &n.max.runs, |b| b.rps)),
        with_runs(f(w.max.rps, 0), &w.max.runs, |b| b.rps),
        with_runs(f(e.max.rps, 0), &e.max.runs, |b| b.rps),
        nas(),
        (
            n.map(|n| ratio(w.max.rps, n.max.rps))
                .unwrap_or_else(|| NA.into()),
            NONE,
        ),
        (ratio(w.max.rps, e.max.rps), NONE),
    );
    let (wm, em) = (w.max.per_proxy_cpu_s(), e.max.per_proxy_cpu_s());
    push(
        "requests per proxy CPU-second, max rate".into(),
        ng(&|n| with_runs(f(n.max.per_proxy_cpu_s(), 0), &n.max.runs, per_cpu)),
        with_runs(f(wm, 0), &w.max.runs, per_cpu),
        with_runs(f(em, 0), &e.max.runs, per_cpu),
        nas(),
        (
            n.map(|n| ratio(wm, n.max.per_proxy_cpu_s()))
                .unwrap_or_else(|| NA.into()),
            ("waypoint ≥ nginx", n.map(|n| wm >= n.max.per_proxy_cpu_s())),
        ),
        (ratio(wm, em), ("waypoint ≥ 2× Envoy", Some(wm >= 2.0 * em))),
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
        busy(&e.max),
        nas(),
        none(),
        none(),
    );
    let lat_max = |l: &LoadResult| format!("{:.0} / {:.0}", l.latency.p50_us, l.latency.p99_us);
    push(
        "max rate: latency p50 / p99 (µs)".into(),
        ng(&|n| lat_max(&n.max)),
        lat_max(&w.max),
        lat_max(&e.max),
        nas(),
        none(),
        none(),
    );
    push(
        "max rate: errors".into(),
        ng(&|n| n.max.errors.to_string()),
        w.max.errors.to_string(),
        e.max.errors.to_string(),
        nas(),
        (
            NA.into(),
            (
                "0",
                Some(w.max.errors == 0 && n.is_none_or(|n| n.max.errors == 0)),
            ),
        ),
        (NA.into(), ("0", Some(e.max.errors == 0))),
    );
    let others = |l: &LoadResult| l.usage.pct(l.usage.others_cpu_s);
    let noise = |l: &ProxyRuns| format!("{:.0} / {:.0}", others(&l.fixed), others(&l.max));
    push(
        "noise: other CPU use on the machine, fixed / max rate (% of one CPU)".into(),
        ng(&|n| noise(n)),
        noise(w),
        noise(e),
        (
            format!("{:.0}", others(&r.l4)),
            format!("{:.0}", others(&r.l4_floor)),
        ),
        none(),
        none(),
    );
    let mesh = |l: &ProxyRuns| {
        format!(
            "{:.1} / {:.1}",
            l.fixed.mesh_us_per_req(),
            l.max.mesh_us_per_req()
        )
    };
    push(
        "node proxies' CPU per request, fixed / max rate (µs, both together)".into(),
        NA.into(),
        mesh(w),
        mesh(e),
        (
            f(r.l4.mesh_us_per_req(), 1),
            f(r.l4_floor.mesh_us_per_req(), 1),
        ),
        none(),
        none(),
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
                    "envoy_waypoint": r.envoy,
                    "mesh_l4_no_waypoint": r.l4,
                    "mesh_l4_via_proxy_cpu": r.floor,
                    "waypoint_vs_nginx": r.compare,
                    "target": r.target,
                    "pass": r.pass,
                    "waypoint_vs_envoy": r.vs_envoy,
                    "target_vs_envoy": r.envoy_target,
                    "pass_vs_envoy": r.envoy_pass,
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

/// The summary table: the targets only, every protocol; those against
/// the Envoy waypoint, then those against nginx.
fn summary(rows: &[Row]) -> String {
    let mut s = String::from(
        "| protocol | target | Envoy waypoint | nginx | waypoint | waypoint vs Envoy / nginx | pass? |\n|---|---|---:|---:|---:|---:|:---:|\n",
    );
    for r in rows
        .iter()
        .filter(|r| r.envoy_pass.is_some() && r.envoy_target != "0")
    {
        s += &format!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} |\n",
            r.proto.label(),
            r.metric,
            r.envoy_target,
            r.envoy,
            r.nginx,
            r.waypoint,
            r.vs_envoy,
            pass_cell(r.envoy_pass)
        );
    }
    for r in rows.iter().filter(|r| r.pass.is_some() && r.target != "0") {
        s += &format!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} |\n",
            r.proto.label(),
            r.metric,
            r.target,
            r.envoy,
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
    let verdicts = || rows.iter().flat_map(|r| [r.pass, r.envoy_pass]);
    let failed = verdicts().filter(|p| *p == Some(false)).count();
    let passed = verdicts().filter(|p| *p == Some(true)).count();
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
            "\n## {}\n\n| metric | nginx | waypoint | Envoy waypoint | mesh L4, no waypoint | mesh L4 via CPU 1 (floor) | waypoint vs nginx | target | pass? | waypoint vs Envoy | target | pass? |\n|---|---:|---:|---:|---:|---:|---:|---|:---:|---:|---|:---:|\n",
            proto.label()
        );
        for r in mine {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                r.metric,
                r.nginx,
                r.waypoint,
                r.envoy,
                r.l4,
                r.floor,
                r.compare,
                r.target,
                pass_cell(r.pass),
                r.vs_envoy,
                r.envoy_target,
                pass_cell(r.envoy_pass)
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
