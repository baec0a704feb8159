//! SwiGLU gating: `h = silu(gate) * up`, `silu(g) = g * sigmoid(g)`.

use rayon::prelude::*;

const CHUNK: usize = 4096;

#[inline]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Forward: `h = silu(gate) * up`, elementwise.
pub(crate) fn swiglu_forward(h: &mut [f32], gate: &[f32], up: &[f32]) {
    h.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(
        |((h, g), u)| {
            for ((hi, &gi), &ui) in h.iter_mut().zip(g).zip(u) {
                *hi = gi * sigmoid(gi) * ui;
            }
        },
    );
}

/// Backward in place: `gate` becomes `d gate` and `up` becomes `d up` (the forward inputs are
/// dead once their gradients exist, so the buffers are reused).
pub(crate) fn swiglu_backward_in_place(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    gate.par_chunks_mut(CHUNK).zip(up.par_chunks_mut(CHUNK)).zip(dh.par_chunks(CHUNK)).for_each(
        |((g, u), dh)| {
            for ((gi, ui), &d) in g.iter_mut().zip(u.iter_mut()).zip(dh) {
                let (gv, uv) = (*gi, *ui);
                let s = sigmoid(gv);
                let silu = gv * s;
                *gi = d * uv * s * (1.0 + gv * (1.0 - s));
                *ui = d * silu;
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

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
