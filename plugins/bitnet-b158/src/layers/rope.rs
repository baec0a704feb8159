//! Rotary position embeddings, rotate-half convention (LLaMA / Hugging Face), fused with the
//! change of layout between token-major `[B*T, H*hd]` and head-major `[B, H, T, hd]`.

use rayon::prelude::*;

/// `cos` and `sin` of `position * theta^(-2i/hd)` for `i < hd/2` (both halves of a head use
/// the same angle), `[max_positions, hd/2]`.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// Tables for positions `0..max_positions` and head dimension `head_dim` (even).
    pub(crate) fn new(max_positions: usize, head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        // Same f32 arithmetic as the reference: inv_freq = 1 / theta^(2i/hd), angle = t * inv_freq.
        let inv_freq: Vec<f32> =
            (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
        for t in 0..max_positions {
            for &f in &inv_freq {
                let a = t as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates one head vector at `pos` in place.
    #[inline]
    pub(crate) fn rotate(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[pos * h..(pos + 1) * h], &self.sin[pos * h..(pos + 1) * h]);
        let (x1, x2) = x.split_at_mut(h);
        for i in 0..h {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * c[i] - b * s[i];
            x2[i] = b * c[i] + a * s[i];
        }
    }

    /// The transpose of [`Self::rotate`] (the rotation by the opposite angle), in place.
    #[inline]
    pub(crate) fn rotate_back(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let (c, s) = (&self.cos[pos * h..(pos + 1) * h], &self.sin[pos * h..(pos + 1) * h]);
        let (x1, x2) = x.split_at_mut(h);
        for i in 0..h {
            let (a, b) = (x1[i], x2[i]);
            x1[i] = a * c[i] + b * s[i];
            x2[i] = b * c[i] - a * s[i];
        }
    }
}

/// `dst.copy_from_slice(src)` for a head's few dozen values: 16 at a time as fixed-size moves,
/// which compile to vector loads and stores in place (a `memcpy` call per head row was 1.5-2% of
/// a small training step).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    let (dc, dr) = dst.as_chunks_mut::<16>();
    let (sc, sr) = src.as_chunks::<16>();
    for (d, s) in dc.iter_mut().zip(sc) {
        *d = *s;
    }
    if !dr.is_empty() {
        dr.copy_from_slice(sr);
    }
}

/// Token-major `[B*T, H*hd]` to head-major `[B, H, T, hd]`, rotating each head when `rope` is given.
pub(crate) fn split_heads(
    dst: &mut [f32],
    src: &[f32],
    (t_len, n_heads, hd): (usize, usize, usize),
    rope: Option<&RopeTables>,
) {
    let d = n_heads * hd;
    dst.par_chunks_mut(t_len * hd).enumerate().for_each(|(bh, chunk)| {
        let (b, h) = (bh / n_heads, bh % n_heads);
        for (t, out) in chunk.chunks_mut(hd).enumerate() {
            let row = (b * t_len + t) * d + h * hd;
            copy_short(out, &src[row..row + hd]);
            if let Some(r) = rope {
                r.rotate(out, t);
            }
        }
    });
}

/// Head-major `[B, H, T, hd]` to token-major `[B*T, H*hd]`, applying the transpose of the
/// rotation when `rope` is given (the backward of [`split_heads`]).
pub(crate) fn merge_heads(
    dst: &mut [f32],
    src: &[f32],
    (t_len, n_heads, hd): (usize, usize, usize),
    rope: Option<&RopeTables>,
) {
    let d = n_heads * hd;
    dst.par_chunks_mut(t_len * d).enumerate().for_each(|(b, rows)| {
        for (t, row) in rows.chunks_mut(d).enumerate() {
            for h in 0..n_heads {
                let from = ((b * n_heads + h) * t_len + t) * hd;
                let out = &mut row[h * hd..(h + 1) * hd];
                copy_short(out, &src[from..from + hd]);
                if let Some(r) = rope {
                    r.rotate_back(out, t);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pseudo_random;

    #[test]
    fn merge_is_the_transpose_of_split() {
        // <split(x), y> == <x, merge(y)> for the linear map split (with rotation).
        let (b, t, h, hd) = (2, 5, 3, 4);
        let r = RopeTables::new(t, hd, 10_000.0);
        let x = pseudo_random(b * t * h * hd, 1, 1.0);
        let y = pseudo_random(b * t * h * hd, 2, 1.0);
        let mut sx = vec![0.0; x.len()];
        split_heads(&mut sx, &x, (t, h, hd), Some(&r));
        let mut my = vec![0.0; y.len()];
        merge_heads(&mut my, &y, (t, h, hd), Some(&r));
        let lhs: f64 = sx.iter().zip(&y).map(|(a, b)| f64::from(a * b)).sum();
        let rhs: f64 = x.iter().zip(&my).map(|(a, b)| f64::from(a * b)).sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
        // Without rotation, merge undoes split exactly.
        split_heads(&mut sx, &x, (t, h, hd), None);
        merge_heads(&mut my, &sx, (t, h, hd), None);
        assert_eq!(my, x);
    }

    #[test]
    fn rotate_half_convention() {
        // Position 1, hd 4: angles 1 and 1/100 for the two frequency pairs (x0,x2) and (x1,x3).
        let r = RopeTables::new(2, 4, 10_000.0);
        let mut x = [1.0, 2.0, 3.0, 4.0];
        r.rotate(&mut x, 1);
        let (c0, s0, c1, s1) = (1f32.cos(), 1f32.sin(), 0.01f32.cos(), 0.01f32.sin());
        let want =
            [1.0 * c0 - 3.0 * s0, 2.0 * c1 - 4.0 * s1, 3.0 * c0 + 1.0 * s0, 4.0 * c1 + 2.0 * s1];
        for (a, b) in x.iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
