//! AdamW with decoupled weight decay on matrices only, global-norm clipping and the BitNet
//! two-stage schedule.

use crate::arena::{self, CHUNK, DecayMap, Workers};
use crate::schedule::{Schedule, ScheduleKind};
use bitnet_framework::BuildContext;
use bitnet_framework::isa::{self, IsaLevel};
use bitnet_framework::optim::{OptimError, Optimizer, OptimizerState, StepInfo, StepReport};
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Options of the `"adamw"` optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay (`p -= lr * weight_decay * p`), on matrices only.
    pub weight_decay: f32,
    /// Linear warm-up steps (never past the midpoint of a two-stage schedule).
    pub warmup_steps: u64,
    /// Clip the gradient to this global L2 norm; 0 disables clipping.
    pub clip_norm: f32,
    /// `"two-stage"` (BitNet b1.58) or `"constant"`.
    pub schedule: ScheduleKind,
    /// Learning-rate factor at the last step of the linear decay (before the stage-two drop).
    pub min_lr_ratio: f32,
    /// Learning-rate multiplier of stage two (the drop at the midpoint).
    pub stage2_lr_scale: f32,
    /// Planned steps for the schedule; 0 takes the run's `train.steps`.
    pub total_steps: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1.5e-3,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            warmup_steps: 100,
            clip_norm: 1.0,
            schedule: ScheduleKind::TwoStage,
            min_lr_ratio: 0.1,
            stage2_lr_scale: 0.5,
            total_steps: 0,
        }
    }
}

impl AdamWConfig {
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !(self.lr.is_finite() && self.lr > 0.0) {
            p.push(format!("lr must be positive, got {}", self.lr));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                p.push(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            p.push(format!("eps must be positive, got {}", self.eps));
        }
        for (name, v) in [("weight_decay", self.weight_decay), ("clip_norm", self.clip_norm)] {
            if !(v.is_finite() && v >= 0.0) {
                p.push(format!("{name} must be zero or positive, got {v}"));
            }
        }
        for (name, v) in
            [("min_lr_ratio", self.min_lr_ratio), ("stage2_lr_scale", self.stage2_lr_scale)]
        {
            if !(v > 0.0 && v <= 1.0) {
                p.push(format!("{name} must be in (0, 1], got {v}"));
            }
        }
        p
    }
}

impl PluginConfig for AdamWConfig {
    type Component = dyn Optimizer;

    fn validate(&self, _ctx: &BuildContext) -> Vec<String> {
        self.problems()
    }

    fn build(self, ctx: &BuildContext) -> Result<Box<dyn Optimizer>, BuildError> {
        arena::check_isa_env().map_err(|m| BuildError::failed(Slot::Optimizer, "adamw", m))?;
        AdamW::new(self, ctx)
            .map(|o| Box::new(o) as Box<dyn Optimizer>)
            .map_err(|m| BuildError::failed(Slot::Optimizer, "adamw", m))
    }
}

/// The AdamW optimizer over one arena.
pub struct AdamW {
    config: AdamWConfig,
    schedule: Schedule,
    decay: DecayMap,
    /// First moments.
    m: Vec<f32>,
    /// Second moments.
    v: Vec<f32>,
    /// Successful steps so far (drives bias correction).
    t: u64,
    workers: Workers,
    partials: Vec<f64>,
}

/// One chunk of the arena as the zipped iterators hand it out: index, params, m, v, grad.
type AdamItem<'a> = (usize, (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), &'a [f32]));

/// Per-step constants of the element loop.
#[derive(Clone, Copy)]
struct Coeffs {
    beta1: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    /// `lr / (1 - beta1^t)`.
    step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`.
    inv_sqrt_bc2: f32,
    eps: f32,
    /// `1 - lr * weight_decay` for matrices.
    keep: f32,
    /// Clipping factor on the gradient.
    grad_scale: f32,
}

impl AdamW {
    /// Builds the optimizer for the context's layout (needed for weight decay on matrices).
    pub fn new(config: AdamWConfig, ctx: &BuildContext) -> Result<Self, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let layout = ctx.require_layout()?;
        let n = layout.total_params();
        let total_steps = if config.total_steps > 0 { config.total_steps } else { ctx.total_steps };
        let schedule = Schedule {
            kind: config.schedule,
            warmup_steps: config.warmup_steps,
            total_steps,
            min_lr_ratio: config.min_lr_ratio,
            stage2_lr_scale: config.stage2_lr_scale,
        };
        Ok(Self {
            schedule,
            decay: DecayMap::from_layout(layout),
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
            workers: Workers::new(ctx.effective_threads())?,
            partials: Vec::new(),
            config,
        })
    }

    /// The resolved schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }
}

impl Optimizer for AdamW {
    fn step(
        &mut self,
        params: &mut [f32],
        update: &[f32],
        info: StepInfo,
    ) -> Result<StepReport, OptimError> {
        let n = self.m.len();
        arena::check_sizes(n, params, update)?;
        let norm = arena::sum_squares(&self.workers, update, &mut self.partials).sqrt();
        let (lr_factor, wd_factor) = self.schedule.factors(info.step);
        let lr = self.config.lr * lr_factor * info.lr_scale;
        if !norm.is_finite() || !lr.is_finite() {
            return Err(OptimError::NonFinite);
        }
        let clip = f64::from(self.config.clip_norm);
        let grad_scale = if clip > 0.0 && norm > clip { (clip / norm) as f32 } else { 1.0 };
        let t = self.t + 1;
        let bc1 = 1.0 - f64::from(self.config.beta1).powf(t as f64);
        let bc2 = 1.0 - f64::from(self.config.beta2).powf(t as f64);
        let c = Coeffs {
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            one_minus_beta1: 1.0 - self.config.beta1,
            one_minus_beta2: 1.0 - self.config.beta2,
            step_size: (f64::from(lr) / bc1) as f32,
            inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32,
            eps: self.config.eps,
            keep: 1.0 - lr * self.config.weight_decay * wd_factor,
            grad_scale,
        };
        let decay = &self.decay;
        let body = |(i, (((p, m), v), g)): AdamItem<'_>| {
            for (r, decays) in decay.runs_in(i * CHUNK, p.len()) {
                let keep = if decays { c.keep } else { 1.0 };
                adamw_run(&mut p[r.clone()], &mut m[r.clone()], &mut v[r.clone()], &g[r], &c, keep);
            }
        };
        let (m, v) = (&mut self.m, &mut self.v);
        match self.workers.pool_for(n) {
            Some(pool) => pool.install(|| {
                params
                    .par_chunks_mut(CHUNK)
                    .zip(m.par_chunks_mut(CHUNK))
                    .zip(v.par_chunks_mut(CHUNK))
                    .zip(update.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(body)
            }),
            None => params
                .chunks_mut(CHUNK)
                .zip(m.chunks_mut(CHUNK))
                .zip(v.chunks_mut(CHUNK))
                .zip(update.chunks(CHUNK))
                .enumerate()
                .for_each(body),
        }
        self.t = t;
        Ok(StepReport { lr, update_norm: norm as f32 })
    }

    fn save_state(&self) -> OptimizerState {
        OptimizerState {
            step: self.t,
            buffers: vec![("m".into(), self.m.clone()), ("v".into(), self.v.clone())],
        }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<(), OptimError> {
        let n = self.m.len();
        let mut m = None;
        let mut v = None;
        for (name, buf) in state.buffers {
            if buf.len() != n {
                return Err(OptimError::InvalidState(format!(
                    "buffer `{name}` has {} values, the arena has {n}",
                    buf.len()
                )));
            }
            match name.as_str() {
                "m" if m.is_none() => m = Some(buf),
                "v" if v.is_none() => v = Some(buf),
                _ => {
                    return Err(OptimError::InvalidState(format!(
                        "unexpected or repeated buffer `{name}` (adamw keeps `m` and `v`)"
                    )));
                }
            }
        }
        match (m, v) {
            (Some(m), Some(v)) => {
                self.m = m;
                self.v = v;
                self.t = state.step;
                Ok(())
            }
            _ => Err(OptimError::InvalidState("adamw state needs buffers `m` and `v`".into())),
        }
    }
}

/// One run of elements that share a weight-decay factor.
fn adamw_run(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: &Coeffs, keep: f32) {
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx512) {
        // SAFETY: `allows` checked the CPU supports AVX-512 F/BW/VL.
        return unsafe { adamw_run_avx512(p, m, v, g, c, keep) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx2) {
        // SAFETY: `allows` checked the CPU supports AVX2 and FMA.
        return unsafe { adamw_run_avx2(p, m, v, g, c, keep) };
    }
    adamw_run_portable(p, m, v, g, c, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn adamw_run_avx2(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    c: &Coeffs,
    keep: f32,
) {
    adamw_run_portable(p, m, v, g, c, keep)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adamw_run_avx512(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    c: &Coeffs,
    keep: f32,
) {
    adamw_run_portable(p, m, v, g, c, keep)
}

/// The element update, in torch's order: decay, moments, then the bias-corrected step.
#[inline(always)]
fn adamw_run_portable(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    c: &Coeffs,
    keep: f32,
) {
    let len = p.len().min(m.len()).min(v.len()).min(g.len());
    let (p, m, v, g) = (&mut p[..len], &mut m[..len], &mut v[..len], &g[..len]);
    for i in 0..len {
        let gi = g[i] * c.grad_scale;
        let mi = c.beta1 * m[i] + c.one_minus_beta1 * gi;
        let vi = c.beta2 * v[i] + c.one_minus_beta2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        let denom = vi.sqrt() * c.inv_sqrt_bc2 + c.eps;
        p[i] = p[i] * keep - c.step_size * mi / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::model::ModelConfig;
    use bitnet_framework::tensor::{ParamLayout, TensorRole, TensorSpec};

    fn layout(parts: &[(&str, usize, TensorRole)]) -> ParamLayout {
        ParamLayout::new(
            parts
                .iter()
                .map(|&(n, len, role)| TensorSpec { name: n.into(), shape: vec![len], role })
                .collect(),
        )
        .expect("layout")
    }

    fn ctx(layout: ParamLayout, threads: usize) -> BuildContext {
        BuildContext::new(ModelConfig::default())
            .with_layout(layout)
            .with_threads(threads)
            .with_total_steps(100)
    }

    fn info(step: u64) -> StepInfo {
        StepInfo { step, lr_scale: 1.0 }
    }

    fn constant(lr: f32) -> AdamWConfig {
        AdamWConfig {
            lr,
            warmup_steps: 0,
            schedule: ScheduleKind::Constant,
            clip_norm: 0.0,
            ..AdamWConfig::default()
        }
    }

    #[test]
    fn matches_a_hand_computation() {
        let l = layout(&[("w", 2, TensorRole::BitLinear), ("n", 1, TensorRole::Norm)]);
        let cfg = AdamWConfig { weight_decay: 0.1, ..constant(0.01) };
        let mut opt = AdamW::new(cfg, &ctx(l, 1)).expect("adamw");
        let mut p = vec![1.0f32, -2.0, 0.5];
        let grads = [[0.3f32, -0.1, 0.2], [-0.2, 0.4, 0.1]];
        let mut want = p.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        let (mut m, mut v) = (vec![0f64; 3], vec![0f64; 3]);
        for (t, g) in grads.iter().enumerate() {
            opt.step(&mut p, g, info(t as u64)).expect("step");
            let t = (t + 1) as i32;
            for i in 0..3 {
                let wd = if i < 2 { 0.1 } else { 0.0 };
                let gi = f64::from(g[i]);
                m[i] = 0.9 * m[i] + 0.1 * gi;
                v[i] = 0.95 * v[i] + 0.05 * gi * gi;
                let mhat = m[i] / (1.0 - 0.9f64.powi(t));
                let vhat = v[i] / (1.0 - 0.95f64.powi(t));
                want[i] = want[i] * (1.0 - 0.01 * wd) - 0.01 * mhat / (vhat.sqrt() + 1e-8);
            }
        }
        for i in 0..3 {
            assert!((f64::from(p[i]) - want[i]).abs() < 1e-6, "param {i}: {} vs {}", p[i], want[i]);
        }
    }

    #[test]
    fn weight_decay_only_on_matrices() {
        let l = layout(&[
            ("emb", 3, TensorRole::Embedding),
            ("norm", 3, TensorRole::Norm),
            ("w", 3, TensorRole::BitLinear),
            ("head", 3, TensorRole::Head),
        ]);
        let mut opt = AdamW::new(constant(0.1), &ctx(l, 1)).expect("adamw");
        let mut p = vec![2.0f32; 12];
        let report = opt.step(&mut p, &[0.0; 12], info(0)).expect("step");
        assert_eq!(report.update_norm, 0.0);
        let decayed = 2.0 * (1.0 - 0.1 * 0.1);
        for (i, &x) in p.iter().enumerate() {
            let want = if (3..6).contains(&i) { 2.0 } else { decayed };
            assert_eq!(x, want, "element {i}");
        }
    }

    #[test]
    fn weight_decay_stops_in_stage_two() {
        let l = layout(&[("w", 2, TensorRole::BitLinear)]);
        let cfg = AdamWConfig { warmup_steps: 0, clip_norm: 0.0, ..AdamWConfig::default() };
        let mut opt = AdamW::new(cfg, &ctx(l, 1)).expect("adamw");
        let mut p = vec![1.0f32; 2];
        opt.step(&mut p, &[0.0; 2], info(49)).expect("stage one");
        assert!(p[0] < 1.0);
        let before = p.clone();
        let r = opt.step(&mut p, &[0.0; 2], info(50)).expect("stage two");
        assert_eq!(p, before, "no decay in stage two");
        assert!(r.lr < 1.5e-3 * 0.5);
    }

    #[test]
    fn clipping_scales_the_gradient_to_the_norm() {
        let l = layout(&[("w", 4, TensorRole::BitLinear)]);
        // A large eps makes the step depend on the gradient's magnitude, so clipping shows.
        let base = AdamWConfig { eps: 1.0, weight_decay: 0.0, ..constant(0.1) };
        let g = [6.0f32, 0.0, -8.0, 0.0]; // norm 10
        let mut clipped =
            AdamW::new(AdamWConfig { clip_norm: 1.0, ..base.clone() }, &ctx(l.clone(), 1))
                .expect("adamw");
        let mut p1 = vec![0.0f32; 4];
        let r = clipped.step(&mut p1, &g, info(0)).expect("step");
        assert!((r.update_norm - 10.0).abs() < 1e-6, "report gives the norm before clipping");
        let mut plain = AdamW::new(base.clone(), &ctx(l.clone(), 1)).expect("adamw");
        let mut p2 = vec![0.0f32; 4];
        plain.step(&mut p2, &[0.6, 0.0, -0.8, 0.0], info(0)).expect("step");
        for (a, b) in p1.iter().zip(&p2) {
            assert!((a - b).abs() < 1e-7, "{p1:?} vs {p2:?}");
        }
        let mut unclipped = AdamW::new(base, &ctx(l, 1)).expect("adamw");
        let mut p3 = vec![0.0f32; 4];
        unclipped.step(&mut p3, &g, info(0)).expect("step");
        assert!((p3[0] - p1[0]).abs() > 1e-3, "clipping changed the step");
    }

    #[test]
    fn non_finite_update_is_refused_untouched() {
        let l = layout(&[("w", 3, TensorRole::BitLinear)]);
        let mut opt = AdamW::new(constant(0.1), &ctx(l, 1)).expect("adamw");
        let mut p = vec![1.0f32, 2.0, 3.0];
        opt.step(&mut p, &[0.1, 0.2, 0.3], info(0)).expect("step");
        let (p0, s0) = (p.clone(), opt.save_state());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = opt.step(&mut p, &[0.1, bad, 0.3], info(1)).expect_err("refused");
            assert!(matches!(err, OptimError::NonFinite));
            assert_eq!(p, p0);
            assert_eq!(opt.save_state(), s0);
        }
        assert!(matches!(opt.step(&mut p, &[0.0; 2], info(1)), Err(OptimError::Shape(_))));
    }

    #[test]
    fn state_round_trip_continues_identically() {
        let l = layout(&[("w", 5, TensorRole::BitLinear), ("n", 2, TensorRole::Norm)]);
        let c = ctx(l, 1);
        let grad = |s: u64| {
            (0..7).map(|i| ((i as f32 + 1.0) * (s as f32 + 0.5)).sin()).collect::<Vec<_>>()
        };
        let mut a = AdamW::new(AdamWConfig::default(), &c).expect("adamw");
        let mut pa = vec![0.5f32; 7];
        for s in 0..3 {
            a.step(&mut pa, &grad(s), info(s)).expect("step");
        }
        let mut b = AdamW::new(AdamWConfig::default(), &c).expect("adamw");
        b.load_state(a.save_state()).expect("load");
        let mut pb = pa.clone();
        for s in 3..6 {
            a.step(&mut pa, &grad(s), info(s)).expect("step");
            b.step(&mut pb, &grad(s), info(s)).expect("step");
        }
        assert_eq!(
            pa.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            pb.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let mut bad = a.save_state();
        bad.buffers[1].1.pop();
        assert!(matches!(b.load_state(bad), Err(OptimError::InvalidState(_))));
        let mut bad = a.save_state();
        bad.buffers[0].0 = "momentum".into();
        assert!(matches!(b.load_state(bad), Err(OptimError::InvalidState(_))));
    }

    #[test]
    fn threads_do_not_change_the_result() {
        let n = 5 * CHUNK + 123;
        let l = layout(&[
            ("emb", 2 * CHUNK + 7, TensorRole::Embedding),
            ("norm", 100, TensorRole::Norm),
            ("w", n - 2 * CHUNK - 107, TensorRole::BitLinear),
        ]);
        let g: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 1e-3).collect();
        let run = |threads| {
            let mut opt =
                AdamW::new(AdamWConfig::default(), &ctx(l.clone(), threads)).expect("adamw");
            let mut p: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.01).collect();
            for s in 0..3 {
                opt.step(&mut p, &g, info(s)).expect("step");
            }
            p
        };
        let (one, two) = (run(1), run(2));
        assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()));
    }

    #[test]
    fn portable_and_dispatched_loops_agree() {
        let c = Coeffs {
            beta1: 0.9,
            beta2: 0.95,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.05,
            step_size: 0.013,
            inv_sqrt_bc2: 1.7,
            eps: 1e-8,
            keep: 0.999,
            grad_scale: 0.7,
        };
        let g: Vec<f32> = (0..1001).map(|i| ((i * 31 % 101) as f32 - 50.0) * 0.01).collect();
        let init: Vec<f32> = (0..1001).map(|i| (i % 7) as f32 * 0.1).collect();
        let (mut p1, mut m1, mut v1) = (init.clone(), init.clone(), init.clone());
        let (mut p2, mut m2, mut v2) = (init.clone(), init.clone(), init.clone());
        adamw_run(&mut p1, &mut m1, &mut v1, &g, &c, c.keep);
        adamw_run_portable(&mut p2, &mut m2, &mut v2, &g, &c, c.keep);
        assert_eq!(p1, p2);
        assert_eq!((m1, v1), (m2.clone(), v2.clone()));
        // Every SIMD build this CPU runs, whatever the cap, bit for bit.
        #[cfg(target_arch = "x86_64")]
        for level in [IsaLevel::Avx2, IsaLevel::Avx512].into_iter().filter(|l| l.is_supported()) {
            let (mut p3, mut m3, mut v3) = (init.clone(), init.clone(), init.clone());
            // SAFETY: the CPU supports the level (checked by the filter above).
            unsafe {
                match level {
                    IsaLevel::Avx2 => adamw_run_avx2(&mut p3, &mut m3, &mut v3, &g, &c, c.keep),
                    _ => adamw_run_avx512(&mut p3, &mut m3, &mut v3, &g, &c, c.keep),
                }
            }
            assert_eq!((&p3, &m3, &v3), (&p2, &m2, &v2), "{level}");
        }
    }

    #[test]
    fn options_are_checked() {
        let l = layout(&[("w", 2, TensorRole::BitLinear)]);
        let bad = AdamWConfig { lr: -1.0, beta2: 1.0, ..AdamWConfig::default() };
        let err = AdamW::new(bad, &ctx(l, 1)).err().expect("refused");
        assert!(err.contains("lr") && err.contains("beta2"), "{err}");
        let no_layout = BuildContext::new(ModelConfig::default());
        assert!(AdamW::new(AdamWConfig::default(), &no_layout).is_err());
        let parsed: Result<AdamWConfig, _> =
            toml::from_str("lr = 0.01\nschedule = \"constant\"\nbetas = 1");
        assert!(parsed.is_err(), "unknown keys are refused");
        let parsed: AdamWConfig =
            toml::from_str("lr = 0.01\nschedule = \"two-stage\"").expect("valid options");
        assert_eq!(parsed.lr, 0.01);
    }
}
