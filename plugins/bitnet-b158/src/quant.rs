//! BitNet b1.58 quantizers, exactly as the PyTorch reference computes them.
//!
//! - Activations, per token (row): `s = 127 / max(max|x|, 1e-5)`,
//!   `x_q = clamp(round_half_even(x * s), -128, 127)`; the dequantized value is `x_q / s`.
//! - Weights, per tensor: `g = mean|W|`, `W_q = clamp(round_half_even(W / (g + 1e-5)), -1, 1)`;
//!   the dequantized value is `W_q * g`.
//!
//! Both are piecewise constant; the backward pass uses the straight-through estimator (the
//! gradient flows as if both were the identity), so nothing here has a backward.

/// Floor of the activation absmax (avoids dividing by zero on an all-zero row).
pub const ACT_ABSMAX_FLOOR: f32 = 1e-5;
/// Added to the weight absmean before dividing.
pub const WEIGHT_EPS: f32 = 1e-5;

pub use bitnet_framework::weights::ternary::{
    round_half_even_small, round_half_even_small_i32, trit,
};

/// Quantizes one row of activations to int8; returns the scale `s` (`x ~ x_q / s`).
pub fn quantize_activation_row(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = 127.0f32 / absmax.max(ACT_ABSMAX_FLOOR);
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = round_half_even_small((xi * s).clamp(-128.0, 127.0)) as i8;
    }
    s
}

/// The per-tensor absmean `g = mean|W|` (summed in f64, so it is the correctly rounded mean).
pub fn weight_absmean(w: &[f32]) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    (w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64) as f32
}

/// Quantizes a weight tensor to ternary values in `{-1, 0, 1}`; returns `g` (`W ~ W_q * g`).
pub fn quantize_weights(w: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(w.len(), q.len());
    let g = weight_absmean(w);
    let div = g + WEIGHT_EPS;
    for (qi, &wi) in q.iter_mut().zip(w) {
        *qi = trit(wi / div);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_rounds_half_to_even_and_clamps() {
        // absmax 127 gives s = 1, so x*s is x itself.
        let x = [0.5, 1.5, 2.5, -0.5, -1.5, 127.0, -127.0, 3.49];
        let mut q = [0i8; 8];
        let s = quantize_activation_row(&x, &mut q);
        assert_eq!(s, 1.0);
        assert_eq!(q, [0, 2, 2, 0, -2, 127, -127, 3]);
    }

    #[test]
    fn fast_rounding_matches_round_ties_even() {
        let mut v = -130.0f32;
        while v <= 130.0 {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
            v += 0.125;
        }
        for v in [0.49999997f32, -0.49999997, 2.5000002, 1e6 + 0.5] {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }

    #[test]
    fn zero_row_uses_the_floor() {
        let mut q = [1i8; 3];
        let s = quantize_activation_row(&[0.0; 3], &mut q);
        assert_eq!(s, 127.0 / ACT_ABSMAX_FLOOR);
        assert_eq!(q, [0; 3]);
    }

    #[test]
    fn weights_are_ternary_with_absmean_scale() {
        let w = [0.1, -0.2, 0.3, -0.4, 0.0, 0.05];
        let mut q = [0i8; 6];
        let g = quantize_weights(&w, &mut q);
        assert!((g - 0.175).abs() < 1e-7);
        // w / (g + 1e-5): 0.571, -1.14, 1.71, -2.28, 0, 0.286
        assert_eq!(q, [1, -1, 1, -1, 0, 0]);
    }
}
