//! Every chart the reports draw, with `plotters`: bars with ±1 standard-error whiskers for a
//! table's rows, lines with markers (and whiskers where known) for ablations and privacy–utility
//! curves; each written as SVG and PNG beside it. PNG text is drawn with an embedded DejaVu
//! Sans Mono (assets/fonts), so charts need no system fonts.

use crate::io::atomic;
use crate::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// Pixels of every chart.
const SIZE: (u32, u32) = (800, 460);

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";

/// One bar: its label, value and standard error (a whisker of ±1 stderr when known).
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// Shown under the bar.
    pub label: String,
    /// Its height (NaN: left out).
    pub value: f64,
    /// Its standard error.
    pub stderr: Option<f64>,
}

/// One line of a line chart: its name and `(x, y, stderr)` points.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Shown in the legend.
    pub name: String,
    /// The points, in x order (NaN y: left out).
    pub points: Vec<(f64, f64, Option<f64>)>,
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let font: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSansMono.ttf");
        // Only fails on bytes that are not a font, which the embedded file is.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, font);
    });
}

fn draw_error<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::format(path, format!("drawing the chart failed: {e:?}"))
}

/// The y range that shows every value and whisker, with a margin, from 0 where all are ≥ 0.
fn y_range(values: impl Iterator<Item = (f64, Option<f64>)>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (v, e) in values.filter(|(v, _)| v.is_finite()) {
        let e = e.filter(|e| e.is_finite()).unwrap_or(0.0);
        lo = lo.min(v - e);
        hi = hi.max(v + e);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let lo = if lo >= 0.0 { 0.0 } else { lo };
    let span = (hi - lo).max(1e-9);
    (lo, hi + 0.1 * span)
}

/// Writes a bar chart as `stem.svg` and `stem.png`.
pub fn bar_chart(stem: &Path, title: &str, axis: &str, bars: &[Bar]) -> Result<()> {
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    // Both back ends measure text with the font (the SVG one to lay out the labels).
    register_font();
    let mut text = String::new();
    draw_bars(SVGBackend::with_string(&mut text, SIZE), title, axis, bars)
        .map_err(draw_error(&svg))?;
    atomic::write_bytes(&svg, text.as_bytes())?;
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw_bars(
        BitMapBackend::with_buffer(&mut pixels, SIZE),
        title,
        axis,
        bars,
    )
    .map_err(draw_error(&png))?;
    write_png(&png, &pixels)
}

/// Writes a line chart as `stem.svg` and `stem.png`.
pub fn line_chart(
    stem: &Path,
    title: &str,
    x_name: &str,
    y_name: &str,
    series: &[Series],
) -> Result<()> {
    let svg = stem.with_extension("svg");
    let png = stem.with_extension("png");
    // Both back ends measure text with the font (the SVG one to lay out the labels).
    register_font();
    let mut text = String::new();
    draw_lines(
        SVGBackend::with_string(&mut text, SIZE),
        title,
        x_name,
        y_name,
        series,
    )
    .map_err(draw_error(&svg))?;
    atomic::write_bytes(&svg, text.as_bytes())?;
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    draw_lines(
        BitMapBackend::with_buffer(&mut pixels, SIZE),
        title,
        x_name,
        y_name,
        series,
    )
    .map_err(draw_error(&png))?;
    write_png(&png, &pixels)
}

/// Encodes RGB pixels as PNG and writes them atomically.
fn write_png(path: &Path, pixels: &[u8]) -> Result<()> {
    atomic::write_with(path, |w| {
        let fail = |e: png::EncodingError| Error::format(path, format!("encoding the PNG: {e}"));
        let mut encoder = png::Encoder::new(w, SIZE.0, SIZE.1);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(pixels).map_err(fail)?;
        writer.finish().map_err(fail)
    })
}

type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw_bars<DB: DrawingBackend>(backend: DB, title: &str, axis: &str, bars: &[Bar]) -> Drawn<DB> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (lo, hi) = y_range(bars.iter().map(|b| (b.value, b.stderr)));
    // Horizontal bars, the first row on top, so that long row names read as they are: bar i
    // spans y = (n - 1 - i) ± 0.35 on a numeric axis whose ticks are the names.
    let n = bars.len().max(1);
    let slot = |i: usize| (n - 1 - i) as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(170)
        .build_cartesian_2d(lo..hi, -0.5..n as f64 - 0.5)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let k = y.round();
            let on_tick = (y - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < n;
            bars.get(n.wrapping_sub(1 + k as usize))
                .filter(|_| on_tick)
                .map_or(String::new(), |b| b.label.clone())
        })
        .label_style((FONT, 13))
        .x_desc(axis)
        .axis_desc_style((FONT, 14))
        .draw()?;
    let shown: Vec<(f64, &Bar, PaletteColor<Palette99>)> = bars
        .iter()
        .enumerate()
        .filter(|(_, b)| b.value.is_finite())
        .map(|(i, b)| (slot(i), b, Palette99::pick(i)))
        .collect();
    chart.draw_series(shown.iter().map(|(y, b, color)| {
        Rectangle::new(
            [(lo, y - 0.35), (b.value, y + 0.35)],
            color.mix(0.8).filled(),
        )
    }))?;
    // Whiskers of ±1 standard error: a line with caps.
    for (y, b, _) in &shown {
        let Some(e) = b.stderr.filter(|e| e.is_finite() && *e > 0.0) else {
            continue;
        };
        let (x0, x1) = (b.value - e, b.value + e);
        let style = BLACK.stroke_width(2);
        chart.draw_series([
            PathElement::new([(x0, *y), (x1, *y)], style),
            PathElement::new([(x0, y - 0.15), (x0, y + 0.15)], style),
            PathElement::new([(x1, y - 0.15), (x1, y + 0.15)], style),
        ])?;
    }
    root.present()
}

fn draw_lines<DB: DrawingBackend>(
    backend: DB,
    title: &str,
    x_name: &str,
    y_name: &str,
    series: &[Series],
) -> Drawn<DB> {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let points = || series.iter().flat_map(|s| s.points.iter());
    let (y_lo, y_hi) = y_range(points().map(|&(_, y, e)| (y, e)));
    let xs: Vec<f64> = points().map(|p| p.0).filter(|x| x.is_finite()).collect();
    let x_lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let x_hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (x_lo, x_hi) = if x_lo.is_finite() && x_hi > x_lo {
        let pad = 0.05 * (x_hi - x_lo);
        (x_lo - pad, x_hi + pad)
    } else if x_lo.is_finite() {
        (x_lo - 1.0, x_lo + 1.0)
    } else {
        (0.0, 1.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(x_lo..x_hi, y_lo..y_hi)?;
    chart
        .configure_mesh()
        .x_desc(x_name)
        .y_desc(y_name)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i);
        let pts: Vec<(f64, f64, Option<f64>)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y, _)| x.is_finite() && y.is_finite())
            .collect();
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|&(x, y, _)| (x, y)),
                color.stroke_width(2),
            ))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], Palette99::pick(i).stroke_width(2))
            });
        chart.draw_series(
            pts.iter()
                .map(|&(x, y, _)| Circle::new((x, y), 4, color.filled())),
        )?;
        chart.draw_series(pts.iter().filter_map(|&(x, y, e)| {
            let e = e.filter(|e| e.is_finite() && *e > 0.0)?;
            Some(ErrorBar::new_vertical(
                x,
                y - e,
                y,
                y + e,
                color.stroke_width(1),
                8,
            ))
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()?;
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: f64, stderr: Option<f64>) -> Bar {
        Bar {
            label: label.into(),
            value,
            stderr,
        }
    }

    #[test]
    fn bars_get_whiskers_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("chart");
        let bars = [
            bar("zero_shot", 0.73, Some(0.03)),
            bar("plug_in", 0.85, Some(0.025)),
            bar("missing", f64::NAN, None),
        ];
        bar_chart(&stem, "acc on test", "accuracy", &bars).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("chart.svg")).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("plug_in"), "{svg}");
        // Two bars, each with a whisker: an error bar is drawn as line segments.
        assert!(svg.matches("<rect").count() >= 3, "{svg}");
        // Each whisker is three lines: 2 bars × 3.
        assert!(svg.matches("<polyline").count() >= 6, "{svg}");
        let png = std::fs::File::open(dir.path().join("chart.png")).unwrap();
        let info = png::Decoder::new(png).read_info().unwrap();
        assert_eq!((info.info().width, info.info().height), SIZE);
    }

    #[test]
    fn whiskers_fit_in_the_y_range() {
        let (lo, hi) = y_range([(0.9, Some(0.2)), (0.5, None)].into_iter());
        assert_eq!(lo, 0.0);
        assert!(hi >= 1.1);
        let (lo, _) = y_range([(-1.0, Some(0.5))].into_iter());
        assert!(lo <= -1.5);
        assert_eq!(y_range(std::iter::empty()), (0.0, 1.0));
    }

    #[test]
    fn lines_with_markers_and_error_bars() {
        let dir = tempfile::tempdir().unwrap();
        let stem = dir.path().join("ablation-keep");
        let series = [
            Series {
                name: "plug-in".into(),
                points: vec![(20.0, 0.7, Some(0.02)), (40.0, 0.8, Some(0.02))],
            },
            Series {
                name: "emulator".into(),
                points: vec![(20.0, 0.5, None), (40.0, f64::NAN, None)],
            },
        ];
        line_chart(&stem, "acc vs size", "size %", "acc", &series).unwrap();
        let svg = std::fs::read_to_string(dir.path().join("ablation-keep.svg")).unwrap();
        assert!(svg.contains("<polyline") && svg.contains("<circle") && svg.contains("plug-in"));
        assert!(dir.path().join("ablation-keep.png").is_file());
    }
}
