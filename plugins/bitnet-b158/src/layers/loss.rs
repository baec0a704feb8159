//! Softmax cross-entropy over the vocabulary, mean over counted targets.

use crate::kernels::bf16::f32_to_bf16;
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

/// Where [`cross_entropy`] leaves the gradient of the mean loss.
pub(crate) enum Grad<'a> {
    /// Loss only; the logits are left as they were.
    None,
    /// In place of the logits, fp32.
    F32,
    /// Rounded to bf16 into the given `[rows, vocab]` buffer (the operand of the mixed-precision
    /// LM head backward), converted while the row is in cache; the logits hold scratch after.
    /// Each lane is the bf16 of the value [`Grad::F32`] gives.
    Bf16(&'a mut [u16]),
}

/// Computes the mean cross-entropy of `logits` (`[rows, vocab]`) against `targets`, leaving
/// the gradient of that mean (`(softmax - onehot) / counted`, zero rows for ignored targets)
/// where `grad` says. Targets are checked by the caller. Returns `(mean loss, counted
/// targets)`; the mean of zero targets is 0.
pub(crate) fn cross_entropy(
    logits: &mut [f32],
    targets: &[u32],
    vocab: usize,
    grad: Grad<'_>,
) -> (f32, usize) {
    let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    let inv = if counted > 0 { 1.0 / counted as f32 } else { 0.0 };
    let with_grad = !matches!(grad, Grad::None);
    let row_loss = |row: &mut [f32], target: u32, out: Option<&mut [u16]>| {
        if target == IGNORE_INDEX {
            match out {
                Some(out) => out.fill(0),
                None if with_grad => row.fill(0.0),
                None => {}
            }
            return 0.0;
        }
        let max = row_max(row);
        let target_logit = row[target as usize];
        if !with_grad {
            let sum = sum_exp(row, max);
            return f64::from(max + sum.ln() - target_logit);
        }
        // One pass of exponentials, kept in the row, then one of scaling (and rounding).
        let sum = exp_affine_in_place(row, 1.0, max, 1.0);
        let factor = inv / sum;
        let t = target as usize;
        match out {
            Some(out) => {
                for (h, &v) in out.iter_mut().zip(row.iter()) {
                    *h = f32_to_bf16(v * factor);
                }
                out[t] = f32_to_bf16(row[t] * factor - inv);
            }
            None => {
                for v in row.iter_mut() {
                    *v *= factor;
                }
                row[t] -= inv;
            }
        }
        f64::from(max + sum.ln() - target_logit)
    };
    let total: f64 = match grad {
        Grad::Bf16(out) => {
            assert_eq!(out.len(), logits.len(), "bf16 gradient buffer");
            logits
                .par_chunks_mut(vocab)
                .zip(out.par_chunks_mut(vocab))
                .zip(targets.par_iter())
                .map(|((row, out), &target)| row_loss(row, target, Some(out)))
                .sum()
        }
        Grad::None | Grad::F32 => logits
            .par_chunks_mut(vocab)
            .zip(targets.par_iter())
            .map(|(row, &target)| row_loss(row, target, None))
            .sum(),
    };
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
        let (loss, counted) = cross_entropy(&mut g, &targets, vocab, Grad::F32);
        assert_eq!(counted, 3);
        let f = |x: &[f32]| {
            let mut y = x.to_vec();
            f64::from(cross_entropy(&mut y, &targets, vocab, Grad::None).0)
        };
        assert!((f64::from(loss) - f(&logits)).abs() < 1e-6);
        assert_close(&g, &numeric_grad(&logits, f), 1e-3);
        assert!(g[vocab..2 * vocab].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn bf16_gradient_is_the_rounded_fp32_one() {
        let (rows, vocab) = (5, 37);
        let logits = pseudo_random(rows * vocab, 3, 4.0);
        let targets = [0, 36, IGNORE_INDEX, 17, 5];
        let mut g = logits.clone();
        let (loss, counted) = cross_entropy(&mut g, &targets, vocab, Grad::F32);
        let mut scratch = logits.clone();
        let mut g16 = vec![u16::MAX; rows * vocab];
        let (loss16, counted16) =
            cross_entropy(&mut scratch, &targets, vocab, Grad::Bf16(&mut g16));
        assert_eq!((loss.to_bits(), counted), (loss16.to_bits(), counted16));
        let want: Vec<u16> = g.iter().map(|&v| f32_to_bf16(v)).collect();
        assert_eq!(g16, want);
        assert!(g16[2 * vocab..3 * vocab].iter().all(|&h| h == 0));
    }

    #[test]
    fn uniform_logits_give_log_vocab() {
        let mut l = vec![0.0; 8];
        let (loss, _) = cross_entropy(&mut l, &[1, 2], 4, Grad::None);
        assert!((loss - 4f32.ln()).abs() < 1e-6);
    }
}
