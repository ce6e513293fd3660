//! trellis-plots: the charts of the results in perf/results, as SVG and PNG
//! (issue 15): memory against pods per node, memory against mesh size,
//! latency and mesh CPU per request against call-chain depth.
//!
//! ```text
//! cargo run --release -p trellis-perf --bin trellis-plots -- [--results DIR] [--out DIR]
//! ```
//!
//! Reads `latest.json` (or `sidecars-quick.json`), `mesh-size.json` and
//! `chain-latest.json` (or `chain-quick.json`) from the results folder; writes `<chart>.svg` and `<chart>.png` into the out
//! folder (default: the results folder's `plots/`). A chart whose results
//! are missing is left out with a note; no chart at all is an error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use trellis_perf::plots::{self, Chart, PlotError};
use trellis_perf::run;

fn usage() -> &'static str {
    "usage: trellis-plots [--results DIR] [--out DIR]\n\
     \n  --results DIR   where the benches wrote their JSON; default perf/results\
     \n  --out DIR       where the charts go; default <results>/plots\n"
}

/// The first of `names` in `dir` that exists.
fn first_of(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Each chart: its file stem, and how to build it from the results (None:
/// its results are not there).
fn charts(results: &Path) -> Vec<(&'static str, Result<Option<Chart>, PlotError>)> {
    // The first result that has the pods-per-node memory (a run with
    // --no-sidecars has none).
    let pods = ["latest.json", "sidecars-quick.json"]
        .iter()
        .map(|n| results.join(n))
        .filter(|p| p.is_file())
        .map(|p| plots::read_json(&p).map(|doc| (doc, p)))
        .find(|r| {
            r.as_ref()
                .map_or(true, |(doc, _)| doc.get("pods_memory").is_some())
        });
    let pods = match pods {
        Some(Ok((doc, p))) => {
            plots::rows(&doc, "pods_memory", &p).map(|r| Some(plots::memory_vs_pods(r)))
        }
        Some(Err(e)) => Err(e),
        None => Ok(None),
    };
    let size = match first_of(results, &["mesh-size.json"]) {
        Some(p) => plots::read_json(&p)
            .and_then(|doc| plots::rows(&doc, "mesh_size", &p).map(plots::memory_vs_mesh_size))
            .map(Some),
        None => Ok(None),
    };
    let chain = first_of(results, &["chain-latest.json", "chain-quick.json"]).map(|p| {
        plots::read_json(&p).and_then(|doc| {
            let cells = plots::rows(&doc["chain"], "cells", &p)?;
            Ok((plots::latency_vs_depth(cells), plots::cpu_vs_depth(cells)))
        })
    });
    let (latency, cpu) = match chain {
        Some(Ok((l, c))) => (Ok(Some(l)), Ok(Some(c))),
        Some(Err(e)) => {
            let again = PlotError::Input {
                path: "the chain results".into(),
                detail: e.to_string(),
            };
            (Err(e), Err(again))
        }
        None => (Ok(None), Ok(None)),
    };
    vec![
        ("memory-vs-pods", pods),
        ("memory-vs-mesh-size", size),
        ("latency-vs-chain-depth", latency),
        ("cpu-vs-chain-depth", cpu),
    ]
}

fn main() -> Result<()> {
    let mut results = PathBuf::from("perf/results");
    let mut out = None;
    let mut args = run::Args::new(usage());
    while let Some(a) = args.next_flag() {
        let mut val = |name: &str| args.path(name);
        match a.as_str() {
            "--results" => results = val("--results")?,
            "--out" => out = Some(val("--out")?),
            "-h" | "--help" => {
                print!("{}", usage());
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    let out = out.unwrap_or_else(|| results.join("plots"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let mut drawn = 0;
    for (stem, chart) in charts(&results) {
        match chart? {
            Some(c) => {
                let [svg, png] = plots::render(&c, &out, stem)?;
                println!("{} and {}", svg.display(), png.display());
                drawn += 1;
            }
            None => eprintln!(
                "note: no results for {stem} in {}; left out",
                results.display()
            ),
        }
    }
    if drawn == 0 {
        bail!("no results to plot in {}", results.display());
    }
    Ok(())
}
