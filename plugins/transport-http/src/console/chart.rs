//! The dashboard's loss curve, drawn as SVG on the server.

use bitnet_framework::admin::LossPoint;
use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;
const RIGHT: f64 = 10.0;

/// An SVG line chart of training loss against weight version; each applied update is a point.
pub fn loss_chart(points: &[LossPoint]) -> Markup {
    let n = points.len();
    if n == 0 {
        return html! { p class="muted" { "No update applied yet: the loss curve appears with the first." } };
    }
    let (vmin, vmax) =
        points.iter().fold((u64::MAX, 0u64), |(a, b), p| (a.min(p.version), b.max(p.version)));
    let (lmin, lmax) = points
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| (a.min(p.loss), b.max(p.loss)));
    let (lmin, lmax) = if lmax - lmin < 1e-6 { (lmin - 0.5, lmax + 0.5) } else { (lmin, lmax) };
    let span_v = (vmax.saturating_sub(vmin)).max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let xy = |p: &LossPoint| {
        let x = LEFT + (p.version.saturating_sub(vmin)) as f64 / span_v * plot_w;
        let y = TOP + (f64::from(lmax) - f64::from(p.loss)) / f64::from(lmax - lmin) * plot_h;
        (x, y)
    };
    let line: String = points
        .iter()
        .map(|p| {
            let (x, y) = xy(p);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ");
    html! {
        svg id="loss-chart" xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
            viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" data-points=(n)
            aria-label=(format!("training loss over {n} updates")) {
            rect x=(LEFT) y=(TOP) width=(plot_w) height=(plot_h) fill="#fafafa" stroke="#ccc" {}
            text x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" font-size="11" { (format!("{lmax:.3}")) }
            text x=(LEFT - 4.0) y=(TOP + plot_h) text-anchor="end" font-size="11" { (format!("{lmin:.3}")) }
            text x=(LEFT) y=(HEIGHT - 6.0) font-size="11" { "v" (vmin) }
            text x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" font-size="11" { "v" (vmax) }
            polyline points=(line) fill="none" stroke="#2a6fdb" stroke-width="1.5" {}
            @for p in points {
                @let (x, y) = xy(p);
                circle class="pt" cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2" fill="#2a6fdb" {
                    title { "v" (p.version) ": " (format!("{:.4}", p.loss)) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_is_drawn_inside_the_plot() {
        let pts: Vec<LossPoint> = (1..=5)
            .map(|v| LossPoint { version: v, loss: 6.0 - v as f32 * 0.5, ts_ms: v })
            .collect();
        let svg = loss_chart(&pts).into_string();
        assert_eq!(svg.matches("<circle").count(), 5);
        assert!(svg.contains("data-points=\"5\""));
        assert!(svg.contains("v1") && svg.contains("v5"));
        let one = loss_chart(&pts[..1]).into_string();
        assert!(!one.contains("NaN"), "a single point or a flat curve draws finite coordinates");
        assert!(loss_chart(&[]).into_string().contains("No update applied yet"));
    }
}
