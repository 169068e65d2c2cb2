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
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"28\" font-size=\"18\" text-anchor=\"middle\">{}</text>\n",
        w / 2.0,
        esc(title)
    );
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
