//! Charts for reports, drawn from plain rows: line charts (with bands and log-scale x), scatters
//! (with groups and a y = x reference), heatmaps (with a colour bar) and small multiples of line
//! charts. Each is written as PNG and SVG, atomically, with the same layout.
//!
//! The chart types are plain data: a caller builds one from its rows (no statistics happen here),
//! tests can check the series and ranges of that spec, and `write_*` renders it. Text is drawn with
//! DejaVu Sans, registered at run time (see [`FONT_PATHS`]), so output does not depend on fontconfig.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use image::ImageEncoder;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::output::atomic::write_atomic;

/// Where the font is looked for: the system's DejaVu Sans, then the copy `scripts/fetch-data.sh
/// fonts` puts under `$CKPT_SCAN_DATA/fonts/`.
pub const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "$CKPT_SCAN_DATA/fonts/DejaVuSans.ttf",
];

/// Default picture size in pixels (the SVG uses the same units).
pub const DEFAULT_SIZE: (u32, u32) = (1000, 640);

/// Tableau 10: distinguishable colours for up to ten series or groups (then they repeat).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of series or group `index`.
pub fn palette(index: usize) -> RGBColor {
    PALETTE[index % PALETTE.len()]
}

/// Corner of the plotting area that holds the legend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LegendPosition {
    #[default]
    UpperLeft,
    UpperRight,
    LowerLeft,
    LowerRight,
}

/// One named line of a [`LineChart`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    /// `(x, y)` in drawing order; non-finite points are skipped (the line breaks there).
    pub points: Vec<(f64, f64)>,
    /// Optional shaded band `(x, lower, upper)`, e.g. a confidence interval.
    pub band: Option<Vec<(f64, f64, f64)>>,
    /// Dashed line (for references such as a bound or a closed form).
    pub dashed: bool,
    /// Circle markers at the points.
    pub markers: bool,
    /// Fixed colour; by default the series' index in the palette.
    pub color: Option<RGBColor>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            ..Series::default()
        }
    }
}

/// Several named series of (x, y) points on shared axes.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Logarithmic x axis (base 10); points with x ≤ 0 are skipped.
    pub log_x: bool,
    pub series: Vec<Series>,
    pub legend: LegendPosition,
    /// Fixed y range; by default the data's range (bands included) with a 5 % margin.
    pub y_range: Option<(f64, f64)>,
    /// How many x tick labels plotters aims for (default 10); e.g. the count of integer x values.
    pub x_label_count: Option<usize>,
    pub size: (u32, u32),
}

impl LineChart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        LineChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_x: false,
            series: Vec::new(),
            legend: LegendPosition::default(),
            y_range: None,
            x_label_count: None,
            size: DEFAULT_SIZE,
        }
    }

    /// The x range drawn, in data units: the finite x of every point and band (positive only with
    /// a log axis), widened when degenerate. `None` when nothing can be drawn.
    pub fn x_range(&self) -> Option<(f64, f64)> {
        let xs = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|p| p.0)
                .chain(s.band.iter().flatten().map(|b| b.0))
        });
        let (lo, hi) = finite_span(xs.filter(|&x| !self.log_x || x > 0.0))?;
        Some(if self.log_x {
            if lo == hi {
                (lo / 2.0, hi * 2.0)
            } else {
                (lo, hi)
            }
        } else {
            widen(lo, hi, 0.0)
        })
    }

    /// The y range drawn: [`LineChart::y_range`] when set, else every finite y and band edge with a 5 % margin.
    pub fn y_range(&self) -> Option<(f64, f64)> {
        if let Some(range) = self.y_range {
            return Some(range);
        }
        let ys = self.series.iter().flat_map(|s| {
            s.points
                .iter()
                .filter(|p| p.0.is_finite() && (!self.log_x || p.0 > 0.0))
                .map(|p| p.1)
                .chain(s.band.iter().flatten().flat_map(|b| [b.1, b.2]))
        });
        let (lo, hi) = finite_span(ys)?;
        Some(widen(lo, hi, 0.05))
    }
}

/// One point of a [`ScatterChart`].
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterPoint {
    pub x: f64,
    pub y: f64,
    /// Points of one group share a colour and a legend entry; `None` is drawn unlabelled.
    pub group: Option<String>,
    /// Text drawn beside the point (which variant it is, where a group holds several).
    pub label: Option<String>,
}

/// Points, optionally in groups, optionally with the y = x line.
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<ScatterPoint>,
    /// Draw y = x across the plotted range (predicted vs measured).
    pub identity_line: bool,
    pub legend: LegendPosition,
    pub size: (u32, u32),
}

impl ScatterChart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        ScatterChart {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            points: Vec::new(),
            identity_line: false,
            legend: LegendPosition::default(),
            size: DEFAULT_SIZE,
        }
    }

    /// Group names in first-appearance order (the legend's order and the colours' index).
    pub fn groups(&self) -> Vec<String> {
        distinct_in_order(self.points.iter().filter_map(|p| p.group.clone()))
    }

    /// `(x range, y range)` with a 5 % margin; with the identity line both are the union, so y = x
    /// is the diagonal.
    pub fn ranges(&self) -> Option<((f64, f64), (f64, f64))> {
        let finite = || {
            self.points
                .iter()
                .filter(|p| p.x.is_finite() && p.y.is_finite())
        };
        let x = finite_span(finite().map(|p| p.x))?;
        let y = finite_span(finite().map(|p| p.y))?;
        if self.identity_line {
            let both = widen(x.0.min(y.0), x.1.max(y.1), 0.05);
            Some((both, both))
        } else {
            Some((widen(x.0, x.1, 0.05), widen(y.0, y.1, 0.05)))
        }
    }
}

/// A matrix of values with row and column labels and a colour bar.
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub row_labels: Vec<String>,
    pub column_labels: Vec<String>,
    /// `values[row][column]`; row 0 is drawn at the bottom; non-finite cells are drawn grey.
    pub values: Vec<Vec<f64>>,
    /// What the colour bar measures.
    pub value_label: String,
    /// Fixed colour range; by default the finite values' range.
    pub value_range: Option<(f64, f64)>,
    pub size: (u32, u32),
}

impl Heatmap {
    /// Checks that the matrix matches its labels.
    pub fn check(&self) -> Result<()> {
        if self.values.len() != self.row_labels.len() {
            bail!(
                "heatmap '{}': {} rows of values but {} row labels",
                self.title,
                self.values.len(),
                self.row_labels.len()
            );
        }
        if let Some((i, row)) = self
            .values
            .iter()
            .enumerate()
            .find(|(_, r)| r.len() != self.column_labels.len())
        {
            bail!(
                "heatmap '{}': row {i} has {} values but there are {} column labels",
                self.title,
                row.len(),
                self.column_labels.len()
            );
        }
        Ok(())
    }

    /// The colour scale's range: [`Heatmap::value_range`] or the finite values' span (widened if flat).
    pub fn color_range(&self) -> Option<(f64, f64)> {
        self.value_range.or_else(|| {
            let (lo, hi) = finite_span(self.values.iter().flatten().copied())?;
            Some(widen(lo, hi, 0.0))
        })
    }
}

/// Line charts side by side on a grid, under one title.
#[derive(Clone, Debug, PartialEq)]
pub struct SmallMultiples {
    pub title: String,
    pub panels: Vec<LineChart>,
    pub columns: usize,
    /// Size of each panel; the picture is `columns × rows` panels plus the title.
    pub panel_size: (u32, u32),
}

impl SmallMultiples {
    /// `(rows, columns)` of the grid.
    pub fn grid(&self) -> (usize, usize) {
        let columns = self.columns.clamp(1, self.panels.len().max(1));
        (self.panels.len().div_ceil(columns), columns)
    }

    pub fn size(&self) -> (u32, u32) {
        let (rows, columns) = self.grid();
        (
            self.panel_size.0 * columns as u32,
            self.panel_size.1 * rows as u32 + TITLE_BAND,
        )
    }
}

/// The two files a chart was written to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChartFiles {
    pub png: PathBuf,
    pub svg: PathBuf,
}

/// Writes `chart` to `stem.png` and `stem.svg`.
pub fn write_line_chart(chart: &LineChart, stem: &Path) -> Result<ChartFiles> {
    write_both(stem, chart.size, chart)
}

/// Writes `chart` to `stem.png` and `stem.svg`.
pub fn write_scatter(chart: &ScatterChart, stem: &Path) -> Result<ChartFiles> {
    write_both(stem, chart.size, chart)
}

/// Writes `heatmap` to `stem.png` and `stem.svg`.
pub fn write_heatmap(heatmap: &Heatmap, stem: &Path) -> Result<ChartFiles> {
    heatmap.check()?;
    write_both(stem, heatmap.size, heatmap)
}

/// Writes the panels to `stem.png` and `stem.svg`.
pub fn write_small_multiples(grid: &SmallMultiples, stem: &Path) -> Result<ChartFiles> {
    if grid.panels.is_empty() {
        bail!("small multiples '{}': no panels", grid.title);
    }
    write_both(stem, grid.size(), grid)
}

/// A chart that can draw itself on any plotters backend (PNG buffer or SVG string).
trait Drawable {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>;
}

impl Drawable for LineChart {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_line_chart(area, self)
    }
}

impl Drawable for ScatterChart {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_scatter(area, self)
    }
}

impl Drawable for Heatmap {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        draw_heatmap(area, self)
    }
}

impl Drawable for SmallMultiples {
    fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()> {
        let area = titled(area, &self.title)?;
        let (rows, columns) = self.grid();
        for (panel, chart) in area.split_evenly((rows, columns)).iter().zip(&self.panels) {
            draw_line_chart(panel, chart)?;
        }
        Ok(())
    }
}

/// Registers DejaVu Sans as plotters' sans-serif family, once per process.
pub fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let candidates = font_candidates();
            let path = candidates.iter().find(|p| p.is_file()).ok_or_else(|| {
                format!(
                    "no font for charts: none of {} exists\nhint: apt-get install fonts-dejavu-core, or run scripts/fetch-data.sh fonts",
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            })?;
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            // plotters keeps fonts for the life of the process: hand it a 'static copy, once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a TrueType font plotters can read", path.display()))
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

fn font_candidates() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(FONT_PATHS[0])];
    if let Some(data) = std::env::var_os("CKPT_SCAN_DATA") {
        paths.push(Path::new(&data).join("fonts/DejaVuSans.ttf"));
    }
    paths
}

/// Renders with `draw` once to a PNG buffer and once to an SVG string, and writes both atomically.
fn write_both<C: Drawable>(stem: &Path, size: (u32, u32), chart: &C) -> Result<ChartFiles> {
    ensure_font()?;
    let files = ChartFiles {
        png: stem.with_extension("png"),
        svg: stem.with_extension("svg"),
    };
    let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        area.fill(&WHITE).map_err(plot_error)?;
        chart
            .draw(&area)
            .with_context(|| format!("{}: drawing failed", files.png.display()))?;
        area.present().map_err(plot_error)?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&pixels, size.0, size.1, image::ColorType::Rgb8)
        .with_context(|| format!("{}: PNG encoding failed", files.png.display()))?;
    write_atomic(&files.png, &png)?;
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        area.fill(&WHITE).map_err(plot_error)?;
        chart
            .draw(&area)
            .with_context(|| format!("{}: drawing failed", files.svg.display()))?;
        area.present().map_err(plot_error)?;
    }
    write_atomic(&files.svg, svg.as_bytes())?;
    Ok(files)
}

fn plot_error<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Height of a small-multiples title band, in pixels.
const TITLE_BAND: u32 = 40;

fn titled<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
) -> Result<DrawingArea<DB, Shift>> {
    let (top, rest) = area.split_vertically(TITLE_BAND);
    top.titled(title, ("sans-serif", 24)).map_err(plot_error)?;
    Ok(rest)
}

/// The x value where a log axis draws `x`.
fn axis_x(x: f64, log_x: bool) -> f64 {
    if log_x {
        x.log10()
    } else {
        x
    }
}

/// A tick label: plain for moderate magnitudes, scientific otherwise.
fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

fn series_anchor(position: LegendPosition) -> SeriesLabelPosition {
    match position {
        LegendPosition::UpperLeft => SeriesLabelPosition::UpperLeft,
        LegendPosition::UpperRight => SeriesLabelPosition::UpperRight,
        LegendPosition::LowerLeft => SeriesLabelPosition::LowerLeft,
        LegendPosition::LowerRight => SeriesLabelPosition::LowerRight,
    }
}

fn draw_line_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &LineChart,
) -> Result<()> {
    let (Some(x), Some(y)) = (chart.x_range(), chart.y_range()) else {
        bail!("line chart '{}': no finite points to draw", chart.title);
    };
    let (x0, x1) = (axis_x(x.0, chart.log_x), axis_x(x.1, chart.log_x));
    let log_x = chart.log_x;
    // On a log axis only whole decades are labelled (the mesh's ticks fall at arbitrary
    // log-space steps); a span under one decade labels every tick to two significant digits.
    let spans_decade = x1 - x0 >= 1.0;
    let x_format = move |v: &f64| {
        if !log_x {
            tick_label(*v)
        } else if (v - v.round()).abs() < 1e-6 {
            tick_label(10f64.powf(v.round()))
        } else if spans_decade {
            String::new()
        } else {
            let x = 10f64.powf(*v);
            let digits = (1 - x.log10().floor() as i32).max(0) as usize;
            format!("{x:.digits$}")
        }
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y.0..y.1)
        .map_err(plot_error)?;
    ctx.configure_mesh()
        .x_labels(chart.x_label_count.unwrap_or(10))
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&x_format)
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    let visible = |x: f64, y: f64| x.is_finite() && y.is_finite() && (!log_x || x > 0.0);
    for (index, series) in chart.series.iter().enumerate() {
        let color = series.color.unwrap_or_else(|| palette(index));
        if let Some(band) = &series.band {
            let band: Vec<_> = band
                .iter()
                .filter(|b| visible(b.0, b.1) && b.2.is_finite())
                .map(|b| (axis_x(b.0, log_x), b.1, b.2))
                .collect();
            if band.len() >= 2 {
                let outline: Vec<(f64, f64)> = band
                    .iter()
                    .map(|b| (b.0, b.2))
                    .chain(band.iter().rev().map(|b| (b.0, b.1)))
                    .collect();
                ctx.draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.18).filled(),
                )))
                .map_err(plot_error)?;
            }
        }
        // A non-finite point breaks the line into runs.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for &(px, py) in &series.points {
            if visible(px, py) {
                runs.last_mut()
                    .expect("one run")
                    .push((axis_x(px, log_x), py));
            } else if !runs.last().expect("one run").is_empty() {
                runs.push(Vec::new());
            }
        }
        let style = ShapeStyle::from(color).stroke_width(2);
        for (run_index, run) in runs.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let drawn = if series.dashed {
                ctx.draw_series(DashedLineSeries::new(run.iter().copied(), 8, 5, style))
                    .map_err(plot_error)?
            } else {
                ctx.draw_series(LineSeries::new(run.iter().copied(), style))
                    .map_err(plot_error)?
            };
            if run_index == 0 && !series.name.is_empty() {
                drawn.label(&series.name).legend(move |(lx, ly)| {
                    PathElement::new(vec![(lx, ly), (lx + 20, ly)], color.stroke_width(2))
                });
            }
            if series.markers {
                ctx.draw_series(run.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(plot_error)?;
            }
        }
    }
    if chart.series.iter().any(|s| !s.name.is_empty()) {
        ctx.configure_series_labels()
            .position(series_anchor(chart.legend))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

fn draw_scatter<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &ScatterChart,
) -> Result<()> {
    let Some((x, y)) = chart.ranges() else {
        bail!("scatter '{}': no finite points to draw", chart.title);
    };
    let mut ctx = ChartBuilder::on(area)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_error)?;
    ctx.configure_mesh()
        .x_desc(&chart.x_label)
        .y_desc(&chart.y_label)
        .x_label_formatter(&|v| tick_label(*v))
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(plot_error)?;
    if chart.identity_line {
        let grey = RGBColor(120, 120, 120);
        ctx.draw_series(DashedLineSeries::new(
            [(x.0, x.0), (x.1, x.1)],
            8,
            5,
            grey.stroke_width(1),
        ))
        .map_err(plot_error)?
        .label("y = x")
        .legend(move |(lx, ly)| PathElement::new(vec![(lx, ly), (lx + 20, ly)], grey));
    }
    let finite = |p: &&ScatterPoint| p.x.is_finite() && p.y.is_finite();
    let unlabelled = RGBColor(90, 90, 90);
    ctx.draw_series(
        chart
            .points
            .iter()
            .filter(finite)
            .filter(|p| p.group.is_none())
            .map(|p| Circle::new((p.x, p.y), 3, unlabelled.mix(0.7).filled())),
    )
    .map_err(plot_error)?;
    let groups = chart.groups();
    for (index, group) in groups.iter().enumerate() {
        let color = palette(index);
        ctx.draw_series(
            chart
                .points
                .iter()
                .filter(finite)
                .filter(|p| p.group.as_ref() == Some(group))
                .map(|p| Circle::new((p.x, p.y), 3, color.mix(0.75).filled())),
        )
        .map_err(plot_error)?
        .label(group)
        .legend(move |(lx, ly)| Circle::new((lx + 10, ly), 4, color.filled()));
    }
    let labels = chart.points.iter().filter(finite).filter_map(|p| {
        p.label.as_ref().map(|label| {
            EmptyElement::at((p.x, p.y))
                + Text::new(label.clone(), (6, -14), ("sans-serif", 13).into_font())
        })
    });
    ctx.draw_series(labels).map_err(plot_error)?;
    if chart.identity_line || !groups.is_empty() {
        ctx.configure_series_labels()
            .position(series_anchor(chart.legend))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()
            .map_err(plot_error)?;
    }
    Ok(())
}

/// Viridis, sampled at nine points; colours between are interpolated linearly.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];

/// The colour of `t` ∈ [0, 1] on the viridis scale (clamped).
pub fn viridis(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let scaled = t * (VIRIDIS.len() - 1) as f64;
    let i = (scaled.floor() as usize).min(VIRIDIS.len() - 2);
    let f = scaled - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    heatmap: &Heatmap,
) -> Result<()> {
    let Some((lo, hi)) = heatmap.color_range() else {
        bail!("heatmap '{}': no finite values to draw", heatmap.title);
    };
    let (rows, columns) = (heatmap.row_labels.len(), heatmap.column_labels.len());
    if rows == 0 || columns == 0 {
        bail!("heatmap '{}': empty matrix", heatmap.title);
    }
    let width = area.dim_in_pixel().0;
    let (main, bar) = area.split_horizontally(width.saturating_sub(110));
    // Segmented axes put one tick label at the centre of each cell.
    let mut ctx = ChartBuilder::on(&main)
        .caption(&heatmap.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(72)
        // A usize range's segments include its end: 0..n−1 gives the n cells.
        .build_cartesian_2d(
            (0..columns - 1).into_segmented(),
            (0..rows - 1).into_segmented(),
        )
        .map_err(plot_error)?;
    let label_of = |labels: &[String], v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let column_format = |v: &SegmentValue<usize>| label_of(&heatmap.column_labels, v);
    let row_format = |v: &SegmentValue<usize>| label_of(&heatmap.row_labels, v);
    ctx.configure_mesh()
        .disable_mesh()
        .x_desc(&heatmap.x_label)
        .y_desc(&heatmap.y_label)
        .x_labels(columns.min(40))
        .y_labels(rows.min(40))
        .x_label_formatter(&column_format)
        .y_label_formatter(&row_format)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 17))
        .draw()
        .map_err(plot_error)?;
    let scale = |v: f64| (v - lo) / (hi - lo);
    ctx.draw_series(heatmap.values.iter().enumerate().flat_map(|(r, row)| {
        row.iter().enumerate().map(move |(c, &v)| {
            let color = if v.is_finite() {
                viridis(scale(v))
            } else {
                RGBColor(200, 200, 200)
            };
            Rectangle::new(
                [
                    (SegmentValue::Exact(c), SegmentValue::Exact(r)),
                    (SegmentValue::Exact(c + 1), SegmentValue::Exact(r + 1)),
                ],
                color.filled(),
            )
        })
    }))
    .map_err(plot_error)?;
    let mut bar_ctx = ChartBuilder::on(&bar)
        .margin_top(48)
        .margin_bottom(60)
        .margin_right(8)
        .y_label_area_size(62)
        .build_cartesian_2d(0f64..1f64, lo..hi)
        .map_err(plot_error)?;
    bar_ctx
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_desc(&heatmap.value_label)
        .y_label_formatter(&|v| tick_label(*v))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(plot_error)?;
    const STEPS: usize = 64;
    bar_ctx
        .draw_series((0..STEPS).map(|i| {
            let (a, b) = (i as f64 / STEPS as f64, (i + 1) as f64 / STEPS as f64);
            Rectangle::new(
                [(0.0, lo + a * (hi - lo)), (1.0, lo + b * (hi - lo))],
                viridis((a + b) / 2.0).filled(),
            )
        }))
        .map_err(plot_error)?;
    Ok(())
}

/// The distinct items in first-appearance order: panels, series or groups keyed from rows.
pub fn distinct_in_order<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Min and max of the finite values; `None` when there are none.
fn finite_span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

/// `[lo, hi]` widened by `margin` of its width on each side; a flat range gets ±0.5 (or ±5 %).
fn widen(lo: f64, hi: f64, margin: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * margin;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 0.5 } else { lo.abs() * 0.05 };
        (lo - pad, hi + pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(path: &Path) -> image::RgbImage {
        image::open(path).unwrap().to_rgb8()
    }

    /// Not blank: a good share of the pixels differ from the white background, in several colours.
    fn assert_drawn(img: &image::RgbImage, size: (u32, u32)) {
        assert_eq!(img.dimensions(), size);
        let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let share = non_white as f64 / (size.0 * size.1) as f64;
        assert!(share > 0.01, "only {share:.4} of the pixels are drawn");
        let distinct: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
        assert!(distinct.len() > 8, "only {} colours", distinct.len());
    }

    fn sample_chart() -> LineChart {
        let mut chart = LineChart::new("R² vs k", "k", "R²");
        let mut measured = Series::new("measured", vec![(1.0, 0.1), (2.0, 0.2), (4.0, 0.35)]);
        measured.band = Some(vec![(1.0, 0.05, 0.15), (2.0, 0.15, 0.25), (4.0, 0.3, 0.4)]);
        measured.markers = true;
        let mut bound = Series::new(
            "bound",
            vec![(1.0, 0.2), (2.0, 0.3), (4.0, f64::NAN), (8.0, 0.6)],
        );
        bound.dashed = true;
        chart.series = vec![measured, bound];
        chart
    }

    #[test]
    fn line_chart_ranges_cover_points_and_bands() {
        let chart = sample_chart();
        assert_eq!(chart.x_range(), Some((1.0, 8.0)));
        // y: 0.05 (band) .. 0.6 (bound), with a 5 % margin; the NaN is ignored.
        let (lo, hi) = chart.y_range().unwrap();
        assert!((lo - (0.05 - 0.0275)).abs() < 1e-12 && (hi - (0.6 + 0.0275)).abs() < 1e-12);
    }

    #[test]
    fn log_axis_skips_non_positive_x() {
        let mut chart = LineChart::new("t", "x", "y");
        chart.log_x = true;
        chart.series = vec![Series::new(
            "s",
            vec![(0.0, 100.0), (10.0, 1.0), (1000.0, 2.0)],
        )];
        assert_eq!(chart.x_range(), Some((10.0, 1000.0)));
        let (lo, hi) = chart.y_range().unwrap();
        assert!(
            lo < 1.0 && hi > 2.0 && hi < 3.0,
            "the x = 0 point's y is not in range"
        );
    }

    #[test]
    fn empty_or_non_finite_data_has_no_range() {
        let mut chart = LineChart::new("t", "x", "y");
        assert_eq!(chart.x_range(), None);
        chart.series = vec![Series::new(
            "s",
            vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
        )];
        assert_eq!(chart.y_range(), None);
        let dir = tempfile::tempdir().unwrap();
        let err = write_line_chart(&chart, &dir.path().join("x")).unwrap_err();
        assert!(format!("{err:#}").contains("no finite points"), "{err:#}");
    }

    #[test]
    fn scatter_groups_and_identity_ranges() {
        let mut chart = ScatterChart::new("pred vs meas", "predicted", "measured");
        chart.identity_line = true;
        chart.points = vec![
            ScatterPoint {
                x: 0.0,
                y: 0.5,
                group: Some("b".into()),
                label: None,
            },
            ScatterPoint {
                x: 1.0,
                y: 0.2,
                group: Some("a".into()),
                label: None,
            },
            ScatterPoint {
                x: 0.4,
                y: 2.0,
                group: Some("b".into()),
                label: None,
            },
            ScatterPoint {
                x: 0.3,
                y: 0.3,
                group: None,
                label: None,
            },
        ];
        assert_eq!(chart.groups(), vec!["b".to_string(), "a".to_string()]);
        let (x, y) = chart.ranges().unwrap();
        assert_eq!(x, y);
        assert!((x.0 + 0.1).abs() < 1e-12 && (x.1 - 2.1).abs() < 1e-12);
    }

    #[test]
    fn heatmap_checks_shape_and_colour_range() {
        let mut heatmap = Heatmap {
            title: "t".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            row_labels: vec!["0".into(), "1".into()],
            column_labels: vec!["a".into(), "b".into(), "c".into()],
            values: vec![vec![0.0, 1.0, f64::NAN], vec![2.0, 3.0, 4.0]],
            value_label: "R²".into(),
            value_range: None,
            size: (600, 400),
        };
        heatmap.check().unwrap();
        assert_eq!(heatmap.color_range(), Some((0.0, 4.0)));
        heatmap.values[1].pop();
        let err = heatmap.check().unwrap_err().to_string();
        assert!(
            err.contains("row 1 has 2 values but there are 3 column labels"),
            "{err}"
        );
    }

    #[test]
    fn viridis_ends_and_clamps() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(-3.0), viridis(0.0));
        assert_eq!(viridis(0.5), RGBColor(33, 144, 141));
    }

    #[test]
    fn small_multiples_grid() {
        let grid = SmallMultiples {
            title: "g".into(),
            panels: vec![sample_chart(); 5],
            columns: 3,
            panel_size: (300, 200),
        };
        assert_eq!(grid.grid(), (2, 3));
        assert_eq!(grid.size(), (900, 400 + TITLE_BAND));
    }

    #[test]
    fn every_chart_writes_a_drawn_png_of_the_requested_size_and_an_svg() {
        let dir = tempfile::tempdir().unwrap();
        let mut line = sample_chart();
        line.size = (640, 420);
        let files = write_line_chart(&line, &dir.path().join("line")).unwrap();
        assert_drawn(&decode(&files.png), (640, 420));
        let svg = std::fs::read_to_string(&files.svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("measured") && svg.contains("bound"));

        let mut log = sample_chart();
        log.log_x = true;
        let files = write_line_chart(&log, &dir.path().join("log")).unwrap();
        assert_drawn(&decode(&files.png), DEFAULT_SIZE);

        let mut scatter = ScatterChart::new("s", "x", "y");
        scatter.identity_line = true;
        scatter.points = (0..50)
            .map(|i| ScatterPoint {
                x: i as f64 / 50.0,
                y: (i as f64 / 50.0).powi(2),
                group: Some(if i % 2 == 0 { "even" } else { "odd" }.into()),
                label: None,
            })
            .collect();
        let files = write_scatter(&scatter, &dir.path().join("scatter")).unwrap();
        assert_drawn(&decode(&files.png), DEFAULT_SIZE);

        let heatmap = Heatmap {
            title: "h".into(),
            x_label: "head".into(),
            y_label: "layer".into(),
            row_labels: (0..4).map(|i| i.to_string()).collect(),
            column_labels: (0..6).map(|i| format!("h{i}")).collect(),
            values: (0..4)
                .map(|r| (0..6).map(|c| (r * c) as f64).collect())
                .collect(),
            value_label: "value".into(),
            value_range: None,
            size: (700, 500),
        };
        let files = write_heatmap(&heatmap, &dir.path().join("heat")).unwrap();
        assert_drawn(&decode(&files.png), (700, 500));

        let grid = SmallMultiples {
            title: "grid".into(),
            panels: vec![sample_chart(); 3],
            columns: 2,
            panel_size: (400, 300),
        };
        let files = write_small_multiples(&grid, &dir.path().join("grid")).unwrap();
        assert_drawn(&decode(&files.png), grid.size());
        // Atomic writes leave only the finished files.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 10, "{names:?}");
    }
}
