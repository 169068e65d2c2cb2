//! A bar chart of one metric per row, as a self-contained SVG.
//!
//! Hand-written rather than drawn with plotters: plotters lays out text with system fonts
//! (font-kit / FreeType), a native dependency for what is a dozen rectangles and labels.

/// An SVG bar chart of `(label, value)` bars titled `title`, the y axis named `metric`.
pub fn bar_chart(title: &str, metric: &str, bars: &[(String, f64)]) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 20.0, 50.0, 90.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max = bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let mut svg = header(w, h, w / 2.0, title);
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + plot_h * (1.0 - i as f64 / 4.0);
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n",
            w - right,
            left - 6.0,
            y + 4.0,
            fmt(v)
        );
    }
    svg += &format!(
        "<text x=\"16\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 16 {:.1})\" \
         text-anchor=\"middle\">{}</text>\n",
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(metric)
    );
    let slot = plot_w / bars.len().max(1) as f64;
    let colors = [
        "#4e79a7", "#e15759", "#f28e2b", "#59a14f", "#76b7b2", "#b07aa1",
    ];
    for (i, (label, value)) in bars.iter().enumerate() {
        let v = if value.is_finite() { *value } else { 0.0 };
        let bh = plot_h * v / max;
        let x = left + slot * i as f64 + slot * 0.15;
        let y = top + plot_h - bh;
        svg += &format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
            slot * 0.7,
            colors[i % colors.len()],
            x + slot * 0.35,
            y - 5.0,
            fmt(*value),
            x + slot * 0.35,
            top + plot_h + 18.0,
            esc(label)
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>\n</svg>\n",
        top + plot_h,
        w - right,
        top + plot_h
    );
    svg
}

/// A short number: 3 significant digits for small values, no decimals for large ones.
/// Escapes text for SVG.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The opening of a `w` × `h` SVG on white with `title` centred at `title_x`.
fn header(w: f64, h: f64, title_x: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{title_x}\" y=\"28\" font-size=\"18\" text-anchor=\"middle\">{}</text>\n",
        esc(title)
    )
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An SVG line chart: one polyline with point markers per `(name, points)` series, linear axes
/// fitted to the data, titled `title`, axes named `x_name` and `y_name`.
pub fn line_chart(
    title: &str,
    x_name: &str,
    y_name: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> String {
    let (w, h) = (720.0, 420.0);
    let (left, right, top, bottom) = (70.0, 170.0, 50.0, 60.0);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let finite = series
        .iter()
        .flat_map(|(_, p)| p.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in finite {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // Some room around the data, and never a zero-width range.
    let pad = |lo: f64, hi: f64| {
        let span = (hi - lo).max(hi.abs() * 0.1).max(1e-9);
        (lo - span * 0.05, hi + span * 0.05)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let px = |x: f64| left + plot_w * (x - x0) / (x1 - x0);
    let py = |y: f64| top + plot_h * (1.0 - (y - y0) / (y1 - y0));
    let mut svg = header(w, h, left + plot_w / 2.0, title);
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (xv, yv) = (x0 + (x1 - x0) * f, y0 + (y1 - y0) * f);
        svg += &format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n\
             <text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n",
            left + plot_w,
            left - 6.0,
            py(yv) + 4.0,
            fmt(yv),
            top + plot_h + 16.0,
            fmt(xv),
            y = py(yv),
            x = px(xv),
        );
    }
    svg += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{:.1}\" font-size=\"12\" transform=\"rotate(-90 16 {:.1})\" \
         text-anchor=\"middle\">{}</text>\n",
        left + plot_w / 2.0,
        h - 18.0,
        esc(x_name),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        esc(y_name)
    );
    let colors = ["#4e79a7", "#e15759", "#59a14f", "#f28e2b", "#b07aa1"];
    for (i, (name, points)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        svg += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        );
        for &(x, y) in &pts {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>\n",
                px(x),
                py(y)
            );
        }
        let ly = top + 14.0 + 20.0 * i as f64;
        svg += &format!(
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" \
             stroke-width=\"2\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>\n",
            left + plot_w + 12.0,
            left + plot_w + 32.0,
            left + plot_w + 38.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_one_bar_per_row_and_escapes_labels() {
        let svg = super::bar_chart("t <1>", "acc", &[("a&b".into(), 0.5), ("c".into(), 1.0)]);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("a&amp;b") && svg.contains("t &lt;1&gt;"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
