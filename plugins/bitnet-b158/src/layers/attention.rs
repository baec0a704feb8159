//! Causal scaled dot-product attention over head-major `[B, H, T, hd]` tensors, parallel over
//! (batch, head). Only each row's softmax statistics are kept for backward, which recomputes
//! the probabilities; the passes are in [`crate::kernels::attention`].

// The layer is the kernel's pass on the best path of this CPU, under the layer's names:
// forward writes `out = softmax(q k^T / sqrt(hd) + causal mask) v` and each row's softmax
// statistics (`B*H*T*2`), `p_scratch` (`B*H*T*T`) holding the probabilities meanwhile;
// backward overwrites `dq`, `dk`, `dv` from `dout`, recomputing the probabilities from `q`, `k`
// and the statistics.
pub(crate) use crate::kernels::attention::{
    attention_backward_best as attention_backward, attention_forward_best as attention_forward,
};

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
        let mut p = vec![0.0; bh * t * t];
        attention_backward((&mut dq, &mut dk, &mut dv), &mut p, &dout, &st, (&q, &k, &v), (t, hd));
        // The recomputed probabilities are the forward's, bit for bit.
        assert_eq!(p, a);
        assert_close(&dq, &numeric_grad(&q, |x| loss(x, &k, &v)), 2e-3);
        assert_close(&dk, &numeric_grad(&k, |x| loss(&q, x, &v)), 2e-3);
        assert_close(&dv, &numeric_grad(&v, |x| loss(&q, &k, x)), 2e-3);
    }

    /// Many row tiles (and a ragged last one) against dense f64 loops.
    #[test]
    fn blocked_products_match_dense_attention() {
        let (t, hd) = (135, 4);
        let n = t * hd;
        let q = pseudo_random(n, 5, 1.0);
        let k = pseudo_random(n, 6, 1.0);
        let v = pseudo_random(n, 7, 1.0);
        let dout = pseudo_random(n, 8, 1.0);
        let (mut o, mut a, mut st) = (vec![0.0; n], vec![f32::NAN; t * t], vec![0.0; 2 * t]);
        attention_forward(&mut o, &mut a, &mut st, (&q, &k, &v), (t, hd));
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let mut p = vec![f32::NAN; t * t];
        let io = (&q[..], &k[..], &v[..]);
        attention_backward((&mut dq, &mut dk, &mut dv), &mut p, &dout, &st, io, (t, hd));
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
