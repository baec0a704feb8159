//! Softmax cross-entropy over the vocabulary, mean over counted targets.

use bitnet_framework::model::IGNORE_INDEX;
use rayon::prelude::*;

/// Computes the mean cross-entropy of `logits` (`[rows, vocab]`) against `targets`; when
/// `with_grad`, overwrites the logits with the gradient of that mean (`(softmax - onehot) /
/// counted`, zero rows for ignored targets). Targets are checked by the caller. Returns
/// `(mean loss, counted targets)`; the mean of zero targets is 0.
pub(crate) fn cross_entropy(
    logits: &mut [f32],
    targets: &[u32],
    vocab: usize,
    with_grad: bool,
) -> (f32, usize) {
    let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let inv = if counted > 0 { 1.0 / counted as f32 } else { 0.0 };
    let total: f64 = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| {
            if target == IGNORE_INDEX {
                if with_grad {
                    row.fill(0.0);
                }
                return 0.0;
            }
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let target_logit = row[target as usize];
            if !with_grad {
                let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
                return f64::from(max + sum.ln() - target_logit);
            }
            // One pass of exponentials, kept in the row, then one of scaling.
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let factor = inv / sum;
            for v in row.iter_mut() {
                *v *= factor;
            }
            row[target as usize] -= inv;
            f64::from(max + sum.ln() - target_logit)
        })
        .sum();
    ((total * f64::from(inv)) as f32, counted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, numeric_grad, pseudo_random};

    #[test]
    fn gradient_matches_finite_differences_and_ignores() {
        let (rows, vocab) = (4, 6);
        let logits = pseudo_random(rows * vocab, 1, 2.0);
        let targets = [3, IGNORE_INDEX, 0, 5];
        let mut g = logits.clone();
        let (loss, counted) = cross_entropy(&mut g, &targets, vocab, true);
        assert_eq!(counted, 3);
        let f = |x: &[f32]| {
            let mut y = x.to_vec();
            f64::from(cross_entropy(&mut y, &targets, vocab, false).0)
        };
        assert!((f64::from(loss) - f(&logits)).abs() < 1e-6);
        assert_close(&g, &numeric_grad(&logits, f), 1e-3);
        assert!(g[vocab..2 * vocab].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn uniform_logits_give_log_vocab() {
        let mut l = vec![0.0; 8];
        let (loss, _) = cross_entropy(&mut l, &[1, 2], 4, false);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
    }
}
