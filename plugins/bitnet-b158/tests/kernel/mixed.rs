//! `precision = "mixed"` (int8 forward, SwitchBack int8 input gradients) against fp32.

use crate::common::{kernel_and_params, tiny_config, tokens};
use bitnet_b158::{BitNetKernel, HeadGrad, Precision, WeightGrad};
use bitnet_framework::model::{ModelConfig, ModelKernel, TokenBatch};

fn wider() -> ModelConfig {
    // Widths of a few panels, so the int8 kernels' blocking is exercised.
    ModelConfig {
        d_model: 64,
        ffn_hidden: 160,
        n_heads: 4,
        seq_len: 16,
        vocab_size: 50,
        ..tiny_config()
    }
}

fn norms(kernel: &dyn ModelKernel, g: &[f32]) -> Vec<(String, f64)> {
    kernel
        .layout()
        .iter()
        .map(|(s, r)| {
            (s.name.clone(), g[r].iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
        })
        .collect()
}

/// The backward products compared: everything on int8 (the default), everything on bf16,
/// and the int8 BitLinear weight gradient with the bf16 head.
const BACKWARDS: [(WeightGrad, HeadGrad); 3] = [
    (WeightGrad::Int8, HeadGrad::Int8),
    (WeightGrad::Bf16, HeadGrad::Bf16),
    (WeightGrad::Int8, HeadGrad::Bf16),
];

fn mixed_kernel(
    config: ModelConfig,
    (weight_grad, head_grad): (WeightGrad, HeadGrad),
    seed: u64,
) -> (BitNetKernel, Vec<f32>) {
    let (mut kernel, params) = kernel_and_params(config, Precision::Mixed, seed);
    kernel.set_weight_grad(weight_grad);
    kernel.set_head_grad(head_grad);
    (kernel, params)
}

#[test]
fn gradient_norms_within_2e_2_of_fp32() {
    let config = wider();
    let (mut fp32, params) = kernel_and_params(config.clone(), Precision::Fp32, 21);
    let (b, t) = (3, config.seq_len);
    let inputs = tokens(b * t, config.vocab_size, 4);
    let targets = tokens(b * t, config.vocab_size, 5);
    let batch = TokenBatch { inputs: &inputs, targets: &targets, batch: b, seq_len: t };
    let mut g32 = vec![0.0; params.len()];
    let l32 = fp32.forward_backward(&params, &batch, &mut g32).expect("fp32");
    let mut by_backward = Vec::new();
    for backward in BACKWARDS {
        let (mut mixed, _) = mixed_kernel(config.clone(), backward, 21);
        let mut gmx = vec![0.0; params.len()];
        let lmx = mixed.forward_backward(&params, &batch, &mut gmx).expect("mixed");
        // The int8 forward is the exact integer product; only the LM head's bf16 products move
        // the loss (by at most twice the largest logit error, ~1e-4 relative).
        assert!((l32 - lmx).abs() <= 1e-3 * l32.abs(), "loss {l32} vs {lmx}");
        assert_eq!(mixed.forward_loss(&params, &batch).expect("eval"), lmx);
        let mut worst = 0.0f64;
        for ((name, a), (_, b)) in norms(&fp32, &g32).into_iter().zip(norms(&mixed, &gmx)) {
            assert!((a - b).abs() <= 2e-2 * a, "{backward:?} {name}: fp32 {a} vs mixed {b}");
            worst = worst.max((a - b).abs() / a);
        }
        let dl = (l32 - lmx).abs() / l32.abs();
        eprintln!("{backward:?}: loss off by {dl:.2e}, worst gradient-norm deviation {worst:.2e}");
        by_backward.push(gmx);
    }
    // The int8 and bf16 backward products differ only in the rounding of their operands: each
    // gradient tensor within 2e-2 of the other's norm, element by element.
    let (g8, g16) = (&by_backward[0], &by_backward[1]);
    let (probe, _) = mixed_kernel(config, BACKWARDS[0], 21);
    let mut differs = false;
    for (spec, range) in probe.layout().iter() {
        let (a, b) = (&g8[range.clone()], &g16[range]);
        let diff = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>().sqrt();
        let norm = b.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(
            diff <= 2e-2 * norm,
            "{}: int8 and bf16 backward differ by {diff} (norm {norm})",
            spec.name
        );
        differs |= diff > 0.0;
    }
    assert!(differs, "the int8 backward products were not used");
}

#[test]
fn loss_curve_tracks_fp32() {
    let config = wider();
    let (b, t) = (4, config.seq_len);
    let seq = |row: usize, i: usize| ((row * 5 + i * 3) % 11) as u32;
    let inputs: Vec<u32> = (0..b * t).map(|p| seq(p / t, p % t)).collect();
    let targets: Vec<u32> = (0..b * t).map(|p| seq(p / t, p % t + 1)).collect();
    let batch = TokenBatch { inputs: &inputs, targets: &targets, batch: b, seq_len: t };
    let mut curves = Vec::new();
    let runs = [
        (Precision::Fp32, BACKWARDS[0]),
        (Precision::Mixed, BACKWARDS[0]),
        (Precision::Mixed, BACKWARDS[1]),
    ];
    for (precision, (weight_grad, head_grad)) in runs {
        let (mut kernel, mut params) = kernel_and_params(config.clone(), precision, 8);
        kernel.set_weight_grad(weight_grad);
        kernel.set_head_grad(head_grad);
        let mut grads = vec![0.0; params.len()];
        let mut mom = vec![0.0f32; params.len()];
        let mut curve = Vec::new();
        for _ in 0..40 {
            curve.push(kernel.forward_backward(&params, &batch, &mut grads).expect("step"));
            // Sign-momentum SGD: scale-free, so both precisions take comparable steps.
            for ((p, m), g) in params.iter_mut().zip(&mut mom).zip(&grads) {
                *m = 0.9 * *m + 0.1 * g;
                *p -= 3e-3 * m.signum();
            }
        }
        curves.push(curve);
    }
    let c32 = &curves[0];
    assert!(c32[39] < 0.5 * c32[0], "fp32 did not learn: {c32:?}");
    for (cmx, (_, backward)) in curves[1..].iter().zip(&runs[1..]) {
        for (i, (a, b)) in c32.iter().zip(cmx).enumerate() {
            assert!(
                (a - b).abs() <= 0.1 * a.max(0.2),
                "{backward:?} step {i}: fp32 {a} vs mixed {b}\n{c32:?}\n{cmx:?}"
            );
        }
    }
}
