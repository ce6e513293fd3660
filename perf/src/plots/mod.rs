//! Line charts of the benchmark results, as SVG and PNG (issue 15, section
//! 5): one [`Chart`] is a title, two axes and named series; [`render`]
//! writes `<stem>.svg` and `<stem>.png`. The adapters below turn result
//! JSON (`perf/results/*.json`) into charts; `trellis-plots` runs them.
//!
//! PNG text needs a TrueType font: [`FONT_PATHS`] are tried in turn
//! (Debian's fonts-dejavu-core). SVG text names `sans-serif` and is drawn
//! by whatever shows the file.

pub mod program;

use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;

/// TrueType fonts tried for PNG text, first found wins.
pub const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const SIZE: (u32, u32) = (900, 560);

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("no TrueType font for PNG text (tried {tried}); install fonts-dejavu-core")]
    NoFont { tried: String },
    #[error("chart {0:?} has no points to draw")]
    Empty(String),
    #[error("chart {chart:?}: a log axis needs values above 0, got {value}")]
    NotPositive { chart: String, value: f64 },
    #[error("drawing {path}: {detail}")]
    Draw { path: String, detail: String },
    #[error("result file {path}: {detail}")]
    Input { path: String, detail: String },
}

/// One line: its name in the legend and its (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub series: Vec<Series>,
}

/// (x from, x to), (y from, y to).
pub type Ranges = ((f64, f64), (f64, f64));

/// The axis ranges: the points' extent with a margin (multiplicative on a
/// log axis), checked for what a log axis cannot show. Pure.
pub fn ranges(chart: &Chart) -> Result<Ranges, PlotError> {
    let pts: Vec<(f64, f64)> = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return Err(PlotError::Empty(chart.title.clone()));
    }
    let axis = |vals: Vec<f64>, log: bool| -> Result<(f64, f64), PlotError> {
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if log {
            if lo <= 0.0 {
                return Err(PlotError::NotPositive {
                    chart: chart.title.clone(),
                    value: lo,
                });
            }
            Ok((lo / 1.5, hi * 1.5))
        } else {
            let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-9);
            // Quantities that cannot go below 0 start their axis at 0.
            Ok((if lo >= 0.0 { 0.0 } else { lo - pad }, hi + pad))
        }
    };
    Ok((
        axis(pts.iter().map(|p| p.0).collect(), chart.log_x)?,
        axis(pts.iter().map(|p| p.1).collect(), chart.log_y)?,
    ))
}

/// Registers the first font of [`FONT_PATHS`] found as `sans-serif`, once.
fn register_font() -> Result<(), PlotError> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                // plotters keeps the font for the process's life.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(FONT_PATHS.join(", "))
    })
    .clone()
    .map_err(|tried| PlotError::NoFont { tried })
}

/// Writes `<dir>/<stem>.svg` and `<dir>/<stem>.png`.
pub fn render(chart: &Chart, dir: &Path, stem: &str) -> Result<[PathBuf; 2], PlotError> {
    let r = ranges(chart)?;
    register_font()?;
    let svg = dir.join(format!("{stem}.svg"));
    let png = dir.join(format!("{stem}.png"));
    let fail = |path: &Path| {
        let path = path.display().to_string();
        move |e: String| PlotError::Draw { path, detail: e }
    };
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart, r).map_err(fail(&svg))?;
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart, r).map_err(fail(&png))?;
    Ok([svg, png])
}

/// Colours that stay apart in print and for common colour blindness.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    chart: &Chart,
    ((x0, x1), (y0, y1)): Ranges,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut b = ChartBuilder::on(&root);
    b.caption(&chart.title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(72);
    // Four coordinate kinds (linear or log on each axis) are four types.
    match (chart.log_x, chart.log_y) {
        (false, false) => lines(b.build_cartesian_2d(x0..x1, y0..y1).map_err(e)?, chart),
        (true, false) => lines(
            b.build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(e)?,
            chart,
        ),
        (false, true) => lines(
            b.build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(e)?,
            chart,
        ),
        (true, true) => lines(
            b.build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(e)?,
            chart,
        ),
    }?;
    root.present().map_err(e)
}

fn lines<'a, DB, X, Y>(
    mut c: plotters::chart::ChartContext<'a, DB, Cartesian2d<X, Y>>,
    chart: &Chart,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    c.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(e)?;
    for (i, s) in chart.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        c.draw_series(LineSeries::new(
            s.points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(e)?
        .label(&s.name)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        c.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(e)?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(e)
}

/// A tick label: whole numbers without a fraction, small ones with two digits.
fn tick(v: &f64) -> String {
    if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Series from result rows: `x` names the x field of each row, each of
/// `ys` a (field, legend name) pair; each value is multiplied by `scale`
/// (e.g. KiB to MiB). Rows without a field are skipped for that series.
pub fn series_from_rows(rows: &[Value], x: &str, ys: &[(&str, &str)], scale: f64) -> Vec<Series> {
    ys.iter()
        .map(|(field, name)| Series {
            name: name.to_string(),
            points: rows
                .iter()
                .filter_map(|r| Some((r[x].as_f64()?, r[*field].as_f64()? * scale)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

/// Reads a result file's JSON.
pub fn read_json(path: &Path) -> Result<Value, PlotError> {
    let fail = |detail: String| PlotError::Input {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
}

/// The array `key` of a result document, or a clear error.
pub fn rows<'a>(doc: &'a Value, key: &str, path: &Path) -> Result<&'a [Value], PlotError> {
    doc[key]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| PlotError::Input {
            path: path.display().to_string(),
            detail: format!("no array {key:?}"),
        })
}

const KIB_TO_MIB: f64 = 1.0 / 1024.0;

/// Mesh RSS on a node against idle pods per node (`pods_memory` rows of a
/// `trellis-bench` result).
pub fn memory_vs_pods(rows: &[Value]) -> Chart {
    Chart {
        title: "Mesh memory on a node against pods per node".into(),
        x_label: "idle pods per node".into(),
        y_label: "total RSS of the mesh's proxies (MiB)".into(),
        log_x: true,
        log_y: true,
        series: series_from_rows(
            rows,
            "pods",
            &[
                ("envoy_sidecars_l7_kib", "Envoy sidecars (L7)"),
                ("trellis_sidecar_shaped_kib", "Trellis, one proxy per pod"),
                ("trellis_ambient_kib", "Trellis ambient (one node proxy)"),
            ],
            KIB_TO_MIB,
        ),
    }
}

/// One proxy's RSS against the services in its config (`mesh_size` rows of
/// `mesh-size.json`).
pub fn memory_vs_mesh_size(rows: &[Value]) -> Chart {
    Chart {
        title: "One proxy's memory against mesh size".into(),
        x_label: "services in the mesh (2 endpoints each)".into(),
        y_label: "RSS (MiB)".into(),
        log_x: true,
        log_y: true,
        series: series_from_rows(
            rows,
            "services",
            &[
                ("envoy_sidecar_l7_kib", "Envoy sidecar (L7), whole mesh"),
                (
                    "trellis_node_proxy_file_kib",
                    "Trellis node proxy, whole mesh",
                ),
            ],
            KIB_TO_MIB,
        ),
    }
}

/// Series per column from the chain's cells (`chain.cells` of
/// `chain-latest.json`): x the depth, y what `value` reads from a cell.
fn chain_series(cells: &[Value], value: impl Fn(&Value) -> Option<f64>) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    for c in cells {
        let (Some(column), Some(depth), Some(y)) =
            (c["column"].as_str(), c["depth"].as_f64(), value(c))
        else {
            continue;
        };
        match out.iter_mut().find(|s| s.name == column) {
            Some(s) => s.points.push((depth, y)),
            None => out.push(Series {
                name: column.to_string(),
                points: vec![(depth, y)],
            }),
        }
    }
    out
}

/// End-to-end p50 and p99 against chain depth, one line per column and
/// percentile.
pub fn latency_vs_depth(cells: &[Value]) -> Chart {
    let mut series = Vec::new();
    for (q, key) in [("p50", "p50_us"), ("p99", "p99_us")] {
        for mut s in chain_series(cells, |c| Some(c["load"]["latency"][key].as_f64()? / 1e3)) {
            s.name = format!("{} {q}", s.name);
            series.push(s);
        }
    }
    Chart {
        title: "Latency along a call chain".into(),
        x_label: "services in the chain".into(),
        y_label: "end-to-end latency (ms)".into(),
        log_x: false,
        log_y: true,
        series,
    }
}

/// The mesh's CPU per 1,000 requests against chain depth, per column.
pub fn cpu_vs_depth(cells: &[Value]) -> Chart {
    Chart {
        title: "Mesh CPU per request along a call chain".into(),
        x_label: "services in the chain".into(),
        y_label: "CPU seconds of every proxy on the path per 1,000 requests".into(),
        log_x: false,
        log_y: false,
        series: chain_series(cells, |c| c["mesh_cpu_s_per_1k_req"].as_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chart(log: bool, points: Vec<(f64, f64)>) -> Chart {
        Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: log,
            log_y: log,
            series: vec![Series {
                name: "s".into(),
                points,
            }],
        }
    }

    #[test]
    fn ranges_cover_the_points_and_refuse_what_cannot_be_drawn() {
        // (log axes, points, Ok(x range contains, y range contains) or Err text)
        type Case = (bool, Vec<(f64, f64)>, Result<(f64, f64), &'static str>);
        let cases: Vec<Case> = vec![
            (false, vec![(1.0, 10.0), (5.0, 20.0)], Ok((5.0, 20.0))),
            (
                true,
                vec![(1.0, 10.0), (100.0, 4000.0)],
                Ok((100.0, 4000.0)),
            ),
            (true, vec![(0.0, 10.0)], Err("needs values above 0, got 0")),
            (false, vec![], Err("no points")),
            (false, vec![(f64::NAN, 1.0)], Err("no points")),
        ];
        for (log, points, want) in cases {
            let c = chart(log, points.clone());
            match (ranges(&c), want) {
                (Ok(((x0, x1), (y0, y1))), Ok((x, y))) => {
                    for (px, py) in &points {
                        assert!(x0 < *px && *px < x1 && y0 < *py && *py < y1, "{points:?}");
                    }
                    assert!(x1 >= x && y1 >= y, "{points:?}");
                }
                (Err(e), Err(text)) => assert!(e.to_string().contains(text), "{e}"),
                (got, want) => panic!("{points:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn rows_become_series_in_mib_and_missing_fields_are_skipped() {
        let rows = [
            json!({"pods": 1, "a_kib": 1024, "b_kib": 2048}),
            json!({"pods": 10, "a_kib": 10240}),
        ];
        let s = series_from_rows(
            &rows,
            "pods",
            &[("a_kib", "A"), ("b_kib", "B"), ("c_kib", "C")],
            KIB_TO_MIB,
        );
        assert_eq!(
            s,
            vec![
                Series {
                    name: "A".into(),
                    points: vec![(1.0, 1.0), (10.0, 10.0)]
                },
                Series {
                    name: "B".into(),
                    points: vec![(1.0, 2.0)]
                },
            ]
        );
    }

    #[test]
    fn chain_cells_become_one_series_per_column_and_skip_what_is_missing() {
        let cell = |column: &str, depth: u32, p50: f64, cpu: Option<f64>| {
            json!({"column": column, "depth": depth, "mesh_cpu_s_per_1k_req": cpu,
                   "load": {"latency": {"p50_us": p50, "p99_us": p50 * 4.0}}})
        };
        let cells = [
            cell("direct", 1, 300.0, None),
            cell("ambient", 1, 900.0, Some(0.2)),
            cell("direct", 3, 500.0, None),
            cell("ambient", 3, 1500.0, Some(0.7)),
        ];
        let cpu = cpu_vs_depth(&cells);
        assert_eq!(
            cpu.series,
            vec![Series {
                name: "ambient".into(),
                points: vec![(1.0, 0.2), (3.0, 0.7)]
            }],
            "direct has no mesh CPU"
        );
        let lat = latency_vs_depth(&cells);
        let names: Vec<&str> = lat.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["direct p50", "ambient p50", "direct p99", "ambient p99"]
        );
        assert_eq!(lat.series[1].points, vec![(1.0, 0.9), (3.0, 1.5)]);
    }

    #[test]
    fn a_chart_is_written_as_svg_and_png() {
        if FONT_PATHS.iter().all(|p| !Path::new(p).exists()) {
            // .ci/run installs fonts-dejavu-core; without it the error says so.
            let e = register_font().unwrap_err();
            assert!(e.to_string().contains("fonts-dejavu-core"), "{e}");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rows = [
            json!({"pods": 1, "envoy_sidecars_l7_kib": 66556, "trellis_ambient_kib": 9256}),
            json!({"pods": 50, "envoy_sidecars_l7_kib": 3824688, "trellis_ambient_kib": 9436}),
        ];
        let [svg, png] = render(&memory_vs_pods(&rows), dir.path(), "pods").unwrap();
        let text = std::fs::read_to_string(svg).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..80.min(text.len())]);
        assert!(text.contains("Mesh memory on a node against pods per node"));
        assert!(text.contains("Envoy sidecars (L7)") && text.contains("Trellis ambient"));
        let bytes = std::fs::read(png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, right after the signature.
        let wh = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
        assert_eq!((wh(16), wh(20)), SIZE);
    }
}
