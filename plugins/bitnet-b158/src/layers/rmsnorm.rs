//! RMSNorm: `y = x / sqrt(mean(x^2) + eps) * w`, per row.

use crate::kernels::quant::quantize_row_best;
use crate::layers::bitlinear::ActQuant;
use rayon::prelude::*;

/// Lanes of the partial sums of squares (a loop the compiler vectorizes).
const LANES: usize = 16;

/// `sum(x^2)` in 16 lane-ordered partial sums.
fn sum_of_squares(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in chunks.by_ref() {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a += v * v;
    }
    acc.iter().sum()
}

/// `sum(a * b * c)` in 16 lane-ordered partial sums (a single running sum is a chain of
/// dependent additions the compiler may not reorder, i.e. scalar code).
fn sum_of_products(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ac, ar) = a.as_chunks::<LANES>();
    let (bc, br) = b.as_chunks::<LANES>();
    let (cc, cr) = c.as_chunks::<LANES>();
    for ((x, y), z) in ac.iter().zip(bc).zip(cc) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l] * z[l];
        }
    }
    for (l, ((&x, &y), &z)) in ar.iter().zip(br).zip(cr).enumerate() {
        acc[l] += x * y * z;
    }
    acc.iter().sum()
}

/// One row: writes `o` and returns its `rstd`.
#[inline]
fn rmsnorm_row(o: &mut [f32], xr: &[f32], w: &[f32], eps: f32) -> f32 {
    let ms = sum_of_squares(xr) / w.len() as f32;
    let rs = 1.0 / (ms + eps).sqrt();
    for ((oi, &xi), &wi) in o.iter_mut().zip(xr).zip(w) {
        *oi = xi * rs * wi;
    }
    rs
}

/// Forward over rows of width `w.len()`: writes `out` and the per-row `rstd`.
pub(crate) fn rmsnorm_forward(out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    out.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks(d)).for_each(|((o, r), xr)| {
        *r = rmsnorm_row(o, xr, w, eps);
    });
}

/// [`rmsnorm_forward`] followed by `a.quantize(out)`, fused: each normalized row is quantized
/// while it is still in L1 (one pass over the rows instead of two).
pub(crate) fn rmsnorm_forward_quantize(
    out: &mut [f32],
    rstd: &mut [f32],
    x: &[f32],
    w: &[f32],
    eps: f32,
    a: &mut ActQuant,
) {
    let d = w.len();
    if !a.raw.is_empty() || a.cols != d {
        rmsnorm_forward(out, rstd, x, w, eps);
        a.quantize(out);
        return;
    }
    out.par_chunks_mut(d)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(d))
        .zip(a.codes.par_chunks_mut(d).zip(a.scales.par_iter_mut()))
        .for_each(|(((o, r), xr), (q, s))| {
            *r = rmsnorm_row(o, xr, w, eps);
            *s = quantize_row_best(o, q);
        });
}

/// Backward: writes `dx` (or adds to it when `accumulate`) and overwrites `dw`.
///
/// With `xhat = x * rstd` and `g = dy * w`: `dx = rstd * (g - xhat * mean(g * xhat))`,
/// `dw = sum over rows of dy * xhat`.
pub(crate) fn rmsnorm_backward(
    dx: &mut [f32],
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    rstd: &[f32],
    w: &[f32],
    accumulate: bool,
) {
    let d = w.len();
    dx.par_chunks_mut(d).zip(dy.par_chunks(d)).zip(x.par_chunks(d)).zip(rstd.par_iter()).for_each(
        |(((dxr, dyr), xr), &rs)| {
            let mean = sum_of_products(dyr, w, xr) * rs / d as f32;
            for (((dxi, &dyi), &xi), &wi) in dxr.iter_mut().zip(dyr).zip(xr).zip(w) {
                let v = rs * (dyi * wi - xi * rs * mean);
                if accumulate {
                    *dxi += v;
                } else {
                    *dxi = v;
                }
            }
        },
    );
    // dw reduces over rows: serial over rows, vectorised over the width (rows are few enough).
    dw.fill(0.0);
    for ((dyr, xr), &rs) in dy.chunks(d).zip(x.chunks(d)).zip(rstd) {
        for ((dwi, &dyi), &xi) in dw.iter_mut().zip(dyr).zip(xr) {
            *dwi += dyi * xi * rs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

    /// The fused pass gives exactly the unfused one's rows, `rstd`, codes and scales.
    #[test]
    fn fused_quantize_matches_the_two_passes() {
        use crate::layers::bitlinear::{ActQuant, QuantMode};
        let (m, d, eps) = (5, 40, 1e-6);
        let x = pseudo_random(m * d, 4, 3.0);
        let w = pseudo_random(d, 5, 1.0);
        for mode in [QuantMode::Ternary, QuantMode::Identity] {
            let (mut out, mut rstd) = (vec![0.0; m * d], vec![0.0; m]);
            let mut want = ActQuant::new(m, d, mode);
            rmsnorm_forward(&mut out, &mut rstd, &x, &w, eps);
            want.quantize(&out);
            let (mut out2, mut rstd2) = (vec![0.0; m * d], vec![0.0; m]);
            let mut got = ActQuant::new(m, d, mode);
            rmsnorm_forward_quantize(&mut out2, &mut rstd2, &x, &w, eps, &mut got);
            assert_eq!((out, rstd), (out2, rstd2));
            assert_eq!((want.codes, want.scales, want.raw), (got.codes, got.scales, got.raw));
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (m, d, eps) = (3, 8, 1e-6);
        let x = pseudo_random(m * d, 1, 1.0);
        let w = pseudo_random(d, 2, 1.0);
        let dy = pseudo_random(m * d, 3, 1.0);
        let loss = |x: &[f32], w: &[f32]| -> f64 {
            let mut out = vec![0.0; m * d];
            let mut r = vec![0.0; m];
            rmsnorm_forward(&mut out, &mut r, x, w, eps);
            out.iter().zip(&dy).map(|(a, b)| f64::from(a * b)).sum()
        };
        let mut out = vec![0.0; m * d];
        let mut rstd = vec![0.0; m];
        rmsnorm_forward(&mut out, &mut rstd, &x, &w, eps);
        let mut dx = vec![0.0; m * d];
        let mut dw = vec![0.0; d];
        rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &rstd, &w, false);
        assert_close(&dx, &numeric_grad(&x, |x| loss(x, &w)), 1e-3);
        assert_close(&dw, &numeric_grad(&w, |w| loss(&x, w)), 1e-3);
    }
}
