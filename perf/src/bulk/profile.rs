//! `--profile DIR`: where each meshed column's CPU goes during a bulk run
//! (`perf record` of its processes, summarised by [`crate::l7::profile`]),
//! and the section of the report that sets the columns side by side.
//!
//! Shares of samples alone mislead when two columns cost different CPU
//! per GB, so each group is also given in seconds per GB: its share of
//! the column's samples times the column's proxy CPU per GB in the same
//! (profiled) run.

use std::path::{Path, PathBuf};

use super::columns::Column;
use crate::l7::profile::Profile;

/// How many symbols the report lists per column.
pub const TOP: usize = 25;

/// Whether a column's processes are profiled: meshed ones whose process
/// counters cover the flow (the splice relay's per-connection threads
/// are not followed by `perf record -p`).
pub fn profiled(column: Column) -> bool {
    column != Column::Direct && column.counters_cover_flow()
}

/// The `perf record` file of one run.
pub fn data_path(dir: &Path, column: Column, round: usize) -> PathBuf {
    dir.join(format!("{}-{round}.perf.data", column.name()))
}

/// One profiled column: its summary and its proxy CPU per GB in that run.
pub struct Profiled {
    pub column: Column,
    pub profile: Profile,
    pub cpu_s_per_gb: f64,
}

impl Profiled {
    /// A group's share of this column's samples, in percent (0 if absent).
    fn share(&self, group: &str) -> f64 {
        self.profile
            .groups
            .iter()
            .find(|(g, _)| g == group)
            .map_or(0.0, |(_, p)| *p)
    }
}

/// Every group any column has, ordered by the largest cost in s/GB.
fn groups(cols: &[Profiled]) -> Vec<String> {
    let mut all: Vec<(String, f64)> = Vec::new();
    for c in cols {
        for (g, pct) in &c.profile.groups {
            let cost = pct / 100.0 * c.cpu_s_per_gb;
            match all.iter_mut().find(|(name, _)| name == g) {
                Some((_, v)) => *v = v.max(cost),
                None => all.push((g.clone(), cost)),
            }
        }
    }
    all.sort_by(|a, b| b.1.total_cmp(&a.1));
    all.into_iter().map(|(g, _)| g).collect()
}

/// The report's section: the groups side by side in s/GB (and the
/// difference of the first two columns, Trellis's first when present),
/// then each column's top symbols by self time.
pub fn markdown(cols: &[Profiled]) -> String {
    let mut md =
        String::from("\n## Where the CPU goes (perf record, cpu-clock, DWARF call graphs)\n\n");
    if cols.is_empty() {
        return md + "No column was profiled.\n";
    }
    md += "Self time by group, in proxy CPU seconds per GB (share of the column's samples × its proxy CPU per GB in the profiled run; the share in parentheses).\n\n";
    let mut head = String::from("| group |");
    let mut rule = String::from("|---|");
    for c in cols {
        head += &format!(" {} |", c.column.name());
        rule += "---:|";
    }
    let diff = cols.len() >= 2;
    if diff {
        head += &format!(" {} − {} |", cols[0].column.name(), cols[1].column.name());
        rule += "---:|";
    }
    md += &format!("{head}\n{rule}\n");
    for g in groups(cols) {
        let mut row = format!("| {g} |");
        for c in cols {
            let pct = c.share(&g);
            row += &format!(" {:.3} ({pct:.1}%) |", pct / 100.0 * c.cpu_s_per_gb);
        }
        if diff {
            let cost = |c: &Profiled| c.share(&g) / 100.0 * c.cpu_s_per_gb;
            row += &format!(" {:+.3} |", cost(&cols[0]) - cost(&cols[1]));
        }
        md += &format!("{row}\n");
    }
    let mut total = String::from("| **all (proxy CPU per GB)** |");
    for c in cols {
        total += &format!(" {:.3} |", c.cpu_s_per_gb);
    }
    if diff {
        total += &format!(" {:+.3} |", cols[0].cpu_s_per_gb - cols[1].cpu_s_per_gb);
    }
    md += &format!("{total}\n");
    for c in cols {
        md += &format!(
            "\n### {}: top {} symbols by self time ({} samples)\n\n| self % | symbol |\n|---:|---|\n",
            c.column.label(),
            c.profile.top_self.len(),
            c.profile.samples
        );
        for (pct, sym) in &c.profile.top_self {
            md += &format!("| {pct:.2} | `{}` |\n", sym.replace('|', "\\|"));
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prof(groups: &[(&str, f64)], top: &[(f64, &str)]) -> Profile {
        Profile {
            samples: 1000,
            groups: groups.iter().map(|(g, p)| (g.to_string(), *p)).collect(),
            top_self: top.iter().map(|(p, s)| (*p, s.to_string())).collect(),
            ..Profile::default()
        }
    }

    #[test]
    fn which_columns_are_profiled() {
        // (column, profiled)
        let cases = [
            (Column::Direct, false),
            (Column::TcpRelay, true),
            (Column::SpliceRelay, false),
            (Column::TlsRelay, true),
            (Column::Trellis, true),
            (Column::Ztunnel, true),
        ];
        for (c, want) in cases {
            assert_eq!(profiled(c), want, "{c:?}");
        }
        assert_eq!(
            data_path(Path::new("/p"), Column::Ztunnel, 2),
            PathBuf::from("/p/ztunnel-2.perf.data")
        );
    }

    #[test]
    fn groups_in_seconds_per_gb_side_by_side() {
        let cols = [
            Profiled {
                column: Column::Trellis,
                profile: prof(
                    &[("kernel", 50.0), ("crypto", 30.0), ("h2", 20.0)],
                    &[(12.5, "[k] copy_user|generic")],
                ),
                cpu_s_per_gb: 2.0,
            },
            Profiled {
                column: Column::Ztunnel,
                profile: prof(&[("kernel", 60.0), ("crypto", 40.0)], &[]),
                cpu_s_per_gb: 1.5,
            },
        ];
        let md = markdown(&cols);
        // kernel 1.0 vs 0.9, crypto 0.6 vs 0.6, h2 0.4 vs 0 (absent).
        assert!(
            md.contains("| kernel | 1.000 (50.0%) | 0.900 (60.0%) | +0.100 |"),
            "{md}"
        );
        assert!(
            md.contains("| h2 | 0.400 (20.0%) | 0.000 (0.0%) | +0.400 |"),
            "{md}"
        );
        assert!(md.contains("| **all (proxy CPU per GB)** | 2.000 | 1.500 | +0.500 |"));
        // Ordered by the larger cost: kernel, crypto, h2.
        let at = |g: &str| md.find(&format!("| {g} |")).unwrap();
        assert!(
            at("kernel") < at("crypto") && at("crypto") < at("h2"),
            "{md}"
        );
        // A pipe in a symbol must not break the table.
        assert!(md.contains("| 12.50 | `[k] copy_user\\|generic` |"), "{md}");
        assert!(markdown(&[]).contains("No column was profiled."));
    }
}
