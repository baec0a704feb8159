//! Causal scaled dot-product attention over head-major `[B, H, T, hd]` tensors, parallel over
//! (batch, head). The probabilities `P` (`[B, H, T, T]`, lower triangle) are kept for backward.

use crate::kernels::exp::exp_affine_in_place;
use crate::matmul::{View, matmul_views};
use rayon::prelude::*;

/// Query rows per causal block. Each (batch, head) is one task; its products run
/// single-threaded inside it, split into row blocks of this size so that the blocks strictly
/// above the diagonal, which the causal mask zeroes, are never computed (with `T = 128`, 3/4
/// of the dense products). Masked entries inside a diagonal block are computed and zeroed.
const BLOCK: usize = 64;

/// The row blocks `(r0, r1)` of a sequence of `t_len` positions.
fn blocks(t_len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t_len).step_by(BLOCK).map(move |r0| (r0, (r0 + BLOCK).min(t_len)))
}

/// `out[r0..r1, 0..r1] = a[r0..r1] . b[0..r1]^T` for every row block: the causal part of a
/// `T x T` product of two `T x hd` row-major matrices (scores `Q K^T`, or `dP = dO V^T`).
fn causal_abt(out: &mut [f32], a: &[f32], b: &[f32], (t_len, hd): (usize, usize)) {
    for (r0, r1) in blocks(t_len) {
        let av = View { data: &a[r0 * hd..], rs: hd, cs: 1 };
        let bv = View { data: b, rs: 1, cs: hd };
        matmul_views(&mut out[r0 * t_len..], t_len, av, bv, (r1 - r0, r1, hd), false);
    }
}

/// `out = m . b` for a causal (lower-triangular) `T x T` matrix `m` and a `T x hd` matrix `b`:
/// row block `(r0, r1)` sums over columns `0..r1` only (`O = P V`, `dQ = dS K`).
fn causal_ab(out: &mut [f32], m: &[f32], b: &[f32], (t_len, hd): (usize, usize)) {
    for (r0, r1) in blocks(t_len) {
        let mv = View { data: &m[r0 * t_len..], rs: t_len, cs: 1 };
        let bv = View { data: b, rs: hd, cs: 1 };
        matmul_views(&mut out[r0 * hd..], hd, mv, bv, (r1 - r0, hd, r1), false);
    }
}

/// `out = m^T . b` for a causal `T x T` matrix `m`: output block `(c0, c1)` sums over rows
/// `c0..T` only (`dV = P^T dO`, `dK = dS^T Q`).
fn causal_atb(out: &mut [f32], m: &[f32], b: &[f32], (t_len, hd): (usize, usize)) {
    for (c0, c1) in blocks(t_len) {
        let mv = View { data: &m[c0 * t_len + c0..], rs: 1, cs: t_len };
        let bv = View { data: &b[c0 * hd..], rs: hd, cs: 1 };
        matmul_views(&mut out[c0 * hd..], hd, mv, bv, (c1 - c0, hd, t_len - c0), false);
    }
}

/// Writes the causal probabilities of one (batch, head) into `p` (`T x T`, zero above the
/// diagonal). With `stats_out`, computes them and records each row's `(max, 1 / sum)`; with
/// `stats_in`, recomputes them bit-identically from those (the scores come from the same
/// single-threaded product).
fn probabilities(
    p: &mut [f32],
    q: &[f32],
    k: &[f32],
    (t_len, hd): (usize, usize),
    stats_out: Option<&mut [f32]>,
    stats_in: Option<&[f32]>,
) {
    let scale = 1.0 / (hd as f32).sqrt();
    causal_abt(p, q, k, (t_len, hd));
    let mut stats_out = stats_out;
    for (t, prow) in p.chunks_mut(t_len).enumerate() {
        let (live, masked) = prow.split_at_mut(t + 1);
        masked.fill(0.0);
        if let Some(st) = stats_in {
            let (max, inv) = (st[2 * t], st[2 * t + 1]);
            exp_affine_in_place(live, scale, max, inv);
            continue;
        }
        // `scale > 0` and rounding is monotonic: the largest scaled score is the scaled
        // largest score, bit for bit.
        let max = live.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s)) * scale;
        let sum = exp_affine_in_place(live, scale, max, 1.0);
        let inv = 1.0 / sum;
        for s in live.iter_mut() {
            *s *= inv;
        }
        if let Some(st) = stats_out.as_deref_mut() {
            st[2 * t] = max;
            st[2 * t + 1] = inv;
        }
    }
}

/// Forward: `out = softmax(q k^T / sqrt(hd) + causal mask) v`. Keeps only each row's softmax
/// statistics in `stats` (`B*H*T*2`); `p_scratch` (`B*H*T*T`) holds the probabilities
/// meanwhile. The products run on the GEMM micro-kernel by causal row blocks ([`BLOCK`]): only
/// the masked entries of the diagonal blocks cost FLOPs.
pub(crate) fn attention_forward(
    out: &mut [f32],
    p_scratch: &mut [f32],
    stats: &mut [f32],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
) {
    let block = t_len * hd;
    out.par_chunks_mut(block)
        .zip(p_scratch.par_chunks_mut(t_len * t_len))
        .zip(stats.par_chunks_mut(2 * t_len))
        .zip(q.par_chunks(block))
        .zip(k.par_chunks(block).zip(v.par_chunks(block)))
        .for_each(|((((o, p), st), q), (k, v))| {
            probabilities(p, q, k, (t_len, hd), Some(st), None);
            causal_ab(o, p, v, (t_len, hd));
        });
}

/// Backward: overwrites `dq`, `dk`, `dv` from `dout`, recomputing the probabilities from `q`,
/// `k` and `stats`; `p_scratch` and `ds_scratch` hold `B*H*T*T` floats each.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    (p_scratch, ds_scratch): (&mut [f32], &mut [f32]),
    dout: &[f32],
    stats: &[f32],
    (q, k, v): (&[f32], &[f32], &[f32]),
    (t_len, hd): (usize, usize),
) {
    let scale = 1.0 / (hd as f32).sqrt();
    let block = t_len * hd;
    let tt = t_len * t_len;
    dq.par_chunks_mut(block)
        .zip(dk.par_chunks_mut(block))
        .zip(dv.par_chunks_mut(block))
        .zip(p_scratch.par_chunks_mut(tt).zip(ds_scratch.par_chunks_mut(tt)))
        .zip(dout.par_chunks(block).zip(stats.par_chunks(2 * t_len)))
        .zip(q.par_chunks(block).zip(k.par_chunks(block).zip(v.par_chunks(block))))
        .for_each(|(((((dq, dk), dv), (p, ds)), (dout, st)), (q, (k, v)))| {
            probabilities(p, q, k, (t_len, hd), None, Some(st));
            // dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)) * scale.
            causal_atb(dv, p, dout, (t_len, hd));
            causal_abt(ds, dout, v, (t_len, hd));
            // Row t is live on 0..=t; the rest (partly never computed) becomes exact zeros.
            for (t, (dsrow, prow)) in ds.chunks_mut(t_len).zip(p.chunks(t_len)).enumerate() {
                let (live, masked) = dsrow.split_at_mut(t + 1);
                let sum: f32 = live.iter().zip(prow).map(|(d, p)| d * p).sum();
                for (d, &pv) in live.iter_mut().zip(prow) {
                    *d = pv * (*d - sum) * scale;
                }
                masked.fill(0.0);
            }
            // dQ = dS K; dK = dS^T Q.
            causal_ab(dq, ds, k, (t_len, hd));
            causal_atb(dk, ds, q, (t_len, hd));
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

    #[test]
    fn gradient_matches_finite_differences() {
        let (bh, t, hd) = (2, 5, 4);
        let n = bh * t * hd;
        let q = pseudo_random(n, 1, 1.0);
        let k = pseudo_random(n, 2, 1.0);
        let v = pseudo_random(n, 3, 1.0);
        let dout = pseudo_random(n, 4, 1.0);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let mut o = vec![0.0; n];
            let mut a = vec![0.0; bh * t * t];
            let mut st = vec![0.0; bh * t * 2];
            attention_forward(&mut o, &mut a, &mut st, (q, k, v), (t, hd));
            o.iter().zip(&dout).map(|(x, y)| f64::from(x * y)).sum()
        };
        let mut o = vec![0.0; n];
        let mut a = vec![0.0; bh * t * t];
        let mut st = vec![0.0; bh * t * 2];
        attention_forward(&mut o, &mut a, &mut st, (&q, &k, &v), (t, hd));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut p, mut ds) = (vec![0.0; bh * t * t], vec![0.0; bh * t * t]);
        attention_backward(
            (&mut dq, &mut dk, &mut dv),
            (&mut p, &mut ds),
            &dout,
            &st,
            (&q, &k, &v),
            (t, hd),
        );
        // The recomputed probabilities are the forward's, bit for bit.
        assert_eq!(p, a);
        assert_close(&dq, &numeric_grad(&q, |x| loss(x, &k, &v)), 2e-3);
        assert_close(&dk, &numeric_grad(&k, |x| loss(&q, x, &v)), 2e-3);
        assert_close(&dv, &numeric_grad(&v, |x| loss(&q, &k, x)), 2e-3);
    }

    /// Several causal blocks (and a ragged last one) against dense f64 loops.
    #[test]
    fn blocked_products_match_dense_attention() {
        let (t, hd) = (2 * BLOCK + 7, 4);
        let n = t * hd;
        let q = pseudo_random(n, 5, 1.0);
        let k = pseudo_random(n, 6, 1.0);
        let v = pseudo_random(n, 7, 1.0);
        let dout = pseudo_random(n, 8, 1.0);
        let (mut o, mut a, mut st) = (vec![0.0; n], vec![f32::NAN; t * t], vec![0.0; 2 * t]);
        attention_forward(&mut o, &mut a, &mut st, (&q, &k, &v), (t, hd));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let (mut p, mut ds) = (vec![f32::NAN; t * t], vec![f32::NAN; t * t]);
        let io = (&q[..], &k[..], &v[..]);
        attention_backward((&mut dq, &mut dk, &mut dv), (&mut p, &mut ds), &dout, &st, io, (t, hd));
        assert_eq!(p, a);
        // Dense reference in f64.
        let f = |x: &[f32], i: usize, j: usize| f64::from(x[i * hd + j]);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut pr = vec![0.0f64; t * t];
        for i in 0..t {
            let s: Vec<f64> = (0..=i)
                .map(|j| (0..hd).map(|c| f(&q, i, c) * f(&k, j, c)).sum::<f64>() * scale)
                .collect();
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for j in 0..=i {
                pr[i * t + j] = (s[j] - max).exp() / sum;
            }
        }
        let mut want_o = vec![0.0f32; n];
        let (mut wdq, mut wdk, mut wdv) = (vec![0.0f64; n], vec![0.0f64; n], vec![0.0f64; n]);
        for i in 0..t {
            for c in 0..hd {
                want_o[i * hd + c] =
                    (0..t).map(|j| pr[i * t + j] * f(&v, j, c)).sum::<f64>() as f32;
            }
            let dp: Vec<f64> =
                (0..t).map(|j| (0..hd).map(|c| f(&dout, i, c) * f(&v, j, c)).sum()).collect();
            let dot: f64 = (0..t).map(|j| dp[j] * pr[i * t + j]).sum();
            for j in 0..t {
                let dsij = pr[i * t + j] * (dp[j] - dot) * scale;
                for c in 0..hd {
                    wdq[i * hd + c] += dsij * f(&k, j, c);
                    wdk[j * hd + c] += dsij * f(&q, i, c);
                    wdv[j * hd + c] += pr[i * t + j] * f(&dout, i, c);
                }
            }
        }
        let narrow = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect::<Vec<f32>>();
        assert_close(&o, &want_o, 1e-5);
        assert_close(&dq, &narrow(wdq), 1e-5);
        assert_close(&dk, &narrow(wdk), 1e-5);
        assert_close(&dv, &narrow(wdv), 1e-5);
    }

    #[test]
    fn first_position_attends_only_to_itself() {
        let (t, hd) = (3, 2);
        let q = pseudo_random(t * hd, 1, 1.0);
        let k = pseudo_random(t * hd, 2, 1.0);
        let v = pseudo_random(t * hd, 3, 1.0);
        let mut o = vec![0.0; t * hd];
        let mut a = vec![0.0; t * t];
        let mut st = vec![0.0; t * 2];
        attention_forward(&mut o, &mut a, &mut st, (&q, &k, &v), (t, hd));
        assert_eq!(&o[..hd], &v[..hd]);
        for row in a.chunks(t) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
