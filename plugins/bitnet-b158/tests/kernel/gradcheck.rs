//! Finite-difference check of the whole model's gradient, with both BitLinear quantizers set to
//! the identity (they are piecewise constant, so finite differences through them say nothing).

use crate::common::{kernel_and_params, tiny_config, tokens};
use bitnet_b158::{Precision, QuantMode};
use bitnet_framework::model::{IGNORE_INDEX, ModelKernel, TokenBatch};

#[test]
fn whole_model_gradient_matches_finite_differences() {
    let config = tiny_config();
    let (mut kernel, mut params) = kernel_and_params(config.clone(), Precision::Fp32, 3);
    kernel.set_quant_mode(QuantMode::Identity);
    // Norm gains away from 1, so their gradients are generic.
    let layout = kernel.layout().clone();
    for (i, (spec, range)) in layout.iter().enumerate() {
        if spec.role == bitnet_framework::tensor::TensorRole::Norm {
            for (j, v) in params[range].iter_mut().enumerate() {
                *v = 1.0 + 0.05 * ((i * 7 + j * 3) % 11) as f32 - 0.25;
            }
        }
    }
    let (b, t) = (2, 6);
    let inputs = tokens(b * t, config.vocab_size, 1);
    let mut targets = tokens(b * t, config.vocab_size, 2);
    targets[3] = IGNORE_INDEX;
    let batch = TokenBatch { inputs: &inputs, targets: &targets, batch: b, seq_len: t };
    let mut grads = vec![0.0; params.len()];
    kernel.forward_backward(&params, &batch, &mut grads).expect("forward_backward");

    let h = 1e-2f32;
    let mut checked = 0;
    for (ti, (spec, range)) in layout.iter().enumerate() {
        let n = range.len();
        for s in 0..5 {
            let i = range.start + (s * 7919 + ti * 31) % n;
            let orig = params[i];
            params[i] = orig + h;
            let lp = f64::from(kernel.forward_loss(&params, &batch).expect("loss"));
            params[i] = orig - h;
            let lm = f64::from(kernel.forward_loss(&params, &batch).expect("loss"));
            params[i] = orig;
            let fd = ((lp - lm) / (2.0 * f64::from(h))) as f32;
            let g = grads[i];
            assert!(
                (g - fd).abs() <= 2e-4 + 2e-2 * fd.abs(),
                "{} index {}: analytic {g}, finite difference {fd}",
                spec.name,
                i - range.start
            );
            checked += 1;
        }
    }
    assert!(checked >= 5 * layout.tensors().len());
}
