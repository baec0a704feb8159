//! Learning really happens: a tiny ternary model trained with Adam (written here, so this test
//! depends on no optimizer plugin) drives the loss near zero on a repetitive sequence.

use crate::common::{kernel_and_params, tiny_config};
use bitnet_b158::Precision;
use bitnet_framework::model::{ModelKernel, TokenBatch};

#[test]
fn loss_goes_near_zero_on_a_repetitive_sequence() {
    let mut config = tiny_config();
    config.d_model = 32;
    config.ffn_hidden = 64;
    config.seq_len = 16;
    let (mut kernel, mut params) = kernel_and_params(config.clone(), Precision::Fp32, 11);
    // The cycle 0 1 2 ... 7 0 1 ..., each row starting at another phase.
    let (b, t, period) = (4usize, 16usize, 8u32);
    let seq = |row: usize, i: usize| ((row * 3 + i) as u32) % period;
    let inputs: Vec<u32> = (0..b * t).map(|p| seq(p / t, p % t)).collect();
    let targets: Vec<u32> = (0..b * t).map(|p| seq(p / t, p % t + 1)).collect();
    let batch = TokenBatch { inputs: &inputs, targets: &targets, batch: b, seq_len: t };
    let mut grads = vec![0.0; params.len()];
    let (mut m, mut v) = (vec![0.0f32; params.len()], vec![0.0f32; params.len()]);
    let (lr, b1, b2, eps) = (1e-2f32, 0.9f32, 0.95f32, 1e-8f32);
    let first = kernel.forward_loss(&params, &batch).expect("loss");
    let mut last = first;
    for step in 1..=150 {
        last = kernel.forward_backward(&params, &batch, &mut grads).expect("step");
        let (c1, c2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        for i in 0..params.len() {
            m[i] = b1 * m[i] + (1.0 - b1) * grads[i];
            v[i] = b2 * v[i] + (1.0 - b2) * grads[i] * grads[i];
            params[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
        }
    }
    let end = kernel.forward_loss(&params, &batch).expect("loss");
    assert!(first > 2.5, "initial loss {first} should be near ln(23)");
    assert!(end < 0.1, "loss went from {first} to {end} (last training loss {last})");
}
