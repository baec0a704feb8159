//! SGD with momentum or Nesterov momentum: DiLoCo's outer optimizer.

use crate::arena::{self, CHUNK, DecayMap, Workers};
use bitnet_framework::BuildContext;
use bitnet_framework::isa::{self, IsaLevel};
use bitnet_framework::optim::{OptimError, Optimizer, OptimizerState, StepInfo, StepReport};
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Options of the `"sgd"` optimizer. The defaults are DiLoCo's outer optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SgdConfig {
    /// Learning rate (times the caller's `lr_scale`).
    pub lr: f32,
    /// Momentum factor (0 = plain SGD).
    pub momentum: f32,
    /// Nesterov momentum: step along `g + momentum * buf` instead of `buf`.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient (`g + weight_decay * p`, as torch's SGD), on
    /// matrices only.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self { lr: 0.7, momentum: 0.9, nesterov: true, weight_decay: 0.0 }
    }
}

impl SgdConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.lr.is_finite() && self.lr > 0.0) {
            problems.push(format!("lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            problems.push(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            problems
                .push(format!("weight_decay must be zero or positive, got {}", self.weight_decay));
        }
        problems
    }
}

impl PluginConfig for SgdConfig {
    type Component = dyn Optimizer;

    fn validate(&self, _ctx: &BuildContext) -> Vec<String> {
        self.problems()
    }

    fn build(self, ctx: &BuildContext) -> Result<Box<dyn Optimizer>, BuildError> {
        arena::check_isa_env().map_err(|m| BuildError::failed(Slot::Optimizer, "sgd", m))?;
        Sgd::new(self, ctx)
            .map(|o| Box::new(o) as Box<dyn Optimizer>)
            .map_err(|m| BuildError::failed(Slot::Optimizer, "sgd", m))
    }
}

/// Momentum SGD over one arena.
pub struct Sgd {
    config: SgdConfig,
    decay: DecayMap,
    /// Momentum buffer.
    buf: Vec<f32>,
    t: u64,
    workers: Workers,
    partials: Vec<f64>,
}

impl Sgd {
    /// Builds the optimizer for the context's layout.
    pub fn new(config: SgdConfig, ctx: &BuildContext) -> Result<Self, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let layout = ctx.require_layout()?;
        Ok(Self {
            decay: DecayMap::from_layout(layout),
            buf: vec![0.0; layout.total_params()],
            t: 0,
            workers: Workers::new(ctx.effective_threads())?,
            partials: Vec::new(),
            config,
        })
    }
}

impl Optimizer for Sgd {
    fn step(
        &mut self,
        params: &mut [f32],
        update: &[f32],
        info: StepInfo,
    ) -> Result<StepReport, OptimError> {
        let n = self.buf.len();
        arena::check_sizes(n, params, update)?;
        let norm = arena::sum_squares(&self.workers, update, &mut self.partials).sqrt();
        let lr = self.config.lr * info.lr_scale;
        if !norm.is_finite() || !lr.is_finite() {
            return Err(OptimError::NonFinite);
        }
        let k = Coeffs {
            lr,
            momentum: self.config.momentum,
            nesterov: self.config.nesterov,
            weight_decay: self.config.weight_decay,
        };
        let decay = &self.decay;
        let body = |(i, ((p, b), g)): SgdItem<'_>| {
            for (r, decays) in decay.runs_in(i * CHUNK, p.len()) {
                let wd = if decays { k.weight_decay } else { 0.0 };
                sgd_run(&mut p[r.clone()], &mut b[r.clone()], &g[r], &k, wd);
            }
        };
        let buf = &mut self.buf;
        match self.workers.pool_for(n) {
            Some(pool) => pool.install(|| {
                params
                    .par_chunks_mut(CHUNK)
                    .zip(buf.par_chunks_mut(CHUNK))
                    .zip(update.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(body)
            }),
            None => params
                .chunks_mut(CHUNK)
                .zip(buf.chunks_mut(CHUNK))
                .zip(update.chunks(CHUNK))
                .enumerate()
                .for_each(body),
        }
        self.t += 1;
        Ok(StepReport { lr, update_norm: norm as f32 })
    }

    fn save_state(&self) -> OptimizerState {
        OptimizerState { step: self.t, buffers: vec![("momentum".into(), self.buf.clone())] }
    }

    fn load_state(&mut self, state: OptimizerState) -> Result<(), OptimError> {
        let n = self.buf.len();
        let mut buffers = state.buffers.into_iter();
        match (buffers.next(), buffers.next()) {
            (Some((name, buf)), None) if name == "momentum" && buf.len() == n => {
                self.buf = buf;
                self.t = state.step;
                Ok(())
            }
            (Some((name, buf)), None) if name == "momentum" => Err(OptimError::InvalidState(
                format!("buffer `momentum` has {} values, the arena has {n}", buf.len()),
            )),
            _ => Err(OptimError::InvalidState(
                "sgd state needs exactly one buffer, `momentum`".into(),
            )),
        }
    }
}

/// One chunk of the arena as the zipped iterators hand it out: index, params, momentum, grad.
type SgdItem<'a> = (usize, ((&'a mut [f32], &'a mut [f32]), &'a [f32]));

#[derive(Clone, Copy)]
struct Coeffs {
    lr: f32,
    momentum: f32,
    nesterov: bool,
    weight_decay: f32,
}

fn sgd_run(p: &mut [f32], b: &mut [f32], g: &[f32], k: &Coeffs, wd: f32) {
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx512) {
        // SAFETY: `allows` checked the CPU supports AVX-512 F/BW/VL.
        return unsafe { sgd_run_avx512(p, b, g, k, wd) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx2) {
        // SAFETY: `allows` checked the CPU supports AVX2 and FMA.
        return unsafe { sgd_run_avx2(p, b, g, k, wd) };
    }
    sgd_run_portable(p, b, g, k, wd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sgd_run_avx2(p: &mut [f32], b: &mut [f32], g: &[f32], k: &Coeffs, wd: f32) {
    sgd_run_portable(p, b, g, k, wd)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sgd_run_avx512(p: &mut [f32], b: &mut [f32], g: &[f32], k: &Coeffs, wd: f32) {
    sgd_run_portable(p, b, g, k, wd)
}

/// torch's SGD without dampening: `g' = g + wd p; b = momentum b + g'; p -= lr (nesterov ?
/// g' + momentum b : b)`.
#[inline(always)]
fn sgd_run_portable(p: &mut [f32], b: &mut [f32], g: &[f32], k: &Coeffs, wd: f32) {
    let len = p.len().min(b.len()).min(g.len());
    let (p, b, g) = (&mut p[..len], &mut b[..len], &g[..len]);
    if k.nesterov {
        for i in 0..len {
            let gi = if wd != 0.0 { g[i] + wd * p[i] } else { g[i] };
            let bi = k.momentum * b[i] + gi;
            b[i] = bi;
            p[i] -= k.lr * (gi + k.momentum * bi);
        }
    } else {
        for i in 0..len {
            let gi = if wd != 0.0 { g[i] + wd * p[i] } else { g[i] };
            let bi = k.momentum * b[i] + gi;
            b[i] = bi;
            p[i] -= k.lr * bi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::model::ModelConfig;
    use bitnet_framework::tensor::{ParamLayout, TensorRole, TensorSpec};

    fn ctx(parts: &[(&str, usize, TensorRole)]) -> BuildContext {
        let layout = ParamLayout::new(
            parts
                .iter()
                .map(|&(n, len, role)| TensorSpec { name: n.into(), shape: vec![len], role })
                .collect(),
        )
        .expect("layout");
        BuildContext::new(ModelConfig::default()).with_layout(layout).with_threads(1)
    }

    fn info(step: u64, lr_scale: f32) -> StepInfo {
        StepInfo { step, lr_scale }
    }

    #[test]
    fn every_simd_build_matches_the_portable_loop() {
        let g: Vec<f32> = (0..1001).map(|i| ((i * 31 % 101) as f32 - 50.0) * 0.01).collect();
        let init: Vec<f32> = (0..1001).map(|i| (i % 7) as f32 * 0.1).collect();
        for nesterov in [false, true] {
            let k = Coeffs { lr: 0.3, momentum: 0.9, nesterov, weight_decay: 0.01 };
            let (mut p0, mut b0) = (init.clone(), init.clone());
            sgd_run_portable(&mut p0, &mut b0, &g, &k, 0.01);
            let (mut p1, mut b1) = (init.clone(), init.clone());
            sgd_run(&mut p1, &mut b1, &g, &k, 0.01);
            assert_eq!((&p1, &b1), (&p0, &b0));
            #[cfg(target_arch = "x86_64")]
            for level in [IsaLevel::Avx2, IsaLevel::Avx512].into_iter().filter(|l| l.is_supported())
            {
                let (mut p2, mut b2) = (init.clone(), init.clone());
                // SAFETY: the CPU supports the level (checked by the filter above).
                unsafe {
                    match level {
                        IsaLevel::Avx2 => sgd_run_avx2(&mut p2, &mut b2, &g, &k, 0.01),
                        _ => sgd_run_avx512(&mut p2, &mut b2, &g, &k, 0.01),
                    }
                }
                assert_eq!((&p2, &b2), (&p0, &b0), "{level}");
            }
        }
    }

    #[test]
    fn nesterov_matches_a_hand_computation() {
        // lr 0.5, momentum 0.9, Nesterov, one parameter starting at 1.0:
        // step 1: g = 1.0: b = 1.0,  d = 1.0 + 0.9 * 1.0  = 1.9,  p = 1.0 - 0.95  = 0.05
        // step 2: g = 2.0: b = 2.9,  d = 2.0 + 0.9 * 2.9  = 4.61, p = 0.05 - 2.305 = -2.255
        // step 3: g = -1.0 at lr_scale 0.5 (lr 0.25): b = 1.61, d = -1 + 1.449 = 0.449,
        //         p = -2.255 - 0.11225 = -2.36725
        let cfg = SgdConfig { lr: 0.5, momentum: 0.9, nesterov: true, weight_decay: 0.0 };
        let mut opt = Sgd::new(cfg, &ctx(&[("w", 1, TensorRole::BitLinear)])).expect("sgd");
        let mut p = vec![1.0f32];
        opt.step(&mut p, &[1.0], info(0, 1.0)).expect("step");
        assert!((p[0] - 0.05).abs() < 1e-6, "{}", p[0]);
        opt.step(&mut p, &[2.0], info(1, 1.0)).expect("step");
        assert!((p[0] - -2.255).abs() < 1e-6, "{}", p[0]);
        let r = opt.step(&mut p, &[-1.0], info(2, 0.5)).expect("step");
        assert!((p[0] - -2.36725).abs() < 1e-5, "{}", p[0]);
        assert_eq!(r.lr, 0.25);
        assert!((opt.save_state().buffers[0].1[0] - 1.61).abs() < 1e-6);
    }

    #[test]
    fn plain_momentum_and_decay_on_matrices_only() {
        // Classic momentum: step 1: b = g = 1, p = 1 - 0.1 = 0.9; step 2: b = 0.5 + 1 = 1.5,
        // p = 0.9 - 0.15 = 0.75. The matrix also gets g + 0.5 p.
        let cfg = SgdConfig { lr: 0.1, momentum: 0.5, nesterov: false, weight_decay: 0.5 };
        let c = ctx(&[("n", 1, TensorRole::Norm), ("w", 1, TensorRole::BitLinear)]);
        let mut opt = Sgd::new(cfg, &c).expect("sgd");
        let mut p = vec![1.0f32, 1.0];
        opt.step(&mut p, &[1.0, 1.0], info(0, 1.0)).expect("step");
        opt.step(&mut p, &[1.0, 1.0], info(1, 1.0)).expect("step");
        assert!((p[0] - 0.75).abs() < 1e-6, "norm gain: {}", p[0]);
        // Matrix: g1 = 1 + 0.5 = 1.5, b = 1.5, p = 0.85; g2 = 1 + 0.425 = 1.425,
        // b = 0.75 + 1.425 = 2.175, p = 0.85 - 0.2175 = 0.6325.
        assert!((p[1] - 0.6325).abs() < 1e-6, "matrix: {}", p[1]);
    }

    #[test]
    fn non_finite_refused_and_state_round_trips() {
        let c = ctx(&[("w", 3, TensorRole::BitLinear)]);
        let mut a = Sgd::new(SgdConfig::default(), &c).expect("sgd");
        let mut p = vec![1.0f32, 2.0, 3.0];
        a.step(&mut p, &[0.1, 0.2, 0.3], info(0, 1.0)).expect("step");
        let (p0, s0) = (p.clone(), a.save_state());
        assert!(matches!(
            a.step(&mut p, &[0.1, f32::NAN, 0.3], info(1, 1.0)),
            Err(OptimError::NonFinite)
        ));
        assert_eq!((p.clone(), a.save_state()), (p0, s0.clone()));
        let mut b = Sgd::new(SgdConfig::default(), &c).expect("sgd");
        b.load_state(s0).expect("load");
        let mut pb = p.clone();
        a.step(&mut p, &[0.3, -0.2, 0.1], info(1, 1.0)).expect("step");
        b.step(&mut pb, &[0.3, -0.2, 0.1], info(1, 1.0)).expect("step");
        assert_eq!(p, pb);
        let wrong = OptimizerState { step: 1, buffers: vec![("m".into(), vec![0.0; 3])] };
        assert!(matches!(b.load_state(wrong), Err(OptimError::InvalidState(_))));
    }
}
