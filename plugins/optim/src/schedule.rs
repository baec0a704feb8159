//! Learning-rate and weight-decay schedules.

use serde::{Deserialize, Serialize};

/// The shape of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// BitNet b1.58's two stages: linear warm-up, linear decay, and at the midpoint the learning
    /// rate drops by `stage2_lr_scale` and weight decay goes to zero.
    TwoStage,
    /// Linear warm-up, then the peak learning rate and full weight decay for good.
    Constant,
}

/// A schedule resolved for a run of known length.
///
/// For [`ScheduleKind::TwoStage`] with `total_steps = T`, midpoint `M = T / 2` and warm-up
/// `W = min(warmup_steps, M)`, the learning-rate factor at zero-based step `s` is
///
/// - `(s + 1) / W` while `s < W`;
/// - then `1 - (1 - min_lr_ratio) * (s - W) / (T - W)`, a straight line from 1 to
///   `min_lr_ratio` at the last step (held there past the end);
/// - times `stage2_lr_scale` from `s >= M` on (stage two), where weight decay is 0.
///
/// When `T` is unknown (0) there is no midpoint to drop at: the two-stage schedule degrades to
/// warm-up then constant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Shape.
    pub kind: ScheduleKind,
    /// Warm-up steps as configured.
    pub warmup_steps: u64,
    /// Planned steps (0 = unknown).
    pub total_steps: u64,
    /// Learning-rate factor reached at the last step, before the stage-two drop.
    pub min_lr_ratio: f32,
    /// Multiplier on the learning rate in stage two.
    pub stage2_lr_scale: f32,
}

impl Schedule {
    /// `(learning-rate factor, weight-decay factor)` at zero-based `step`.
    pub fn factors(&self, step: u64) -> (f32, f32) {
        let midpoint = self.total_steps / 2;
        let warmup = match (self.kind, self.total_steps) {
            (ScheduleKind::TwoStage, t) if t > 0 => self.warmup_steps.min(midpoint),
            _ => self.warmup_steps,
        };
        if step < warmup {
            return ((step + 1) as f32 / warmup as f32, 1.0);
        }
        match self.kind {
            ScheduleKind::Constant => (1.0, 1.0),
            ScheduleKind::TwoStage if self.total_steps == 0 => (1.0, 1.0),
            ScheduleKind::TwoStage => {
                let span = (self.total_steps - warmup).max(1) as f64;
                let progress = ((step - warmup) as f64 / span).min(1.0);
                let line = 1.0 - (1.0 - f64::from(self.min_lr_ratio)) * progress;
                if step >= midpoint {
                    ((line * f64::from(self.stage2_lr_scale)) as f32, 0.0)
                } else {
                    (line as f32, 1.0)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_stage(total: u64) -> Schedule {
        Schedule {
            kind: ScheduleKind::TwoStage,
            warmup_steps: 10,
            total_steps: total,
            min_lr_ratio: 0.1,
            stage2_lr_scale: 0.5,
        }
    }

    #[test]
    fn two_stage_shape() {
        let s = two_stage(100);
        let lr: Vec<f32> = (0..120).map(|i| s.factors(i).0).collect();
        let wd: Vec<f32> = (0..120).map(|i| s.factors(i).1).collect();
        // Linear warm-up to the peak.
        for (i, &f) in lr.iter().enumerate().take(10) {
            assert!((f - (i + 1) as f32 / 10.0).abs() < 1e-6, "warm-up at {i}: {f}");
        }
        assert_eq!(lr[10], 1.0, "peak right after warm-up");
        // Linear decay: constant differences inside each stage.
        let d1 = lr[11] - lr[12];
        assert!(d1 > 0.0);
        for i in 11..49 {
            assert!(((lr[i] - lr[i + 1]) - d1).abs() < 1e-6, "stage one is linear at {i}");
        }
        for i in 50..99 {
            assert!(((lr[i] - lr[i + 1]) - d1 * 0.5).abs() < 1e-6, "stage two is linear at {i}");
        }
        // The drop at the midpoint: half of the line's value.
        let line_at_50 = 1.0 - 0.9 * 40.0 / 90.0;
        assert!((lr[50] - 0.5 * line_at_50).abs() < 1e-6);
        assert!(lr[50] < 0.6 * lr[49]);
        // Weight decay on in stage one, off in stage two.
        assert!(wd[..50].iter().all(|&w| w == 1.0));
        assert!(wd[50..].iter().all(|&w| w == 0.0));
        // The line reaches min_lr_ratio at the end and stays there.
        assert!((lr[100] - 0.05).abs() < 1e-6 && (lr[119] - 0.05).abs() < 1e-6);
    }

    #[test]
    fn warmup_never_passes_the_midpoint() {
        let s = Schedule { warmup_steps: 1000, ..two_stage(20) };
        assert_eq!(s.factors(9), (1.0, 1.0));
        assert_eq!(s.factors(10).1, 0.0);
    }

    #[test]
    fn unknown_length_and_constant_hold_the_peak() {
        let s = two_stage(0);
        assert_eq!(s.factors(4).0, 0.5);
        assert_eq!(s.factors(1_000_000), (1.0, 1.0));
        let c = Schedule { kind: ScheduleKind::Constant, ..two_stage(100) };
        assert_eq!(c.factors(99), (1.0, 1.0));
        assert_eq!(c.factors(0).0, 0.1);
    }
}
