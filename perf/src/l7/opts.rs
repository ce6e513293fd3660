//! `trellis-l7-bench`'s options.

use std::path::PathBuf;
use std::time::Duration;

use super::client::Proto;
use super::load::{MaxConfig, RateConfig};
use anyhow::{bail, Context, Result};

/// Which load a profile is taken under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProfiledLoad {
    /// The closed-loop maximum rate.
    Max,
    /// The open-loop fixed rate of the measured runs.
    Fixed,
}

impl ProfiledLoad {
    pub(super) fn label(self) -> &'static str {
        match self {
            ProfiledLoad::Max => "at max rate",
            ProfiledLoad::Fixed => "at the fixed rate",
        }
    }

    pub(super) fn key(self) -> &'static str {
        match self {
            ProfiledLoad::Max => "max",
            ProfiledLoad::Fixed => "fixed",
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Opts {
    pub(super) quick: bool,
    pub(super) out: PathBuf,
    pub(super) profile: bool,
    /// Keep the perf.data files here (default: a temp dir, removed).
    pub(super) profile_dir: Option<PathBuf>,
    pub(super) protocols: Vec<Proto>,
    /// Runs of every measurement, pooled.
    pub(super) repeat: usize,
    pub(super) rate: RateConfig,
    pub(super) max: MaxConfig,
    pub(super) profile_secs: f64,
}

pub(super) fn usage() -> &'static str {
    "usage: trellis-l7-bench [--quick] [--out DIR] [--protocols LIST] [--repeat N] [--profile | --no-profile]\n\
     \n  --quick         short runs, once each, no profile (about 40 s instead of about 6 minutes)\
     \n  --out DIR       where l7-latest.{json,md} (l7-quick.{json,md} with --quick) go; default perf/results\
     \n  --protocols L   comma-separated subset of http1,http2,grpc (default: all)\
     \n  --repeat N      run every measurement N times and pool them (default 2; 1 with --quick)\
     \n  --profile       after the measured runs, perf record the waypoint (and nginx) under max load (default for full runs)\
     \n  --no-profile    skip that\
     \n  --profile-dir D keep the perf.data files in D (default: removed after summarising)\n"
}

pub(super) fn parse_args() -> Result<Opts> {
    let mut quick = false;
    let mut out = PathBuf::from("perf/results");
    let mut profile = None;
    let mut profile_dir = None;
    let mut protocols = Proto::ALL.to_vec();
    let mut repeat = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--out" => {
                out = args
                    .next()
                    .map(PathBuf::from)
                    .with_context(|| format!("--out needs a value\n{}", usage()))?
            }
            "--protocols" => {
                let list = args
                    .next()
                    .with_context(|| format!("--protocols needs a value\n{}", usage()))?;
                protocols = list
                    .split(',')
                    .map(|k| {
                        Proto::ALL
                            .into_iter()
                            .find(|p| p.key() == k.trim())
                            .with_context(|| format!("unknown protocol {k:?}\n{}", usage()))
                    })
                    .collect::<Result<_>>()?;
            }
            "--repeat" => {
                repeat = Some(
                    args.next()
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|n| (1..=10).contains(n))
                        .with_context(|| {
                            format!("--repeat needs a number from 1 to 10\n{}", usage())
                        })?,
                )
            }
            "--profile" => profile = Some(true),
            "--profile-dir" => {
                profile_dir = Some(
                    args.next()
                        .map(PathBuf::from)
                        .with_context(|| format!("--profile-dir needs a value\n{}", usage()))?,
                );
                profile = Some(true);
            }
            "--no-profile" => profile = Some(false),
            "-h" | "--help" => {
                print!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let secs = |full: f64, q: f64| Duration::from_secs_f64(if quick { q } else { full });
    Ok(Opts {
        quick,
        out,
        profile: profile.unwrap_or(!quick),
        profile_dir,
        protocols,
        repeat: repeat.unwrap_or(if quick { 1 } else { 2 }),
        rate: RateConfig {
            rate: 2_000.0,
            duration: secs(10.0, 2.0),
            conns: 8,
            warmup: 20,
            timeout: Duration::from_secs(2),
        },
        max: MaxConfig {
            concurrency: 32,
            conns: 4,
            warmup: secs(1.0, 0.5),
            duration: secs(5.0, 2.0),
            timeout: Duration::from_secs(2),
            max_requests: 5_000_000,
        },
        profile_secs: 4.0,
    })
}
