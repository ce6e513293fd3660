//! `trellis-bench`'s options: what runs, for how long, and where the results go.

use std::path::PathBuf;

use crate::chain::{self, columns::Column as ChainColumn};
use crate::harness::run;
use crate::sidecars::mesh_size;
use crate::ztunnel::config as zconfig;
use anyhow::{bail, Context, Result};

#[derive(Debug, Clone)]
pub(super) struct Opts {
    pub(super) quick: bool,
    pub(super) out: PathBuf,
    /// perf record the proxies during each Trellis phase into this dir.
    pub(super) profile: Option<PathBuf>,
    /// perf stat syscall counts of the proxies during each Trellis phase into this dir.
    pub(super) syscalls: Option<PathBuf>,
    pub(super) iperf_secs: u32,
    pub(super) pings: usize,
    pub(super) http_rate: f64,
    pub(super) http_secs: f64,
    pub(super) http_conns: usize,
    pub(super) conn_concurrency: usize,
    pub(super) conn_secs: f64,
    pub(super) extra_pods: usize,
    pub(super) idle_conns: usize,
    /// Leave out Envoy (its sidecar columns) and the memory figures; the
    /// Trellis columns need no Envoy, so they still run.
    pub(super) no_sidecars: bool,
    /// Idle pods per node for the memory comparison.
    pub(super) pods_per_node: Vec<usize>,
    /// Mesh sizes (services) for the memory against mesh size.
    pub(super) mesh_sizes: Vec<usize>,
    /// Run only this part.
    pub(super) only: Option<Only>,
    /// Leave the call chain out of the full run.
    pub(super) no_chain: bool,
    /// The call chain's depths, columns and load.
    pub(super) chain_depths: Vec<usize>,
    pub(super) chain_columns: Vec<ChainColumn>,
    pub(super) chain_rate: f64,
    pub(super) chain_secs: f64,
    pub(super) chain_conns: usize,
    /// Istio's ztunnel binary: its column, and issue 12's figures against it.
    pub(super) ztunnel: Option<PathBuf>,
    /// Rounds of `--only ztunnel`.
    pub(super) rounds: usize,
}

/// A part of the bench that runs alone (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Only {
    MeshSize,
    Chain,
    Handover,
    PodStart,
    Ztunnel,
}

impl Only {
    fn parse(s: &str) -> Result<Only> {
        match s {
            "mesh-size" => Ok(Only::MeshSize),
            "chain" => Ok(Only::Chain),
            "handover" => Ok(Only::Handover),
            "pod-start" => Ok(Only::PodStart),
            "ztunnel" => Ok(Only::Ztunnel),
            other => bail!(
                "--only {other:?}: the parts that run alone are: mesh-size, chain, handover, pod-start, ztunnel"
            ),
        }
    }
}

pub(super) fn usage() -> &'static str {
    "usage: trellis-bench [--quick] [--out DIR] [--profile DIR] [--syscalls DIR]\n\
     \n  --quick          short runs (about 20 s of load instead of about 50 s)\
     \n  --out DIR        where latest.{json,md} (quick.{json,md} with --quick) go; default perf/results\
     \n  --profile DIR    perf record both proxies in each Trellis phase (numbers are then perturbed)\
     \n  --syscalls DIR   perf stat syscall counts of each proxy in each Trellis phase\
     \n  --no-sidecars    leave out Envoy: its sidecar columns and the memory figures (pods per node, mesh size);\
     \n                   the Trellis columns (ambient + waypoint, sidecar-shaped) still run\
     \n  --pods LIST      idle pods per node for the memory comparison; default 1,10,50,100\
     \n  --services LIST  services in the memory against mesh size; default 100,1000,10000\
     \n  --only PART      run only PART: mesh-size (writes mesh-size.{json,md}); chain (chain-latest.{json,md};\
     \n                   chain-quick with --quick); handover: the node proxy taken over in turn on both\
     \n                   nodes under a new connection every 1 ms (handover.{json,md}); pod-start: from a\
     \n                   pod's start to its first meshed request, ambient against sidecars (pod-start.{json,md});\
     \n                   ztunnel: Trellis ambient against Istio's ztunnel (needs --ztunnel) in --rounds interleaved\
     \n                   rounds, each with direct first (vs-ztunnel.{json,md}; vs-ztunnel-quick with --quick)\
     \n  --rounds N       rounds of --only ztunnel; default 3, at most 20\
     \n  --no-chain       leave the call chain out of the full run\
     \n  --chain-depths L services per chain; default 1,3,5\
     \n  --chain-columns L the chain's columns; default direct,ambient,ambient-waypoint,envoy-l4,envoy-l7,trellis-sidecar\
     \n  --chain-rate R   requests per second into the chain's head; default 200\
     \n  --ztunnel PATH   add Istio's ztunnel (built outside this project; or $TRELLIS_ZTUNNEL) as a column\
     \n                   beside Trellis ambient, with issue 12's figures against it\n"
}

pub(super) fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut out = PathBuf::from("perf/results");
    let mut profile = None;
    let mut syscalls = None;
    let mut no_sidecars = false;
    let mut pods_per_node = vec![1, 10, 50, 100];
    let mut mesh_sizes = vec![100, 1_000, 10_000];
    let mut only = None;
    let mut no_chain = false;
    let mut chain_depths = vec![1, 3, 5];
    let mut chain_columns = ChainColumn::ALL.to_vec();
    // At 500 req/s the 5-deep chain of L7 Envoys needs more than CPU 1
    // (results/chain-quick.md): latency then measures a queue.
    let mut chain_rate = 200.0;
    let mut ztunnel = None;
    let mut rounds = 3;
    let mut args = run::Args::new(usage());
    while let Some(a) = args.next_flag() {
        let mut val = |name: &str| args.path(name);
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => out = val("--out")?,
            "--profile" => profile = Some(val("--profile")?),
            "--syscalls" => syscalls = Some(val("--syscalls")?),
            "--no-sidecars" => no_sidecars = true,
            "--pods" => {
                let list = val("--pods")?;
                pods_per_node = parse_pods(&list.to_string_lossy())?;
            }
            "--services" => {
                let list = val("--services")?;
                mesh_sizes = mesh_size::parse_sizes(&list.to_string_lossy())?;
            }
            "--only" => only = Some(Only::parse(&val("--only")?.to_string_lossy())?),
            "--no-chain" => no_chain = true,
            "--ztunnel" => ztunnel = Some(val("--ztunnel")?),
            "--rounds" => {
                let v = val("--rounds")?;
                rounds = v
                    .to_string_lossy()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=20).contains(n))
                    .with_context(|| format!("--rounds {v:?}: give a count, 1 to 20"))?;
            }
            "--chain-depths" => {
                chain_depths =
                    chain::bench::parse_depths(&val("--chain-depths")?.to_string_lossy())?
            }
            "--chain-columns" => {
                chain_columns =
                    chain::columns::parse_columns(&val("--chain-columns")?.to_string_lossy())?
            }
            "--chain-rate" => {
                let v = val("--chain-rate")?;
                chain_rate = v
                    .to_string_lossy()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (1.0..=20_000.0).contains(r))
                    .with_context(|| {
                        format!("--chain-rate {v:?}: give requests per second, 1 to 20000")
                    })?;
            }
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    // The flag, else the environment; no column when neither names one.
    let env = std::env::var_os(zconfig::ENV_VAR);
    let ztunnel = zconfig::choose_binary(
        ztunnel.is_some() || env.is_some(),
        ztunnel.as_deref(),
        env.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    Ok(Opts {
        quick,
        out,
        profile,
        syscalls,
        iperf_secs: if quick { 2 } else { 5 },
        pings: if quick { 2_000 } else { 20_000 },
        http_rate: 1_000.0,
        http_secs: if quick { 2.0 } else { 5.0 },
        http_conns: 16,
        conn_concurrency: 32,
        conn_secs: if quick { 2.0 } else { 5.0 },
        extra_pods: 20,
        idle_conns: 1_000,
        no_sidecars,
        pods_per_node,
        mesh_sizes,
        only,
        no_chain,
        chain_depths,
        chain_columns,
        chain_rate,
        chain_secs: if quick { 2.0 } else { 10.0 },
        // 40 ms between a connection's requests at 200 req/s: the next request's ACK does not hide a stall.
        chain_conns: 8,
        ztunnel,
        rounds,
    })
}

/// `1,10,50,100`: each 1..=250 (a node's subnet), order kept as given.
pub(super) fn parse_pods(list: &str) -> Result<Vec<usize>> {
    mesh_size::parse_counts("--pods", list, 250, "pods per node")
}
