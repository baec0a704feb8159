//! SwiGLU gating: `h = silu(gate) * up`, `silu(g) = g * sigmoid(g)`.

use crate::kernels::exp::{swiglu_backward_best, swiglu_forward_best};
use crate::kernels::quant::quantize_row_best;
use crate::layers::bitlinear::ActQuant;
use rayon::prelude::*;

const CHUNK: usize = 4096;

/// Forward: `h = silu(gate) * up`, elementwise (vectorised `exp`, see [`crate::kernels::exp`]).
pub(crate) fn swiglu_forward(h: &mut [f32], gate: &[f32], up: &[f32]) {
    h.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((h, g), u)| swiglu_forward_best(h, g, u));
}

/// [`swiglu_forward`] followed by `a.quantize(h)`, fused: each row of `h` (`a.cols` wide) is
/// quantized while it is still in L1.
pub(crate) fn swiglu_forward_quantize(h: &mut [f32], gate: &[f32], up: &[f32], a: &mut ActQuant) {
    let c = a.cols;
    if !a.raw.is_empty() || c == 0 {
        swiglu_forward(h, gate, up);
        a.quantize(h);
        return;
    }
    h.par_chunks_mut(c)
        .zip(gate.par_chunks(c).zip(up.par_chunks(c)))
        .zip(a.codes.par_chunks_mut(c).zip(a.scales.par_iter_mut()))
        .for_each(|((h, (g, u)), (q, s))| {
            swiglu_forward_best(h, g, u);
            *s = quantize_row_best(h, q);
        });
}

/// Backward in place: `gate` becomes `d gate` and `up` becomes `d up` (the forward inputs are
/// dead once their gradients exist, so the buffers are reused).
pub(crate) fn swiglu_backward_in_place(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    gate.par_chunks_mut(CHUNK)
        .zip(up.par_chunks_mut(CHUNK))
        .zip(dh.par_chunks(CHUNK))
        .for_each(|((g, u), dh)| swiglu_backward_best(g, u, dh));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

    /// The fused pass gives exactly the unfused one's output, codes and scales.
    #[test]
    fn fused_quantize_matches_the_two_passes() {
        use crate::layers::bitlinear::QuantMode;
        let (m, f) = (4, 37);
        let g = pseudo_random(m * f, 6, 4.0);
        let u = pseudo_random(m * f, 7, 1.0);
        for mode in [QuantMode::Ternary, QuantMode::Identity] {
            let mut h = vec![0.0; m * f];
            let mut want = ActQuant::new(m, f, mode);
            swiglu_forward(&mut h, &g, &u);
            want.quantize(&h);
            let mut h2 = vec![0.0; m * f];
            let mut got = ActQuant::new(m, f, mode);
            swiglu_forward_quantize(&mut h2, &g, &u, &mut got);
            assert_eq!(h, h2);
            assert_eq!((want.codes, want.scales, want.raw), (got.codes, got.scales, got.raw));
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let n = 17;
        let g = pseudo_random(n, 1, 3.0);
        let u = pseudo_random(n, 2, 1.0);
        let dh = pseudo_random(n, 3, 1.0);
        let loss = |g: &[f32], u: &[f32]| -> f64 {
            let mut h = vec![0.0; n];
            swiglu_forward(&mut h, g, u);
            h.iter().zip(&dh).map(|(a, b)| f64::from(a * b)).sum()
        };
        let (mut dg, mut du) = (g.clone(), u.clone());
        swiglu_backward_in_place(&mut dg, &mut du, &dh);
        assert_close(&dg, &numeric_grad(&g, |x| loss(x, &u)), 1e-3);
        assert_close(&du, &numeric_grad(&u, |x| loss(&g, x)), 1e-3);
    }
}
