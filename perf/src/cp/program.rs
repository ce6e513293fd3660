//! `trellis-cp-bench` put together; see perf/README.md for what it measures.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cp::gen::{self, Scale};
use crate::cp::{self, ClientArgs};
use crate::harness::proc_stats;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use trellis_controller::auth::TokenFile;
use trellis_controller::ca;
use trellis_controller::objects::{ObjectStore, ScanResult, TranslateOptions};
use trellis_controller::run::{Metrics, Outcome, Publisher};
use trellis_controller::xds::XdsService;

/// Changes timed after the full sync; the report gives each and the worst.
const CHANGES: usize = 5;

/// VIPs the on-demand subscriber looks up.
const LOOKUPS: usize = 100;

mod targets {
    pub const NODE_CONFIG_MB: f64 = 20.0;
    pub const CHANGE_TO_ALL_S: f64 = 1.0;
    pub const CONTROLLER_RSS_GB: f64 = 2.0;
}

/// Runs `trellis-cp-bench` with this process's arguments.
pub fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("clients") {
        return clients(&args[1..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("perf/results"));
    let scale = if quick { Scale::QUICK } else { Scale::FULL };
    scale.check().map_err(anyhow::Error::msg)?;
    crate::harness::sys::raise_nofile().context("raising the open-file limit")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(controller(scale, quick, &out))
}

fn clients(args: &[String]) -> Result<()> {
    let get = |k: &str| -> Result<String> {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .with_context(|| format!("clients: missing {k}"))
    };
    let num = |k: &str| -> Result<usize> { Ok(get(k)?.parse()?) };
    let a = ClientArgs {
        addr: get("--addr")?,
        root: get("--root")?.into(),
        scale: Scale {
            pods: num("--pods")?,
            services: num("--services")?,
            nodes: num("--nodes")?,
            namespaces: num("--namespaces")?,
        },
        lookups: num("--lookups")?,
    };
    crate::harness::sys::raise_nofile().context("raising the open-file limit")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(cp::clients_main(a))
}

fn self_pid() -> u32 {
    std::process::id()
}

fn rss_mib() -> f64 {
    proc_stats::rss_kib(self_pid()).unwrap_or(0) as f64 / 1024.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn cpu_s() -> f64 {
    proc_stats::cpu_seconds(self_pid()).unwrap_or(0.0)
}

/// Runs the controller's own publisher on the store: translate, diff
/// against the last published config, encode what differs, patch the
/// snapshot and publish it. Returns the split of its time (translate,
/// encode, snapshot).
fn publish(store: &ObjectStore, publisher: &mut Publisher, metrics: &Metrics) -> Result<[f64; 3]> {
    let scan = ScanResult {
        changed: true,
        errors: Vec::new(),
    };
    let outcome = publisher.update(store, scan);
    let errors = metrics.read().translation_errors;
    if errors > 0 {
        bail!("{errors} translation errors");
    }
    if !matches!(outcome, Outcome::Published(_)) {
        bail!("the change was not published: {outcome:?}");
    }
    let t = publisher.timings();
    Ok([
        t.translate.as_secs_f64(),
        t.encode.as_secs_f64(),
        t.snapshot.as_secs_f64(),
    ])
}

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ChildProc {
    /// The next JSON line, read on a blocking thread so the controller's
    /// runtime keeps serving meanwhile.
    async fn next(&mut self, phase: &str) -> Result<Value> {
        let lines = &mut self.lines;
        let line = tokio::task::block_in_place(|| lines.next())
            .with_context(|| format!("clients exited before {phase}"))??;
        let v: Value =
            serde_json::from_str(&line).with_context(|| format!("clients said {line:?}"))?;
        if v["phase"] != phase {
            bail!("expected {phase} from the clients, got {v}");
        }
        Ok(v)
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn controller(scale: Scale, quick: bool, out: &Path) -> Result<()> {
    println!("== control plane at scale: {scale:?}");
    let manifests = gen::manifests(&scale);
    let opts = TranslateOptions::default();
    let rss_before = rss_mib();

    // Full sync: parse, store, translate, encode, snapshot.
    let cpu0 = cpu_s();
    let t0 = Instant::now();
    let mut store = ObjectStore::new();
    for (source, text) in &manifests {
        let errors = store.load_text(source, text, false);
        if !errors.is_empty() {
            bail!(
                "generated manifests rejected: {:?}",
                &errors[..errors.len().min(3)]
            );
        }
    }
    drop(manifests);
    let parsed = t0.elapsed();
    let metrics = Arc::new(Metrics::default());
    let mut publisher = Publisher::new(opts, metrics.clone());
    publish(&store, &mut publisher, &metrics)?;
    let full_sync = t0.elapsed();
    let full_sync_cpu = cpu_s() - cpu0;
    let rss_synced = rss_mib();
    println!(
        "full sync: {:.2} s ({:.2} s parsing), {:.2} s cpu, rss {:.0} MiB",
        full_sync.as_secs_f64(),
        parsed.as_secs_f64(),
        full_sync_cpu,
        rss_synced
    );

    // Serve it.
    let dir = tempfile::tempdir()?;
    let ca = ca::init(dir.path(), "cluster.local", false)?;
    let root = dir.path().join("root.pem");
    std::fs::write(&root, ca.roots_pem())?;
    let tls = ca.serving_config(&[cp::SERVER_NAME.to_owned()])?;
    let auth = Arc::new(TokenFile::parse(
        &cp::tokens_yaml(scale.nodes),
        Path::new("tokens.yaml"),
    )?);
    let rx = publisher.snapshots();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router =
        tonic::transport::Server::builder().add_service(XdsService::new(auth, rx).into_server());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(trellis_controller::serve::serve(
        listener,
        tls,
        router,
        async move {
            let _ = stopped.await;
        },
    ));

    let mut child = Command::new(std::env::current_exe()?)
        .args(["clients", "--addr", &addr.to_string(), "--root"])
        .arg(&root)
        .args([
            "--pods",
            &scale.pods.to_string(),
            "--services",
            &scale.services.to_string(),
            "--nodes",
            &scale.nodes.to_string(),
            "--namespaces",
            &scale.namespaces.to_string(),
            "--lookups",
            &LOOKUPS.to_string(),
        ])
        .env(cp::CLIENTS_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the clients process")?;
    let stdin = child.stdin.take().context("clients stdin")?;
    let stdout = child.stdout.take().context("clients stdout")?;
    let mut clients = ChildProc {
        child,
        stdin,
        lines: BufReader::new(stdout).lines(),
    };
    let state = clients.next("state").await?;
    println!("node state: {state}");
    let cpu_subs = cpu_s();
    let synced = clients.next("synced").await?;
    let subs_cpu = cpu_s() - cpu_subs;
    println!("subscribers: {synced}");
    let rss_serving = rss_mib();

    // Changes, one at a time.
    let mut latencies = Vec::new();
    let mut cpus = Vec::new();
    let mut splits: Vec<[f64; 4]> = Vec::new();
    let mut sub_cpus = Vec::new();
    for k in 0..CHANGES {
        writeln!(clients.stdin, "change {k}")?;
        clients.stdin.flush()?;
        clients.next("ready").await?;
        let cpu0 = cpu_s();
        let start = cp::unix_us();
        let (source, text) = gen::change(k);
        let errors = store.load_text(&source, &text, false);
        if !errors.is_empty() {
            bail!("change rejected: {errors:?}");
        }
        let split = publish(&store, &mut publisher, &metrics)?;
        let published = cp::unix_us();
        let done = clients.next("changed").await?;
        let end = done["done_unix_us"].as_u64().context("done time")?;
        sub_cpus.push(done["cpu_s"].as_f64().unwrap_or(0.0));
        // Let the last acks land before reading the CPU.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let secs = end.saturating_sub(start) as f64 / 1e6;
        let cpu = cpu_s() - cpu0;
        let push = end.saturating_sub(published) as f64 / 1e6;
        println!("change {k}: all {} subscribers in {secs:.3} s (translate {:.3}, encode {:.3}, snapshot {:.3}, push to all {push:.3}); controller cpu {cpu:.3} s", scale.nodes, split[0], split[1], split[2]);
        latencies.push(secs);
        cpus.push(cpu);
        splits.push([split[0], split[1], split[2], push]);
    }
    let _ = stop.send(());
    let peak = peak_rss_mib();
    drop(clients);

    report(
        scale,
        quick,
        out,
        &Measured {
            rss_before,
            full_sync,
            full_sync_cpu,
            rss_synced,
            rss_serving,
            peak,
            state,
            synced,
            subs_cpu,
            latencies,
            cpus,
            splits,
            sub_cpus,
        },
    )
}

/// What one scale measured, for its report.
struct Measured {
    rss_before: f64,
    full_sync: Duration,
    full_sync_cpu: f64,
    rss_synced: f64,
    rss_serving: f64,
    peak: f64,
    /// The subscribers' node state (config sizes, on demand and full).
    state: Value,
    /// The subscribers' sync figures.
    synced: Value,
    subs_cpu: f64,
    /// Per change: time to all subscribers, controller CPU, its split
    /// (translate, encode, snapshot, push) and the subscribers' CPU.
    latencies: Vec<f64>,
    cpus: Vec<f64>,
    splits: Vec<[f64; 4]>,
    sub_cpus: Vec<f64>,
}

/// The scale's table against the targets, as Markdown and JSON in `out`.
fn report(scale: Scale, quick: bool, out: &Path, m: &Measured) -> Result<()> {
    // The figures by value, the collections by reference.
    let &Measured {
        rss_before,
        full_sync,
        full_sync_cpu,
        rss_synced,
        rss_serving,
        peak,
        ref state,
        ref synced,
        subs_cpu,
        ref latencies,
        ref cpus,
        ref splits,
        ref sub_cpus,
    } = m;
    let max = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let median = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        s[s.len() / 2]
    };
    let mb = |b: &Value| b.as_f64().unwrap_or(0.0) / 1e6;
    let on_demand_mb = mb(&state["on_demand_after_lookups_bytes"]);
    let rows = vec![
        row(
            "controller full sync (parse + translate + encode + snapshot)",
            format!(
                "{:.2} s ({:.2} s cpu)",
                full_sync.as_secs_f64(),
                full_sync_cpu
            ),
            "—".into(),
            None,
        ),
        row(
            "controller RSS after full sync",
            format!("{rss_synced:.0} MiB (was {rss_before:.0})"),
            format!("≤ {} GB", targets::CONTROLLER_RSS_GB),
            Some(rss_synced / 1024.0 <= targets::CONTROLLER_RSS_GB),
        ),
        row(
            "controller RSS serving all subscribers (peak)",
            format!("{rss_serving:.0} MiB ({peak:.0} MiB peak)"),
            format!("≤ {} GB", targets::CONTROLLER_RSS_GB),
            Some(peak / 1024.0 <= targets::CONTROLLER_RSS_GB),
        ),
        row(
            &format!("{} subscribers connected and synced", scale.nodes),
            format!(
                "{:.2} s; controller cpu {subs_cpu:.2} s",
                synced["secs"].as_f64().unwrap_or(0.0)
            ),
            "—".into(),
            None,
        ),
        row(
            "node proxy config, on demand: synced",
            format!(
                "{:.2} MB, {} workloads",
                mb(&state["on_demand_synced_bytes"]),
                state["on_demand_synced_workloads"]
            ),
            "—".into(),
            None,
        ),
        row(
            &format!("node proxy config, on demand: + {LOOKUPS} service lookups"),
            format!(
                "{on_demand_mb:.2} MB, {} workloads ({} of {} found)",
                state["on_demand_after_lookups_workloads"], state["lookups_found"], LOOKUPS
            ),
            format!("≤ {} MB", targets::NODE_CONFIG_MB),
            Some(on_demand_mb <= targets::NODE_CONFIG_MB),
        ),
        row(
            "node proxy config, full view (for comparison)",
            format!(
                "{:.1} MB, {} workloads, synced in {:.2} s",
                mb(&state["full_bytes"]),
                state["full_workloads"],
                state["full_sync_secs"].as_f64().unwrap_or(0.0)
            ),
            "—".into(),
            None,
        ),
        row(
            &format!("one change to all {} subscribers", scale.nodes),
            format!(
                "median {:.3} s, max {:.3} s ({CHANGES} changes)",
                median(latencies),
                max(latencies)
            ),
            format!("≤ {} s", targets::CHANGE_TO_ALL_S),
            Some(max(latencies) <= targets::CHANGE_TO_ALL_S),
        ),
        row(
            "controller CPU per change (translate + encode + snapshot + push)",
            format!("median {:.3} s, max {:.3} s", median(cpus), max(cpus)),
            "—".into(),
            None,
        ),
        row(
            &format!(
                "subscribers' CPU per change (decode + apply + ack, all {})",
                scale.nodes
            ),
            format!(
                "median {:.3} s, max {:.3} s (the push takes at least half of this on 2 cores)",
                median(sub_cpus),
                max(sub_cpus)
            ),
            "—".into(),
            None,
        ),
        row(
            "a change's time, split (median)",
            format!(
                "translate {:.3} s, encode {:.3} s, snapshot build {:.3} s, push to all {:.3} s",
                median(&splits.iter().map(|s| s[0]).collect::<Vec<_>>()),
                median(&splits.iter().map(|s| s[1]).collect::<Vec<_>>()),
                median(&splits.iter().map(|s| s[2]).collect::<Vec<_>>()),
                median(&splits.iter().map(|s| s[3]).collect::<Vec<_>>()),
            ),
            "—".into(),
            None,
        ),
    ];
    let name = if quick { "cp-quick" } else { "cp-latest" };
    let notes = vec![
        format!("scale: {} pods, {} services, {} nodes, {} namespaces", scale.pods, scale.services, scale.nodes, scale.namespaces),
        crate::harness::run::machine_line(2),
        format!("git {}", crate::harness::run::git_rev()),
        "controller and subscribers in two processes on the same 2 cores; the change latency includes the subscribers' own decode and apply".into(),
        "node config bytes: live heap of the subscriber process (counting allocator) before and after, so they include its gRPC/TLS buffers".into(),
    ];
    let mut md = String::from("# Control plane at scale\n\n");
    for n in &notes {
        md += &format!("- {n}\n");
    }
    md += "\n| metric | measured | target | pass? |\n|---|---|---|:---:|\n";
    for r in &rows {
        let pass = match r["pass"].as_bool() {
            Some(true) => "PASS",
            Some(false) => "**FAIL**",
            None => "—",
        };
        md += &format!(
            "| {} | {} | {} | {} |\n",
            r["metric"].as_str().unwrap_or(""),
            r["measured"].as_str().unwrap_or(""),
            r["target"].as_str().unwrap_or(""),
            pass
        );
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join(format!("{name}.md")), &md)?;
    std::fs::write(
        out.join(format!("{name}.json")),
        serde_json::to_string_pretty(
            &json!({"notes": notes, "rows": rows, "state": state, "subscribers": synced, "change_latency_s": latencies, "change_cpu_s": cpus}),
        )?,
    )?;
    println!("\n{md}");
    Ok(())
}

fn row(metric: &str, measured: String, target: String, pass: Option<bool>) -> Value {
    json!({"metric": metric, "measured": measured, "target": target, "pass": pass})
}
