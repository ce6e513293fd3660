//! `trellis-plots` put together; see perf/README.md for what it measures.

use std::path::{Path, PathBuf};

use crate::harness::run;
use crate::plots::{self, Chart, PlotError};
use anyhow::{bail, Context, Result};

fn usage() -> &'static str {
    "usage: trellis-plots [--results DIR] [--out DIR]\n\
     \n  --results DIR   where the benches wrote their JSON; default perf/results\
     \n  --out DIR       where the charts go; default <results>/plots\n"
}

/// Every result file a chart's data may come from: the full and quick runs
/// of `trellis-bench` hold all three kinds, `--only mesh-size` and `--only
/// chain` one each.
const RESULT_FILES: [&str; 6] = [
    "latest.json",
    "quick.json",
    "sidecars-quick.json",
    "mesh-size.json",
    "chain-latest.json",
    "chain-quick.json",
];

/// A result document and where it came from.
struct Doc {
    path: PathBuf,
    /// When its run started.
    modified: std::time::SystemTime,
    value: serde_json::Value,
}

/// The result files in `dir`, read once. A file that cannot be read or
/// parsed is an error: a chart must not quietly fall back to older data.
fn read_docs(dir: &Path) -> Result<Vec<Doc>, PlotError> {
    let mut docs = Vec::new();
    for name in RESULT_FILES {
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let value = plots::read_json(&path)?;
        // A checkout gives every file the same age: the run's own start,
        // from its notes, orders the results; the file's age only if absent.
        let modified = run_started(&value)
            .or_else(|| meta.modified().ok())
            .unwrap_or(std::time::UNIX_EPOCH);
        docs.push(Doc {
            path,
            modified,
            value,
        });
    }
    Ok(docs)
}

/// When a run started, from the note every bench writes first
/// (`run: <mode>, <seconds> UTC epoch, git ...`).
fn run_started(doc: &serde_json::Value) -> Option<std::time::SystemTime> {
    doc["notes"].as_array()?.iter().find_map(|n| {
        let rest = n.as_str()?.strip_prefix("run: ")?;
        let secs = rest
            .split(", ")
            .find_map(|part| part.strip_suffix(" UTC epoch"))?;
        let secs: u64 = secs.parse().ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    })
}

/// The newest document whose array at `pointer` (a JSON pointer) is not
/// empty: the charts show the last run that measured each figure.
fn newest<'a>(docs: &'a [Doc], pointer: &str) -> Option<(&'a [serde_json::Value], &'a Path)> {
    docs.iter()
        .filter_map(|d| {
            let rows = d.value.pointer(pointer)?.as_array()?;
            (!rows.is_empty()).then_some((d, rows.as_slice()))
        })
        .max_by_key(|(d, _)| d.modified)
        .map(|(d, rows)| (rows, d.path.as_path()))
}

/// Each chart: its file stem, and how to build it from the results (None:
/// its results are not there), with the file it came from.
/// A chart's file stem, and the chart with the file its data came from.
type Planned = (&'static str, Option<(Chart, PathBuf)>);

fn charts(results: &Path) -> Result<Vec<Planned>, PlotError> {
    let docs = read_docs(results)?;
    let from = |pointer: &str, make: &dyn Fn(&[serde_json::Value]) -> Chart| {
        newest(&docs, pointer).map(|(rows, path)| (make(rows), path.to_path_buf()))
    };
    Ok(vec![
        (
            "memory-vs-pods",
            from("/pods_memory", &plots::memory_vs_pods),
        ),
        (
            "memory-vs-mesh-size",
            from("/mesh_size", &plots::memory_vs_mesh_size),
        ),
        (
            "latency-vs-chain-depth",
            from("/chain/cells", &plots::latency_vs_depth),
        ),
        (
            "cpu-vs-chain-depth",
            from("/chain/cells", &plots::cpu_vs_depth),
        ),
    ])
}

/// Runs `trellis-plots` with this process's arguments.
pub fn run() -> Result<()> {
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
    for (stem, chart) in charts(&results)? {
        match chart {
            Some((c, from)) => {
                let [svg, png] = plots::render(&c, &out, stem)?;
                println!(
                    "{} and {} (from {})",
                    svg.display(),
                    png.display(),
                    from.display()
                );
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_runs_start_comes_from_its_first_note() {
        let at = |s: u64| Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s));
        let cases = [
            (
                json!({"notes": ["run: chain full, 1796596911 UTC epoch, git 8927d11, took 283 s"]}),
                at(1796596911),
            ),
            (
                json!({"notes": ["machine: x", "run: quick, 12 UTC epoch, git a"]}),
                at(12),
            ),
            (json!({"notes": ["run: quick, soon UTC epoch"]}), None),
            (json!({"notes": []}), None),
            (json!({"title": "no notes"}), None),
        ];
        for (doc, want) in cases {
            assert_eq!(run_started(&doc), want, "{doc}");
        }
    }
}
