//! Draws the latency-by-percentile chart as a standalone SVG (log-scale percentile axis, as HdrHistogram plots are drawn); pure string building.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 50.0;
const TOP: f64 = 60.0;
const BOTTOM: f64 = 70.0;
/// Labels of the percentile axis at 0..=6 decades.
const TICK_LABELS: [&str; 7] = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];

/// One curve: its label, colour, dash pattern and histogram (µs).
pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    pub dashed: bool,
    pub histogram: &'a Histogram<u64>,
}

/// x coordinate of a quantile: log10(1 / (1 - q)), so 90% is 1, 99% is 2, 99.9% is 3.
fn log_x(q: f64, decades: f64) -> f64 {
    (1.0 / (1.0 - q).max(10f64.powf(-decades)))
        .log10()
        .min(decades)
}

/// A round step that gives about five ticks over `range`.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn svg(title: &str, series: &[Series]) -> String {
    let count = series
        .iter()
        .map(|s| s.histogram.len())
        .max()
        .unwrap_or(0)
        .max(1);
    // Show as many decades as the sample count resolves (at least 99%, at most 99.9999%).
    let decades = ((count as f64).log10().ceil()).clamp(2.0, 6.0);
    let max_ms = series
        .iter()
        .map(|s| s.histogram.max() as f64 / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001);
    let step = nice_step(max_ms * 1.05);
    let top_ms = (max_ms * 1.05 / step).ceil() * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / decades * plot_w;
    let py = |ms: f64| TOP + plot_h - ms / top_ms * plot_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{}" y="28" text-anchor="middle" font-size="16">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    for (tick, label) in TICK_LABELS.iter().enumerate().take(decades as usize + 1) {
        let x = px(tick as f64);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + plot_h + 18.0
        );
    }
    let mut ms = 0.0;
    while ms <= top_ms + step / 2.0 {
        let y = py(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            trim_ms(ms)
        );
        ms += step;
    }
    let _ = writeln!(
        out,
        r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">Percentile (log scale of 1/(1-p))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">Latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (index, s) in series.iter().enumerate() {
        let mut points = String::new();
        for v in s.histogram.iter_quantiles(10) {
            let x = px(log_x(v.quantile_iterated_to(), decades));
            let y = py(v.value_iterated_to() as f64 / 1000.0);
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            points.trim_end()
        );
        let ly = TOP + 18.0 + 20.0 * index as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="2"{dash}/>"#,
            LEFT + 12.0,
            LEFT + 42.0,
            s.color
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 48.0,
            ly + 4.0,
            escape(s.label)
        );
    }
    let _ = writeln!(out, "</svg>");
    out
}

fn trim_ms(ms: f64) -> String {
    let text = format!("{ms:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis() {
        assert_eq!(log_x(0.0, 3.0), 0.0);
        assert!((log_x(0.99, 3.0) - 2.0).abs() < 1e-9);
        assert_eq!(log_x(1.0, 3.0), 3.0);
        assert_eq!(nice_step(10.0), 2.0);
        assert_eq!(nice_step(0.7), 0.2);
        assert_eq!(trim_ms(2.5), "2.5");
    }

    #[test]
    fn draws_every_series() {
        let mut h = crate::stats::new_histogram();
        for v in 1..=10_000 {
            h.record(v).unwrap();
        }
        let out = svg(
            "t <&>",
            &[
                Series {
                    label: "a",
                    color: "blue",
                    dashed: false,
                    histogram: &h,
                },
                Series {
                    label: "b",
                    color: "red",
                    dashed: true,
                    histogram: &h,
                },
            ],
        );
        assert_eq!(out.matches("<polyline").count(), 2);
        assert!(out.contains("99.99%") && out.contains("t &lt;&amp;&gt;"));
    }
}
