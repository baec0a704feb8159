//! The dashboard's loss curve, drawn as SVG on the server.

use bitnet_framework::admin::LossPoint;
use maud::{Markup, html};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;
const RIGHT: f64 = 10.0;

/// An SVG line chart against weight version: training loss (each applied update is a point,
/// blue) and validation loss (each measurement a point, orange), on one scale.
pub fn loss_chart(points: &[LossPoint], validation: &[LossPoint]) -> Markup {
    let n = points.len();
    if n == 0 && validation.is_empty() {
        return html! { p class="muted" { "No update applied yet: the loss curve appears with the first." } };
    }
    let all = || points.iter().chain(validation);
    let (vmin, vmax) =
        all().fold((u64::MAX, 0u64), |(a, b), p| (a.min(p.version), b.max(p.version)));
    let (lmin, lmax) =
        all().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), p| (a.min(p.loss), b.max(p.loss)));
    let (lmin, lmax) = if lmax - lmin < 1e-6 { (lmin - 0.5, lmax + 0.5) } else { (lmin, lmax) };
    let span_v = (vmax.saturating_sub(vmin)).max(1) as f64;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let xy = |p: &LossPoint| {
        let x = LEFT + (p.version.saturating_sub(vmin)) as f64 / span_v * plot_w;
        let y = TOP + (f64::from(lmax) - f64::from(p.loss)) / f64::from(lmax - lmin) * plot_h;
        (x, y)
    };
    let line = |pts: &[LossPoint]| -> String {
        pts.iter()
            .map(|p| {
                let (x, y) = xy(p);
                format!("{x:.1},{y:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let v = validation.len();
    html! {
        svg id="loss-chart" xmlns="http://www.w3.org/2000/svg" width=(WIDTH) height=(HEIGHT)
            viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" data-points=(n) data-validation-points=(v)
            aria-label=(format!("training loss over {n} updates, validation loss at {v} versions")) {
            rect x=(LEFT) y=(TOP) width=(plot_w) height=(plot_h) fill="#fafafa" stroke="#ccc" {}
            text x=(LEFT - 4.0) y=(TOP + 10.0) text-anchor="end" font-size="11" { (format!("{lmax:.3}")) }
            text x=(LEFT - 4.0) y=(TOP + plot_h) text-anchor="end" font-size="11" { (format!("{lmin:.3}")) }
            text x=(LEFT) y=(HEIGHT - 6.0) font-size="11" { "v" (vmin) }
            text x=(WIDTH - RIGHT) y=(HEIGHT - 6.0) text-anchor="end" font-size="11" { "v" (vmax) }
            text x=(WIDTH - RIGHT - 4.0) y=(TOP + 12.0) text-anchor="end" font-size="11" fill="#2a6fdb" { "training" }
            text x=(WIDTH - RIGHT - 4.0) y=(TOP + 26.0) text-anchor="end" font-size="11" fill="#d9822b" { "validation" }
            polyline points=(line(points)) fill="none" stroke="#2a6fdb" stroke-width="1.5" {}
            @for p in points {
                @let (x, y) = xy(p);
                circle class="pt" cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="2" fill="#2a6fdb" {
                    title { "v" (p.version) ": " (format!("{:.4}", p.loss)) }
                }
            }
            polyline points=(line(validation)) fill="none" stroke="#d9822b" stroke-width="1.5" {}
            @for p in validation {
                @let (x, y) = xy(p);
                circle class="val" cx=(format!("{x:.1}")) cy=(format!("{y:.1}")) r="3" fill="#d9822b" {
                    title { "v" (p.version) " validation: " (format!("{:.4}", p.loss)) }
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
        let val = [LossPoint { version: 3, loss: 5.0, ts_ms: 3 }];
        let svg = loss_chart(&pts, &val).into_string();
        assert_eq!(svg.matches("<circle class=\"pt\"").count(), 5);
        assert_eq!(svg.matches("<circle class=\"val\"").count(), 1);
        assert!(svg.contains("data-points=\"5\"") && svg.contains("data-validation-points=\"1\""));
        assert!(svg.contains("v1") && svg.contains("v5"));
        let one = loss_chart(&pts[..1], &[]).into_string();
        assert!(!one.contains("NaN"), "a single point or a flat curve draws finite coordinates");
        assert!(loss_chart(&[], &[]).into_string().contains("No update applied yet"));
    }
}
