//! The demo mesh: node proxies, the dev CA, small app servers and a waypoint.
//!
//! Without root it runs on loopback: proxies in dedicated mode on 127.0.1.1
//! (client), 127.0.2.1 (server) and one per waypoint endpoint on 127.0.2.x,
//! and an in-process waypoint on 127.0.3.1 in front of two services. With
//! `--netns` (root) it builds two nodes and two pods as network namespaces
//! and runs the L4 steps with the proxies in shared mode, capturing the pods'
//! traffic with nftables. With `--kube` (root, the kube binaries) it runs
//! the cluster in a box (`trellis_e2e::kube_cluster::scenario`).

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use trellis_e2e::demo;
use trellis_e2e::demo_waypoint::{L7, RATINGS_HOST, REVIEWS_HOST, WAYPOINT_PRINCIPAL};

/// Requests for the canary split and for the retry step.
const N: usize = 100;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let netns = args.iter().any(|a| a == "--netns");
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: trellis-demo [--netns | --kube]\n  --netns  run in network namespaces, shared mode (needs root)\n  --kube   the cluster in a box: deploy/daemonset on a real kube-apiserver, pods via the real CNI chain (needs root, $KUBE_APISERVER, $ETCD, kubectl, containernetworking-plugins)");
        return Ok(());
    }
    if let Some(bad) = args.iter().find(|a| *a != "--netns" && *a != "--kube") {
        bail!("unknown argument {bad:?}; try --help");
    }
    if args.iter().any(|a| a == "--kube") {
        return kube_demo();
    }
    if netns {
        if let Some(why) = trellis_e2e::root::netns_unavailable() {
            eprintln!(
                "trellis-demo --netns cannot run: {why}; without --netns the demo needs no root"
            );
            std::process::exit(2);
        }
    }
    // Show the proxies' access log lines (one per connection, with both
    // identities) and their warnings; the rest of their logs stay quiet.
    let custom_filter = std::env::var("TRELLIS_LOG").ok();
    let filter = custom_filter.as_deref().unwrap_or("warn,access=info");
    let log = trellis_core::logging::init(filter, trellis_core::logging::LogFormat::Text)
        .map_err(anyhow::Error::msg)?;
    let mesh = if netns {
        demo::Mesh::start_netns().context("starting the netns demo (needs root, ip and nft)")?
    } else {
        demo::Mesh::start_loopback().context("starting the loopback demo")?
    };
    println!("== Trellis demo mesh ({})", mesh.describe());
    for line in mesh.topology_lines() {
        println!("   {line}");
    }

    println!("\n== 1. client -> server:8080 (allowed: ALLOW policy matches principal sa/client, port 8080)");
    let reply = mesh.request(8080, "hello over hbone")?;
    println!("   server replied: {}", reply.trim());

    println!("\n== 2. client -> server:9090 (denied: no ALLOW rule for port 9090)");
    match mesh.request(9090, "should not arrive") {
        Ok(r) if !r.is_empty() => {
            bail!("port 9090 should have been denied but the server replied {r:?}")
        }
        Ok(_) => println!("   connection closed by the mesh without a reply: denied"),
        Err(e) => println!("   connection refused by the mesh: {e}"),
    }

    mesh.wait_for_closed_connections(2)?;
    match mesh.waypoint() {
        Some(l7) => waypoint_steps(l7)?,
        None => println!("\n(the waypoint steps run in loopback mode only)"),
    }
    println!("\n== identities on each hop (from the node proxies' metrics)");
    for line in mesh.hop_lines()? {
        println!("   {line}");
    }
    println!("\n== metrics counters");
    for line in mesh.counter_lines()? {
        println!("   {line}");
    }
    for line in mesh.controller_lines()? {
        println!("   {line}");
    }
    // Teardown drops the waypoint's pooled upstream tunnels abruptly, and the
    // endpoints' proxies log each as a failed connection: noise, not a step
    // of the demo. TRELLIS_LOG keeps every line.
    if custom_filter.is_none() {
        let _ = log.set("warn");
    }
    mesh.stop();
    println!("\n== done");
    Ok(())
}

fn waypoint_steps(l7: &L7) -> Result<()> {
    println!(
        "\n== 3. canary: HTTPRoute reviews sends 80% to reviews-v1, 20% to reviews-v2 ({N} x GET {REVIEWS_HOST}/)"
    );
    let counts = l7.canary(N)?;
    println!("   {}", tally(&counts));

    println!("\n== 4. L7 deny: AuthorizationPolicy reviews-deny-admin, DENY paths [/admin*]");
    for (path, r) in l7.deny()? {
        let by = r
            .server
            .unwrap_or_else(|| format!("the waypoint: {}", r.body.trim()));
        println!("   GET {path}: {} from {by}", r.status);
    }
    let mut sent = N + 2;

    println!("\n== 5. rate limit: rule reviews/limited, rateLimit {{requestsPerSecond: 2, burst: 2}} (5 x GET /limited at once)");
    let limited = l7.rate_limit(5)?;
    sent += limited.len();
    for (i, r) in limited.iter().enumerate() {
        match (&r.server, &r.retry_after) {
            (Some(s), _) => println!("   #{} {} from {s}", i + 1, r.status),
            (None, ra) => println!(
                "   #{} {} from the waypoint ({}), retry-after: {}",
                i + 1,
                r.status,
                r.body.trim(),
                ra.as_deref().unwrap_or("-")
            ),
        }
    }

    println!("\n== 6. retry: ratings has 2 endpoints, ratings-2 always answers 503; rule ratings/retry: retry {{attempts: 2, retryOn: [5xx]}} ({N} x GET {RATINGS_HOST}/)");
    let out = l7.retry(N)?;
    sent += N;
    let statuses: BTreeMap<String, usize> = out
        .statuses
        .iter()
        .map(|(s, n)| (s.to_string(), *n))
        .collect();
    println!("   client got: {}", tally(&statuses));
    for (name, hits, failing) in &out.hits {
        let what = if *failing {
            "503, each retried on the other endpoint"
        } else {
            "200"
        };
        println!("   {name} answered {hits} request(s) with {what}");
    }
    println!(
        "   waypoint trellis_waypoint_retries_total{{rule=\"demo/ratings/retry\"}} = {}",
        out.retries
    );
    ensure!(
        out.statuses.keys().all(|s| *s == 200),
        "the retries should have hidden every 503: {:?}",
        out.statuses
    );

    l7.wait_for_requests(sent as u64)?;
    println!("\n== 7. the waypoint's Istio L7 metrics: istio_requests_total (reporter=waypoint)");
    println!("   caller identity (from the client's HBONE tunnel) -> service (endpoint) code flags count");
    for line in l7.request_lines()? {
        println!("   {line}");
    }
    println!(
        "   towards the endpoints the waypoint presents its own identity, {WAYPOINT_PRINCIPAL}:"
    );
    println!("   see the endpoints' reporter=destination lines below");
    Ok(())
}

/// `a: 3, b: 5` from a count map.
fn tally(counts: &BTreeMap<String, usize>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--kube`: the cluster-in-a-box scenario (tests/tests/e2e_cluster.rs),
/// printing each step.
fn kube_demo() -> Result<()> {
    if let Some(why) = trellis_e2e::root::netns_unavailable() {
        eprintln!("trellis-demo --kube cannot run: {why}");
        std::process::exit(2);
    }
    if let Some(why) = trellis_e2e::kube::kube_unavailable() {
        eprintln!("trellis-demo --kube cannot run: {why}; run `eval \"$(bash tests/kube/install.sh)\"; export KUBE_APISERVER ETCD` first");
        std::process::exit(2);
    }
    println!("== Trellis cluster in a box: kube-apiserver + etcd, deploy/daemonset/base applied with kubectl, the controller, CNI agents and node proxies started from the applied manifests (the harness plays kubelet and container runtime)");
    let mut c = trellis_e2e::kube_cluster::KubeCluster::start()
        .context("starting the cluster in a box (build the binaries first: cargo build -p trellis-node-proxy -p trellis-controller -p trellis-cni, same profile)")?;
    for (name, n) in &c.nodes {
        println!(
            "   {name} ({}): trellis-cni-agent pid {}, trellis-node-proxy pid {}",
            n.ip,
            n.agent.pid(),
            n.proxy.pid()
        );
    }
    println!("   controller pid {}\n", c.controller.pid());
    let outcome = trellis_e2e::kube_cluster::scenario::run(&mut c, &mut |line| println!("{line}"));
    if let Err(e) = outcome {
        eprintln!("{}", c.logs());
        return Err(e);
    }
    println!("\n== done");
    Ok(())
}
