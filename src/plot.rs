//! Pictures of a run, as PNG and SVG: loss and accuracy curves, each layer's
//! density over time, and the first layer's connectivity as a heatmap of how
//! many connections each input pixel keeps.
//!
//! Text is drawn with a font compiled into the binary (Hack, from
//! `epaint_default_fonts`), so plotting needs no system fonts.

use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::runlog::{self, Record};
use crate::train::EpochStats;

/// The font family every chart uses.
const FONT: &str = "sans-serif";
/// Line colours, one per series.
const PALETTE: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Draws every picture of the run in `run_dir` (which holds `metrics.jsonl`
/// and, for the heatmap, `checkpoint.safetensors`) into that directory, and
/// returns the files written.
pub fn plot_run(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let metrics = run_dir.join("metrics.jsonl");
    let records = runlog::read(&metrics)?;
    let epochs: Vec<EpochStats> = records
        .iter()
        .filter_map(|r| match r {
            Record::Epoch(e) => Some(e.clone()),
            Record::MaskUpdate(_) => None,
        })
        .collect();
    if epochs.is_empty() {
        return Err(Error::BadFile {
            path: metrics,
            problem: "no epoch has been recorded yet".into(),
        });
    }
    let mut written = Vec::new();
    written.extend(write_chart(
        run_dir,
        "loss",
        (800, 500),
        &LossChart(&epochs),
    )?);
    written.extend(write_chart(
        run_dir,
        "accuracy",
        (800, 500),
        &AccuracyChart(&epochs),
    )?);
    written.extend(write_chart(
        run_dir,
        "density",
        (800, 500),
        &DensityChart {
            epochs: &epochs,
            initial: initial_layers(&records),
        },
    )?);
    let checkpoint_path = run_dir.join("checkpoint.safetensors");
    if checkpoint_path.exists()
        && let Some(heatmap) = Heatmap::of_first_sparse_layer(&Checkpoint::open(&checkpoint_path)?)?
    {
        written.extend(write_chart(run_dir, "connectivity", (640, 600), &heatmap)?);
    }
    Ok(written)
}

/// A picture that can be drawn on any plotters backend.
trait Chart {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String>;
}

/// Draws `chart` into `dir/stem.png` and `dir/stem.svg`.
fn write_chart(
    dir: &Path,
    stem: &str,
    size: (u32, u32),
    chart: &impl Chart,
) -> Result<[PathBuf; 2]> {
    register_font();
    let png = dir.join(format!("{stem}.png"));
    let svg = dir.join(format!("{stem}.svg"));
    draw_to(
        &png,
        BitMapBackend::new(&png, size).into_drawing_area(),
        chart,
    )?;
    draw_to(&svg, SVGBackend::new(&svg, size).into_drawing_area(), chart)?;
    Ok([png, svg])
}

/// Draws `chart` on `root` and writes it out; errors name `path`.
fn draw_to<DB: DrawingBackend>(
    path: &Path,
    root: DrawingArea<DB, Shift>,
    chart: &impl Chart,
) -> Result<()> {
    chart
        .draw(&root)
        .and_then(|()| root.present().map_err(|e| e.to_string()))
        .map_err(|problem| Error::Plot {
            path: path.to_path_buf(),
            problem,
        })
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::HACK_REGULAR)
            .unwrap_or_else(|_| panic!("the bundled font is a valid TrueType font"));
    });
}

/// A chart of lines over epochs, `series` as (label, values), on a log or linear y axis.
fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_y: bool,
) -> std::result::Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    let first_epoch = points().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let last_epoch = points()
        .map(|p| p.0)
        .fold(1.0, f64::max)
        .max(first_epoch + 1.0);
    let ticks = ((last_epoch - first_epoch) as usize + 1).min(11);
    let (low, high) = points().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let mut chart = ChartBuilder::on(root);
    chart
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64);
    macro_rules! draw_on {
        ($chart:expr) => {{
            let mut chart = $chart.map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("epoch")
                .y_desc(y_label)
                .x_labels(ticks)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .label_style((FONT, 14))
                .draw()
                .map_err(|e| e.to_string())?;
            for (i, (label, values)) in series.iter().enumerate() {
                let color = PALETTE[i % PALETTE.len()];
                chart
                    .draw_series(LineSeries::new(
                        values.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| e.to_string())?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }};
    }
    if log_y {
        draw_on!(chart.build_cartesian_2d(
            first_epoch..last_epoch,
            (low * 0.8..high * 1.25).log_scale()
        ));
    } else {
        let pad = ((high - low) * 0.05).max(0.1);
        draw_on!(chart.build_cartesian_2d(first_epoch..last_epoch, low - pad..high + pad));
    }
    Ok(())
}

/// `(epoch, value)` points of one quantity.
fn over_epochs(
    epochs: &[EpochStats],
    value: impl Fn(&EpochStats) -> Option<f64>,
) -> Vec<(f64, f64)> {
    epochs
        .iter()
        .filter_map(|e| Some((e.epoch as f64, value(e)?)))
        .collect()
}

struct LossChart<'a>(&'a [EpochStats]);

impl Chart for LossChart<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let loss = over_epochs(self.0, |e| Some(e.train_loss).filter(|&l| l > 0.0));
        draw_lines(
            root,
            "Training loss",
            "cross-entropy (log scale)",
            &[("train".into(), loss)],
            true,
        )
    }
}

struct AccuracyChart<'a>(&'a [EpochStats]);

impl Chart for AccuracyChart<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        // From the second epoch on, so the first epoch's low values do not
        // flatten the curves that matter.
        let shown = if self.0.len() > 2 {
            &self.0[1..]
        } else {
            self.0
        };
        let series = [
            (
                "train".to_string(),
                over_epochs(shown, |e| Some(100.0 * e.train_accuracy)),
            ),
            (
                "validation".to_string(),
                over_epochs(shown, |e| e.validation_accuracy.map(|a| 100.0 * a)),
            ),
            (
                "test".to_string(),
                over_epochs(shown, |e| Some(100.0 * e.test_accuracy)),
            ),
        ];
        draw_lines(root, "Accuracy", "accuracy (%)", &series, false)
    }
}

/// Each layer's `(stored, size)` before the first mask update, if there was one.
fn initial_layers(records: &[Record]) -> Option<Vec<(usize, usize)>> {
    records.iter().find_map(|r| match r {
        Record::MaskUpdate(u) => Some(u.layers.iter().map(|l| (l.nnz_before, l.size)).collect()),
        Record::Epoch(_) => None,
    })
}

struct DensityChart<'a> {
    epochs: &'a [EpochStats],
    /// Densities at epoch 0, for the sparse layers (in order).
    initial: Option<Vec<(usize, usize)>>,
}

impl Chart for DensityChart<'_> {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        let percent = |stored: usize, size: usize| 100.0 * stored as f64 / size.max(1) as f64;
        let sparse_layers: Vec<usize> = (0..self.epochs[0].layers.len())
            .filter(|&i| self.epochs[0].layers[i].sparse)
            .collect();
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for (i, layer) in self.epochs[0].layers.iter().enumerate() {
            let mut points = Vec::new();
            if let Some(initial) = &self.initial
                && let Some(k) = sparse_layers.iter().position(|&s| s == i)
                && let Some(&(stored, size)) = initial.get(k)
            {
                points.push((0.0, percent(stored, size)));
            }
            points.extend(over_epochs(self.epochs, |e| {
                e.layers
                    .get(i)
                    .map(|l| percent(l.nnz, l.shape.0 * l.shape.1))
            }));
            series.push((layer.name.clone(), points));
        }
        // The total never changes: sparse learning only moves weights.
        let mut total = over_epochs(self.epochs, |e| Some(100.0 * e.density));
        if self.initial.is_some() {
            total.insert(0, (0.0, total[0].1));
        }
        series.push(("all weights".into(), total));
        draw_lines(
            root,
            "Density of each layer",
            "stored weights (%, log scale)",
            &series,
            true,
        )
    }
}

/// How many connections each input of the first sparse layer keeps, laid
/// out as a square image: per input pixel for a fully connected layer, per
/// kernel offset (over all input channels) for a convolution.
struct Heatmap {
    title: String,
    side: usize,
    counts: Vec<usize>,
}

impl Heatmap {
    /// The heatmap of the checkpoint's first sparse layer, if its inputs form
    /// a square image.
    fn of_first_sparse_layer(checkpoint: &Checkpoint) -> Result<Option<Heatmap>> {
        for name in checkpoint.param_names()? {
            if !checkpoint.param_is_sparse(&name)? {
                continue;
            }
            let columns = checkpoint.sparse_param(&name)?.column_counts();
            let dims = checkpoint.param_dims(&name)?;
            let (title, counts) = match dims[..] {
                [_, _, kh, kw] if kh == kw => {
                    // Column (c, i, j): add up the channels of each offset.
                    let mut counts = vec![0; kh * kw];
                    for (k, n) in columns.iter().enumerate() {
                        counts[k % (kh * kw)] += n;
                    }
                    (format!("Filter weights per kernel offset, {name}"), counts)
                }
                _ => (format!("Connections per input pixel, {name}"), columns),
            };
            let side = (counts.len() as f64).sqrt().round() as usize;
            return Ok(
                (side * side == counts.len() && side > 0).then_some(Heatmap {
                    title,
                    side,
                    counts,
                }),
            );
        }
        Ok(None)
    }
}

impl Chart for Heatmap {
    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> std::result::Result<(), String> {
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let max = self.counts.iter().copied().max().unwrap_or(0).max(1) as f64;
        let title = self.title.clone();
        let side = self.side as i32;
        let (plot, legend) = root.split_horizontally(540);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, (FONT, 20))
            .margin(16)
            .x_label_area_size(30)
            .y_label_area_size(30)
            .build_cartesian_2d(0..side, 0..side)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_mesh()
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        let cells = self.counts.iter().enumerate().map(|(i, &count)| {
            let (row, col) = ((i / self.side) as i32, (i % self.side) as i32);
            // Image row 0 at the top.
            let color = ViridisRGB::get_color_normalized(count as f64, 0.0, max);
            Rectangle::new(
                [(col, side - row - 1), (col + 1, side - row)],
                color.filled(),
            )
        });
        chart.draw_series(cells).map_err(|e| e.to_string())?;
        // A colour bar from 0 to the maximum.
        let mut bar = ChartBuilder::on(&legend)
            .margin_top(60)
            .margin_bottom(50)
            .margin_right(16)
            .y_label_area_size(40)
            .build_cartesian_2d(0..1, 0.0..max)
            .map_err(|e| e.to_string())?;
        bar.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style((FONT, 12))
            .draw()
            .map_err(|e| e.to_string())?;
        let steps = 64;
        let strips = (0..steps).map(|s| {
            let (from, to) = (
                max * s as f64 / steps as f64,
                max * (s + 1) as f64 / steps as f64,
            );
            Rectangle::new(
                [(0, from), (1, to)],
                ViridisRGB::get_color_normalized(from, 0.0, max).filled(),
            )
        });
        bar.draw_series(strips).map_err(|e| e.to_string())?;
        Ok(())
    }
}
