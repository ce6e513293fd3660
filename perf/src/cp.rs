//! The control plane at scale (`trellis-cp-bench`): the controller reading
//! a generated cluster (module [`gen`]) through its ObjectStore, translating
//! and serving it over delta xDS on loopback TLS, and a second process
//! running the node proxies' real xDS clients (trellis_core's source) as
//! subscribers, one per node.
//!
//! Two processes so that the controller's CPU and RSS are its own: the
//! parent is the controller, the child (`trellis-cp-bench clients …`) holds
//! the subscribers and reports over stdout, one JSON object per line.

pub mod gen;
pub mod program;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use mimalloc::MiMalloc;
use serde_json::{json, Value};
use trellis_api::xds::{ip_alias, ADDRESS_TYPE, AUTHORIZATION_TYPE};
use trellis_core::source::{self, OnDemand, SourceSpec, XdsSpec};
use trellis_core::state::StateStore;

use gen::Scale;

/// Counts live heap bytes, so a subscriber's state can be weighed in a
/// process that holds other things too. Install with `#[global_allocator]`.
///
/// It forwards to the allocator of the binary each process stands for:
/// mimalloc in the controller (as `trellis-controller` runs), the system
/// allocator in the clients process (as `trellis-node-proxy` runs), which
/// the parent marks with [`CLIENTS_ENV`].
pub struct CountingAlloc;

/// Set in the clients process's environment.
pub const CLIENTS_ENV: &str = "TRELLIS_CP_BENCH_CLIENTS";
const CLIENTS_ENV_C: &std::ffi::CStr = c"TRELLIS_CP_BENCH_CLIENTS";

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// 0: not decided yet; 1: system; 2: mimalloc. Decided at the first
/// allocation, which the runtime makes on the main thread before any other
/// thread exists, and never changed: every block is freed by the allocator
/// that made it.
static BACKEND: AtomicU8 = AtomicU8::new(0);

fn system_backend() -> bool {
    match BACKEND.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            // SAFETY: getenv reads the environment without allocating; no
            // other thread can be changing it this early.
            let clients = !unsafe { libc::getenv(CLIENTS_ENV_C.as_ptr()) }.is_null();
            BACKEND.store(if clients { 1 } else { 2 }, Ordering::Relaxed);
            clients
        }
    }
}

// SAFETY: forwards to one allocator for the life of the process, unchanged;
// only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc's contract.
        unsafe {
            if system_backend() {
                System.alloc(l)
            } else {
                MiMalloc.alloc(l)
            }
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above; `p` came from the same backend.
        unsafe {
            if system_backend() {
                System.dealloc(p, l)
            } else {
                MiMalloc.dealloc(p, l)
            }
        }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe {
            if system_backend() {
                System.realloc(p, l, new)
            } else {
                MiMalloc.realloc(p, l, new)
            }
        }
    }
}

/// Live heap bytes (meaningful only with [`CountingAlloc`] installed).
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

pub const SERVER_NAME: &str = "istiod.istio-system.svc";
/// The token of the "full view" subscriber (a waypoint gets everything).
pub const FULL_TOKEN: &str = "full-view";

pub fn node_token(n: usize) -> String {
    format!("tok-{}", gen::node_name(n))
}

/// The bootstrap token file: one node-proxy token per node, one waypoint.
pub fn tokens_yaml(nodes: usize) -> String {
    let mut s = String::from("tokens:\n");
    for n in 0..nodes {
        s += &format!(
            "- token: {}\n  nodeProxy: {{ node: {} }}\n",
            node_token(n),
            gen::node_name(n)
        );
    }
    s += &format!(
        "- token: {FULL_TOKEN}\n  waypoint: {{ spiffeId: \"spiffe://cluster.local/ns/ns-0/sa/waypoint\" }}\n"
    );
    s
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What the child needs to reach the controller.
#[derive(Clone, Debug)]
pub struct ClientArgs {
    pub addr: String,
    pub root: PathBuf,
    pub scale: Scale,
    /// Distinct service VIPs the on-demand subscriber looks up.
    pub lookups: usize,
}

fn spec(args: &ClientArgs, root_pem: &str, token: &str, node: &str) -> SourceSpec {
    SourceSpec::Xds(XdsSpec {
        address: args.addr.clone(),
        server_name: SERVER_NAME.into(),
        root_pem: root_pem.into(),
        token: token.into(),
        node_id: format!("trellis~{node}"),
        types: vec![ADDRESS_TYPE, AUTHORIZATION_TYPE],
        socket_mark: None,
    })
}

struct Sub {
    store: Arc<StateStore>,
    task: tokio::task::JoinHandle<()>,
    on_demand: OnDemand,
}

fn subscribe(spec: &SourceSpec) -> Result<Sub> {
    let store = Arc::new(source::initial_store(spec)?);
    let on_demand = OnDemand::default();
    let task = source::spawn(spec, store.clone(), None, Some(on_demand.clone()));
    Ok(Sub {
        store,
        task,
        on_demand,
    })
}

async fn until_synced(stores: &[Arc<StateStore>], limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    for s in stores {
        while !s.is_synced() {
            if Instant::now() > deadline {
                bail!("subscribers not synced within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// This process's CPU seconds so far (0 if /proc cannot be read).
fn own_cpu() -> f64 {
    crate::harness::proc_stats::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The child: weighs one on-demand subscriber and one full-view one, then
/// runs a subscriber per node and reports, per change the parent announces
/// on stdin (`change <k>`), when the last of them has it.
pub async fn clients_main(args: ClientArgs) -> Result<()> {
    let root_pem = std::fs::read_to_string(&args.root).context("reading the root pem")?;
    let limit = Duration::from_secs(300);

    // One node proxy, on demand: its node's pods, the policies, then
    // `lookups` services by VIP (each brings its endpoints).
    let base = live_bytes();
    let one = subscribe(&spec(&args, &root_pem, &node_token(0), "node-0"))?;
    until_synced(std::slice::from_ref(&one.store), limit).await?;
    let synced_bytes = live_bytes() - base;
    let workloads_synced = one.store.load().config().workloads.len();
    let step = (args.scale.services / args.lookups.max(1)).max(1);
    let mut found = 0;
    for i in 0..args.lookups.min(args.scale.services) {
        let vip = gen::service_vip(i * step);
        one.on_demand.fetch(ip_alias("", vip)).await;
        if one.store.load().service_by_vip(vip).is_some() {
            found += 1;
        }
    }
    let lookup_bytes = live_bytes() - base;
    let workloads_after = one.store.load().config().workloads.len();
    one.task.abort();
    drop(one);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The full view, as a proxy without on-demand would hold it.
    let base = live_bytes();
    let started = Instant::now();
    let full = subscribe(&spec(&args, &root_pem, FULL_TOKEN, "full"))?;
    until_synced(std::slice::from_ref(&full.store), limit).await?;
    let full_secs = started.elapsed().as_secs_f64();
    let full_bytes = live_bytes() - base;
    let full_workloads = full.store.load().config().workloads.len();
    full.task.abort();
    drop(full);
    tokio::time::sleep(Duration::from_millis(200)).await;
    emit(json!({
        "phase": "state",
        "on_demand_synced_bytes": synced_bytes,
        "on_demand_synced_workloads": workloads_synced,
        "on_demand_after_lookups_bytes": lookup_bytes,
        "on_demand_after_lookups_workloads": workloads_after,
        "lookups": args.lookups, "lookups_found": found,
        "full_bytes": full_bytes, "full_workloads": full_workloads, "full_sync_secs": full_secs,
    }));

    // One subscriber per node.
    let started = Instant::now();
    let mut subs = Vec::with_capacity(args.scale.nodes);
    for n in 0..args.scale.nodes {
        let node = gen::node_name(n);
        subs.push(subscribe(&spec(&args, &root_pem, &node_token(n), &node))?);
    }
    let stores: Vec<Arc<StateStore>> = subs.iter().map(|s| s.store.clone()).collect();
    until_synced(&stores, limit).await?;
    emit(json!({
        "phase": "synced",
        "subscribers": stores.len(),
        "secs": started.elapsed().as_secs_f64(),
        "live_bytes": live_bytes(),
    }));

    // Commands from the parent, one per line; a thread, as stdin blocks.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let Some(k) = line.strip_prefix("change ") else {
            break;
        };
        let name = format!("change-{k}");
        let have = Arc::new(AtomicUsize::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<u64>();
        let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
        for s in &stores {
            let (s, name, have, done_tx) = (s.clone(), name.clone(), have.clone(), done_tx.clone());
            let total = stores.len();
            let mut versions = s.subscribe();
            tokio::spawn(async move {
                loop {
                    if s.load().config().policies.iter().any(|p| p.name == name) {
                        break;
                    }
                    if versions.changed().await.is_err() {
                        return;
                    }
                }
                if have.fetch_add(1, Ordering::AcqRel) + 1 == total {
                    let at = unix_us();
                    if let Some(tx) = done_tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        let _ = tx.send(at);
                    }
                }
            });
        }
        let cpu0 = own_cpu();
        emit(json!({"phase": "ready", "change": k}));
        let done = tokio::time::timeout(limit, done_rx)
            .await
            .context("change did not reach every subscriber")?
            .context("waiters gone")?;
        // The subscribers' own work (decode, apply, ack) shares the two
        // cores with the controller: it is the push's floor.
        let cpu = own_cpu() - cpu0;
        emit(json!({"phase": "changed", "change": k, "done_unix_us": done, "cpu_s": cpu}));
    }
    for s in subs {
        s.task.abort();
    }
    Ok(())
}
