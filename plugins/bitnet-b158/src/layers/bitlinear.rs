//! BitLinear: `y = Q_a(x) . Q_w(W)^T` with the absmax int8 activation quantizer `Q_a` and the
//! absmean ternary weight quantizer `Q_w`, and the straight-through estimator in backward:
//! `dX = dY . Q_w(W)` and `dW = dY^T . Q_a(X)` (the quantizers' own derivatives, zero almost
//! everywhere, are replaced by the identity).
//!
//! The quantized input is kept as int8 codes plus one scale per row (a quarter of the memory of
//! fp32); the ternary weights are recomputed from the latent weights when needed (a pass over
//! `N*K` values, negligible next to the `M*N*K` product).

use crate::kernels::quant::quantize_row_best;
use crate::kernels::weight_pack::absmean_chunked;
use crate::matmul::{Threads, matmul_ab, matmul_abt, matmul_atb};
use crate::quant::{WEIGHT_EPS, trit};
use rayon::prelude::*;

/// Whether BitLinear layers quantize (training and inference) or use the identity in place of
/// both quantizers (finite-difference gradient checks only: the quantizers are piecewise
/// constant, so their true derivative is useless for such a check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuantMode {
    /// The BitNet b1.58 quantizers.
    #[default]
    Ternary,
    /// Both quantizers replaced by the identity.
    Identity,
}

/// A saved BitLinear input: int8 codes and per-row scales, or the raw input in identity mode.
#[derive(Debug, Default)]
pub(crate) struct ActQuant {
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub raw: Vec<f32>,
    pub cols: usize,
}

impl ActQuant {
    /// Storage for `rows x cols` inputs under `mode`.
    pub(crate) fn new(rows: usize, cols: usize, mode: QuantMode) -> Self {
        match mode {
            QuantMode::Ternary => {
                Self { codes: vec![0; rows * cols], scales: vec![0.0; rows], raw: Vec::new(), cols }
            }
            QuantMode::Identity => {
                Self { codes: Vec::new(), scales: Vec::new(), raw: vec![0.0; rows * cols], cols }
            }
        }
    }

    /// Quantizes `x` (`[rows, cols]`) into this buffer.
    pub(crate) fn quantize(&mut self, x: &[f32]) {
        if !self.raw.is_empty() {
            self.raw.copy_from_slice(x);
            return;
        }
        let c = self.cols;
        self.codes.par_chunks_mut(c).zip(self.scales.par_iter_mut()).zip(x.par_chunks(c)).for_each(
            |((q, s), xr)| {
                *s = quantize_row_best(xr, q);
            },
        );
    }

    /// Writes the dequantized input `x_q / s` (or the raw input) into `out`.
    pub(crate) fn dequantize_into(&self, out: &mut [f32]) {
        if !self.raw.is_empty() {
            out.copy_from_slice(&self.raw);
            return;
        }
        let c = self.cols;
        out.par_chunks_mut(c).zip(self.codes.par_chunks(c)).zip(self.scales.par_iter()).for_each(
            |((o, q), &s)| {
                for (oi, &qi) in o.iter_mut().zip(q) {
                    *oi = f32::from(qi) / s;
                }
            },
        );
    }
}

const SUM_CHUNK: usize = 1 << 14;

/// `mean|W|`, summed in f64 over fixed chunks so the result does not depend on the thread count
/// (the kernel shared with the fused quantize-and-pack, so both paths get the same `g`).
pub(crate) fn absmean_parallel(w: &[f32]) -> f32 {
    absmean_chunked(w)
}

/// Writes the dequantized ternary weights `Q_w(W) = clamp(round(W / (g + 1e-5)), -1, 1) * g`
/// (or `W` itself in identity mode) into `out`; returns `g` (1 in identity mode).
pub(crate) fn ternary_weights_into(out: &mut [f32], w: &[f32], mode: QuantMode) -> f32 {
    if mode == QuantMode::Identity {
        out.copy_from_slice(w);
        return 1.0;
    }
    let g = absmean_parallel(w);
    let div = g + WEIGHT_EPS;
    out.par_chunks_mut(SUM_CHUNK).zip(w.par_chunks(SUM_CHUNK)).for_each(|(o, w)| {
        for (oi, &wi) in o.iter_mut().zip(w) {
            *oi = f32::from(trit(wi / div)) * g;
        }
    });
    g
}

/// Forward with fp32 products on dequantized operands: `y[m, n] = x_deq[m, k] . w_deq[n, k]^T`.
pub(crate) fn bitlinear_forward(
    y: &mut [f32],
    x_deq: &[f32],
    w_deq: &[f32],
    dims: (usize, usize, usize),
    threads: Threads,
) {
    matmul_abt(y, x_deq, w_deq, dims, false, threads);
}

/// Straight-through backward: `dx (+)= dy . w_deq`, `dw = dy^T . x_deq`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bitlinear_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x_deq: &[f32],
    w_deq: &[f32],
    (m, n, k): (usize, usize, usize),
    accumulate_dx: bool,
    threads: Threads,
) {
    matmul_ab(dx, dy, w_deq, (m, k, n), accumulate_dx, threads);
    matmul_atb(dw, dy, x_deq, (n, k, m), false, threads);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_weights;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

    const T1: Threads = Threads(1);

    #[test]
    fn forward_is_the_integer_product_rescaled() {
        let (m, n, k) = (3, 4, 16);
        let x = pseudo_random(m * k, 1, 2.0);
        let w = pseudo_random(n * k, 2, 0.05);
        let mut a = ActQuant::new(m, k, QuantMode::Ternary);
        a.quantize(&x);
        let mut xd = vec![0.0; m * k];
        a.dequantize_into(&mut xd);
        let mut wd = vec![0.0; n * k];
        let g = ternary_weights_into(&mut wd, &w, QuantMode::Ternary);
        let mut y = vec![0.0; m * n];
        bitlinear_forward(&mut y, &xd, &wd, (m, n, k), T1);
        let mut wq = vec![0i8; n * k];
        assert_eq!(quantize_weights(&w, &mut wq), g);
        for i in 0..m {
            for j in 0..n {
                let acc: i32 =
                    (0..k).map(|p| i32::from(a.codes[i * k + p]) * i32::from(wq[j * k + p])).sum();
                let want = acc as f32 * g / a.scales[i];
                assert!((y[i * n + j] - want).abs() <= 1e-5 * want.abs().max(1.0));
            }
        }
    }

    /// The straight-through gradients, checked against naive loops over the quantized operands.
    #[test]
    fn straight_through_gradients() {
        let (m, n, k) = (3, 5, 8);
        let x = pseudo_random(m * k, 1, 1.0);
        let w = pseudo_random(n * k, 2, 0.1);
        let dy = pseudo_random(m * n, 3, 1.0);
        let mut a = ActQuant::new(m, k, QuantMode::Ternary);
        a.quantize(&x);
        let mut xd = vec![0.0; m * k];
        a.dequantize_into(&mut xd);
        let mut wd = vec![0.0; n * k];
        ternary_weights_into(&mut wd, &w, QuantMode::Ternary);
        assert!(wd.contains(&0.0) && wd.iter().any(|v| *v != 0.0));
        let (mut dx, mut dw) = (vec![0.0; m * k], vec![0.0; n * k]);
        bitlinear_backward(&mut dx, &mut dw, &dy, &xd, &wd, (m, n, k), false, T1);
        for i in 0..m {
            for p in 0..k {
                let want: f32 = (0..n).map(|j| dy[i * n + j] * wd[j * k + p]).sum();
                assert!((dx[i * k + p] - want).abs() < 1e-5);
            }
        }
        for j in 0..n {
            for p in 0..k {
                let want: f32 = (0..m).map(|i| dy[i * n + j] * xd[i * k + p]).sum();
                assert!((dw[j * k + p] - want).abs() < 1e-5);
            }
        }
        // The STE gradient is the gradient of the identity-quantizer layer evaluated at the
        // quantized operands.
        let loss = |xv: &[f32], wv: &[f32]| -> f64 {
            let mut y = vec![0.0; m * n];
            bitlinear_forward(&mut y, xv, wv, (m, n, k), T1);
            y.iter().zip(&dy).map(|(a, b)| f64::from(a * b)).sum()
        };
        assert_close(&dx, &numeric_grad(&xd, |v| loss(v, &wd)), 1e-3);
        assert_close(&dw, &numeric_grad(&wd, |v| loss(&xd, v)), 1e-3);
    }

    #[test]
    fn identity_mode_keeps_values() {
        let x = pseudo_random(6, 1, 1.0);
        let mut a = ActQuant::new(2, 3, QuantMode::Identity);
        a.quantize(&x);
        let mut out = vec![0.0; 6];
        a.dequantize_into(&mut out);
        assert_eq!(out, x);
        let mut wd = vec![0.0; 6];
        assert_eq!(ternary_weights_into(&mut wd, &x, QuantMode::Identity), 1.0);
        assert_eq!(wd, x);
    }
}
