//! Softmax cross-entropy over the vocabulary, mean over counted targets.

use crate::kernels::exp::{exp_affine_in_place, sum_exp};
use bitnet_framework::model::IGNORE_INDEX;
use rayon::prelude::*;

/// Lanes of the running maxima (a loop the compiler vectorizes; a plain `fold` over `f32::max`
/// is a serial chain over the 5174 logits of a row).
const LANES: usize = 16;

/// The largest value of `row` (NaN never wins; `-inf` for an empty row).
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in chunks.by_ref() {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    for (a, &v) in acc.iter_mut().zip(chunks.remainder()) {
        *a = if v > *a { v } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

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
            let max = row_max(row);
            let target_logit = row[target as usize];
            if !with_grad {
                let sum = sum_exp(row, max);
                return f64::from(max + sum.ln() - target_logit);
            }
            // One pass of exponentials, kept in the row, then one of scaling.
            let sum = exp_affine_in_place(row, 1.0, max, 1.0);
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
