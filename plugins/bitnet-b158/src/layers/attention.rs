//! Causal scaled dot-product attention over head-major `[B, H, T, hd]` tensors, parallel over
//! (batch, head). The probabilities `P` (`[B, H, T, T]`, lower triangle) are kept for backward.

use rayon::prelude::*;

use crate::matmul::{Threads, matmul_ab, matmul_abt, matmul_atb};

/// Each (batch, head) is one task; its products run single-threaded inside it.
const ONE: Threads = Threads(1);

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
    matmul_abt(p, q, k, (t_len, t_len, hd), false, ONE);
    let mut stats_out = stats_out;
    for (t, prow) in p.chunks_mut(t_len).enumerate() {
        let (live, masked) = prow.split_at_mut(t + 1);
        masked.fill(0.0);
        if let Some(st) = stats_in {
            let (max, inv) = (st[2 * t], st[2 * t + 1]);
            for s in live.iter_mut() {
                *s = (*s * scale - max).exp() * inv;
            }
            continue;
        }
        let mut max = f32::NEG_INFINITY;
        for s in live.iter_mut() {
            *s *= scale;
            max = max.max(*s);
        }
        let mut sum = 0.0f32;
        for s in live.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
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
/// meanwhile. The products are dense `T x T` GEMMs: the masked half costs FLOPs but runs on
/// the GEMM micro-kernel, far faster than masked scalar loops.
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
            matmul_ab(o, p, v, (t_len, hd, t_len), false, ONE);
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
            matmul_atb(dv, p, dout, (t_len, hd, t_len), false, ONE);
            matmul_abt(ds, dout, v, (t_len, t_len, hd), false, ONE);
            for (dsrow, prow) in ds.chunks_mut(t_len).zip(p.chunks(t_len)) {
                let sum: f32 = dsrow.iter().zip(prow.iter()).map(|(d, p)| d * p).sum();
                for (d, &pv) in dsrow.iter_mut().zip(prow.iter()) {
                    *d = pv * (*d - sum) * scale;
                }
            }
            // dQ = dS K; dK = dS^T Q.
            matmul_ab(dq, ds, k, (t_len, hd, t_len), false, ONE);
            matmul_atb(dk, ds, q, (t_len, hd, t_len), false, ONE);
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
