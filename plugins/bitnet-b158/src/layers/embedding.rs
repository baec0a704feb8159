//! Token embedding: a row look-up, and its scatter-add backward.

use rayon::prelude::*;

/// Writes row `tokens[m]` of `table` (width `d`) into row `m` of `out`. Tokens are checked by
/// the caller.
pub(crate) fn embedding_forward(out: &mut [f32], table: &[f32], tokens: &[u32], d: usize) {
    out.par_chunks_mut(d).zip(tokens.par_iter()).for_each(|(row, &tok)| {
        let t = tok as usize;
        row.copy_from_slice(&table[t * d..(t + 1) * d]);
    });
}

/// Overwrites `dtable` with the scatter-add of the rows of `dout` to their tokens' rows.
pub(crate) fn embedding_backward(dtable: &mut [f32], dout: &[f32], tokens: &[u32], d: usize) {
    dtable.fill(0.0);
    for (row, &tok) in dout.chunks(d).zip(tokens) {
        let t = tok as usize;
        for (a, b) in dtable[t * d..(t + 1) * d].iter_mut().zip(row) {
            *a += b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_tokens_accumulate() {
        let table = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let tokens = [2, 0, 2];
        let mut out = [0.0; 6];
        embedding_forward(&mut out, &table, &tokens, 2);
        assert_eq!(out, [5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
        let mut dt = [9.0; 6];
        embedding_backward(&mut dt, &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0], &tokens, 2);
        assert_eq!(dt, [2.0, 2.0, 0.0, 0.0, 4.0, 4.0]);
    }
}
