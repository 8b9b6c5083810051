//! Line plots as inline SVG. A curve of any length is reduced to at most four
//! points per pixel column (the first, lowest, highest and last of the column, in
//! their order), so a 10,000-step curve costs what a 400-step one does and its
//! spikes stay visible.

use std::fmt::Write as _;

use crate::html::escape;

/// Colours of series, in order (colour-blind-safe, after Okabe and Ito).
pub const PALETTE: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442",
];

/// The colour of series `i`.
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// One curve: `(x, y)` points in increasing `x`.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    /// Index into [`PALETTE`].
    pub color: usize,
    pub points: Vec<(f64, f64)>,
}

/// A vertical marker, e.g. where a run was resumed.
#[derive(Debug, Clone)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: usize,
}

/// A plot of several series against a shared x axis.
#[derive(Debug, Clone, Default)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
    pub markers: Vec<Marker>,
}

const WIDTH: f64 = 460.0;
const HEIGHT: f64 = 230.0;
const LEFT: f64 = 58.0;
const RIGHT: f64 = 22.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 32.0;

/// Reduces `points` (increasing `x`) to at most four per column of `columns` equal
/// columns over `[x0, x1]`: first, lowest, highest and last of each column, in their
/// original order. Non-finite points are dropped.
pub fn downsample(points: &[(f64, f64)], x0: f64, x1: f64, columns: usize) -> Vec<(f64, f64)> {
    let span = (x1 - x0).max(f64::MIN_POSITIVE);
    let col =
        |x: f64| (((x - x0) / span) * columns as f64).clamp(0.0, columns as f64 - 1.0) as usize;
    let mut out = Vec::new();
    let mut bucket: Vec<(f64, f64)> = Vec::new();
    let mut current = usize::MAX;
    let flush = |bucket: &mut Vec<(f64, f64)>, out: &mut Vec<(f64, f64)>| {
        if bucket.len() <= 4 {
            out.append(bucket);
            return;
        }
        let lo = (0..bucket.len())
            .min_by(|&a, &b| bucket[a].1.total_cmp(&bucket[b].1))
            .unwrap_or(0);
        let hi = (0..bucket.len())
            .max_by(|&a, &b| bucket[a].1.total_cmp(&bucket[b].1))
            .unwrap_or(0);
        let mut keep = vec![0, lo, hi, bucket.len() - 1];
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| bucket[i]));
        bucket.clear();
    };
    for &(x, y) in points
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
    {
        let c = col(x);
        if c != current {
            flush(&mut bucket, &mut out);
            current = c;
        }
        bucket.push((x, y));
    }
    flush(&mut bucket, &mut out);
    out
}

/// About five round tick values covering `[lo, hi]`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if span.is_nan() || span <= 0.0 {
        return vec![lo];
    }
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..=12)
        .map(|i| first + i as f64 * step)
        .take_while(|v| *v <= hi + step * 1e-9)
        .collect()
}

/// A compact label for a tick or value.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The plot as an `<svg>` element (no namespace declaration: it is inline HTML).
/// Series with fewer than 60 points also get a dot per point. An empty plot says so.
pub fn line_plot(plot: &Plot) -> String {
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let all = || {
        plot.series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "<svg class=\"plot\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\">\
         <text x=\"{LEFT}\" y=\"14\" style=\"font-weight:600\">{t}</text>",
        t = escape(&plot.title)
    );
    let Some((x0, x1, y0, y1)) = all().fold(None, |acc: Option<(f64, f64, f64, f64)>, &(x, y)| {
        Some(match acc {
            None => (x, x, y, y),
            Some((a, b, c, d)) => (a.min(x), b.max(x), c.min(y), d.max(y)),
        })
    }) else {
        out.push_str("<text x=\"60\" y=\"120\">no data</text></svg>");
        return out;
    };
    let (x0, x1) = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x1 + 1.0)
    };
    let pad = if y1 > y0 {
        (y1 - y0) * 0.05
    } else {
        y0.abs().max(1.0) * 0.1
    };
    let (y0, y1) = (y0 - pad, y1 + pad);
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * pw;
    let sy = |y: f64| TOP + ph - (y - y0) / (y1 - y0) * ph;
    // Legend: one entry per series when there are several.
    if plot.series.len() > 1 {
        let mut x = LEFT;
        for s in &plot.series {
            let _ = write!(
                out,
                "<rect x=\"{x:.0}\" y=\"21\" width=\"12\" height=\"4\" fill=\"{}\"/><text x=\"{:.0}\" y=\"27\">{}</text>",
                color(s.color),
                x + 15.0,
                escape(&s.name)
            );
            x += 24.0 + 6.5 * s.name.chars().count() as f64;
        }
    }
    let _ = write!(
        out,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#c5ccd6\"/>"
    );
    for t in ticks(y0, y1) {
        let y = sy(t);
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#edf0f4\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 4.0,
            y + 4.0,
            fmt_num(t)
        );
    }
    for t in ticks(x0, x1) {
        let x = sx(t);
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>",
            TOP + ph + 14.0,
            fmt_num(t)
        );
    }
    let _ = write!(
        out,
        "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" class=\"muted\">{}</text>",
        LEFT + pw / 2.0,
        HEIGHT - 3.0,
        escape(&plot.x_label)
    );
    for m in plot.markers.iter().filter(|m| m.x >= x0 && m.x <= x1) {
        let x = sx(m.x);
        let _ = write!(
            out,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{TOP}\" y2=\"{:.1}\" stroke=\"{}\" stroke-dasharray=\"4 3\"><title>{}</title></line>",
            TOP + ph,
            color(m.color),
            escape(&m.label)
        );
    }
    for s in &plot.series {
        let pts = downsample(&s.points, x0, x1, pw as usize);
        if pts.is_empty() {
            continue;
        }
        let c = color(s.color);
        let last = pts[pts.len() - 1];
        let mut coords = String::with_capacity(pts.len() * 12);
        for (i, &(x, y)) in pts.iter().enumerate() {
            if i > 0 {
                coords.push(' ');
            }
            let _ = write!(coords, "{:.1},{:.1}", sx(x), sy(y));
        }
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.4\" points=\"{coords}\"><title>{}: last {} at {}</title></polyline>",
            escape(&s.name),
            fmt_num(last.1),
            fmt_num(last.0)
        );
        if s.points.len() < 60 {
            for &(x, y) in &pts {
                let _ = write!(
                    out,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{c}\"><title>{}: {} at {}</title></circle>",
                    sx(x),
                    sy(y),
                    escape(&s.name),
                    fmt_num(y),
                    fmt_num(x)
                );
            }
        }
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_extremes_and_bounds_the_count() {
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| (i as f64, if i == 5_000 { 100.0 } else { (i % 7) as f64 }))
            .collect();
        let d = downsample(&pts, 0.0, 9_999.0, 400);
        assert!(d.len() <= 1_600, "{}", d.len());
        assert!(d.contains(&(5_000.0, 100.0)), "the spike survives");
        assert_eq!(d[0], (0.0, 0.0));
        assert_eq!(*d.last().unwrap(), pts[9_999]);
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0), "order kept");
    }

    #[test]
    fn short_series_are_kept_whole_and_nan_dropped() {
        let pts = [(1.0, 2.0), (2.0, f64::NAN), (3.0, 1.0)];
        assert_eq!(
            downsample(&pts, 1.0, 3.0, 400),
            vec![(1.0, 2.0), (3.0, 1.0)]
        );
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(fmt_num(0.0003), "3.0e-4");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(1234.0), "1234");
    }

    #[test]
    fn a_plot_has_its_curves_and_legend() {
        let plot = Plot {
            title: "loss <a>".into(),
            x_label: "update".into(),
            series: vec![
                Series {
                    name: "run-a".into(),
                    color: 0,
                    points: vec![(1.0, 3.0), (2.0, 2.0)],
                },
                Series {
                    name: "run-b".into(),
                    color: 1,
                    points: vec![(1.0, 4.0), (2.0, 1.0)],
                },
            ],
            markers: vec![Marker {
                x: 1.5,
                label: "resumed".into(),
                color: 0,
            }],
        };
        let svg = line_plot(&plot);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("loss &lt;a&gt;") && !svg.contains("<a>"));
        assert!(svg.contains(">run-b</text>"));
        assert!(svg.contains("stroke-dasharray"));
        assert!(line_plot(&Plot::default()).contains("no data"));
    }
}
