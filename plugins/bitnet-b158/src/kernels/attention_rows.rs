//! The row-block passes of causal attention (`super::attention`), each with its scalar twin
//! and a dispatch to the AVX-512 kernels (`x86_attention`, `x86_attention_rows`) and the AVX2
//! ones (`x86_avx2_attention`) and the aarch64 NEON ones (`neon_attention`; neither has the
//! fused row kernels, they run the blocked passes): register-tile
//! products, the softmax of score rows (recording or replaying its statistics), the score
//! gradient rows, and the transposes and copies around them.
//!
//! Bit-identity between the paths: each product entry is one chain of fused multiply-adds in
//! `p` order from zero; row maxima and sums are 16 lane-ordered partials reduced in the tree of
//! [`sum_lanes`]; the exponential is `exp_scalar` (the SIMD path's `vscalefps` variant gives
//! the same bits). Both paths share the tiling, so each entry has the same terms.

use super::Isa;
use super::exp::{LANES, exp_scalar};

/// Rows of a register tile (query rows; key rows for `dV` and `dK`), and of a row block.
pub(crate) const MR: usize = 8;
/// Columns of a register tile: two 16-lane vectors.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const NR: usize = 2 * LANES;

/// The inputs of a register tile:
/// `c[r * ldc + j] = sum_{p < depth} a[r * a_rs + p * a_cs] * b[p * ldb + j]`.
#[derive(Clone, Copy)]
pub(crate) struct TileOperands<'a> {
    pub a: &'a [f32],
    pub a_rs: usize,
    pub a_cs: usize,
    pub b: &'a [f32],
    pub ldb: usize,
    pub depth: usize,
}

/// `rows x cols` outputs (`rows` in `1..=MR`, row stride `ldc`) of the tile product `t`, by
/// tiles of [`NR`] columns.
///
/// # Panics
/// If `rows` is out of range or an operand is too short (a bug of the caller).
pub(crate) fn tile_row(
    isa: Isa,
    c: &mut [f32],
    ldc: usize,
    (rows, cols): (usize, usize),
    t: TileOperands,
) {
    assert!((1..=MR).contains(&rows) && cols >= 1, "tile shape");
    assert!((rows - 1) * ldc + cols <= c.len(), "tile output");
    if t.depth > 0 {
        assert!((rows - 1) * t.a_rs + (t.depth - 1) * t.a_cs < t.a.len(), "tile a");
        assert!((t.depth - 1) * t.ldb + cols <= t.b.len(), "tile b");
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when this CPU has AVX-512 F (checked by `check_isa` /
        // `best_among`); the asserts above are the bounds `tile_row_avx512` requires.
        Isa::Avx512 => unsafe { super::x86_attention::tile_row_avx512(c, ldc, (rows, cols), &t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when this CPU has AVX2 and FMA; the asserts above are
        // the bounds `tile_row_avx2` requires.
        Isa::Avx2 => unsafe { super::x86_avx2_attention::tile_row_avx2(c, ldc, (rows, cols), &t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the path is only chosen when this CPU has NEON; the asserts above are the
        // bounds `tile_row_neon` requires.
        Isa::Neon => unsafe { super::neon_attention::tile_row_neon(c, ldc, (rows, cols), &t) },
        _ => {
            for r in 0..rows {
                for j in 0..cols {
                    let mut acc = 0.0f32;
                    for p in 0..t.depth {
                        acc = t.a[r * t.a_rs + p * t.a_cs].mul_add(t.b[p * t.ldb + j], acc);
                    }
                    c[r * ldc + j] = acc;
                }
            }
        }
    }
}

/// The sum of 16 partial sums as the SIMD path reduces them: lane `i` becomes
/// `x[i] + x[i ^ s]` for `s = 8, 4, 2, 1`, and lane 0 is the result.
#[inline]
pub(crate) fn sum_lanes(mut x: [f32; LANES]) -> f32 {
    for s in [8, 4, 2, 1] {
        let y = x;
        for (i, v) in x.iter_mut().enumerate() {
            *v = y[i] + y[i ^ s];
        }
    }
    x[0]
}

/// `if v > m { v } else { m }`, the lane operation of `_mm512_max_ps(v, m)`.
#[inline(always)]
fn max_like_simd(v: f32, m: f32) -> f32 {
    if v > m { v } else { m }
}

/// The maximum of 16 partial maxima in the tree of [`sum_lanes`], lane `i` becoming
/// `max_like_simd(x[i ^ s], x[i])`.
#[inline]
pub(crate) fn max_lanes(mut x: [f32; LANES]) -> f32 {
    for s in [8, 4, 2, 1] {
        let y = x;
        for (i, v) in x.iter_mut().enumerate() {
            *v = max_like_simd(y[i ^ s], y[i]);
        }
    }
    x[0]
}

/// Forward softmax of `row[..live]` scaled by `scale` in place, zeros after; returns the row's
/// `(max, 1 / sum)`. The maximum is taken over 16 lane-ordered partial maxima (NaN skipped),
/// the sum of the exponentials over 16 lane-ordered partial sums, both reduced as
/// [`max_lanes`] / [`sum_lanes`].
fn softmax_row(row: &mut [f32], live: usize, scale: f32) -> (f32, f32) {
    let (live, tail) = row.split_at_mut(live);
    let mut m = [f32::NEG_INFINITY; LANES];
    for (i, &v) in live.iter().enumerate() {
        m[i % LANES] = max_like_simd(v, m[i % LANES]);
    }
    // `scale > 0` and rounding is monotonic: the largest scaled score is the scaled largest
    // score, bit for bit.
    let max = max_lanes(m) * scale;
    let mut acc = [0.0f32; LANES];
    for (i, v) in live.iter_mut().enumerate() {
        let e = exp_scalar(*v * scale - max);
        acc[i % LANES] += e;
        *v = e;
    }
    let inv = 1.0 / sum_lanes(acc);
    for v in live.iter_mut() {
        *v *= inv;
    }
    tail.fill(0.0);
    (max, inv)
}

/// The probabilities of [`softmax_row`] again from its `(max, 1 / sum)`:
/// `row[i] = exp(row[i] * scale - max) * inv` on `..live`, zeros after. Bit-identical to the
/// forward's `e`, then `e * inv`.
fn softmax_row_from_stats(row: &mut [f32], live: usize, scale: f32, (max, inv): (f32, f32)) {
    let (live, tail) = row.split_at_mut(live);
    for v in live.iter_mut() {
        *v = exp_scalar(*v * scale - max) * inv;
    }
    tail.fill(0.0);
}

/// One row of `dS` in place from the row `d` of `dP` and the probabilities `p`:
/// `d[i] = p[i] * (d[i] - s) * scale` on `..live` with `s = sum_i d[i] p[i]` (16 lane-ordered
/// fused partial sums, reduced as [`sum_lanes`]), zeros after.
fn softmax_grad_row(d: &mut [f32], p: &[f32], live: usize, scale: f32) {
    let (live, tail) = d.split_at_mut(live);
    let mut acc = [0.0f32; LANES];
    for (i, (&dv, &pv)) in live.iter().zip(p).enumerate() {
        acc[i % LANES] = dv.mul_add(pv, acc[i % LANES]);
    }
    let sum = sum_lanes(acc);
    for (dv, &pv) in live.iter_mut().zip(p) {
        *dv = pv * (*dv - sum) * scale;
    }
    tail.fill(0.0);
}

/// Where the softmax of a row block takes each row's statistics `(max, 1 / sum)` from
/// (`2 (r1 - r0)` floats for the rows `r0..r1`).
pub(crate) enum Stats<'a> {
    /// Computes the rows and records their statistics (forward).
    Record(&'a mut [f32]),
    /// Recomputes the rows from recorded statistics (backward).
    Replay(&'a [f32]),
}

/// The softmax of the scores of the queries `r0..` in `rows` (`T` per row; row `t` is live on
/// `..=t`, zero after), scaled by `scale`.
pub(crate) fn softmax_rows(
    isa: Isa,
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    st: Stats,
) {
    assert!(rows.len().is_multiple_of(t_len) && r0 + rows.len() / t_len <= t_len, "softmax rows");
    match (isa, st) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (see `tile_row`); the row count was checked above
        // and the callee checks the statistics.
        (Isa::Avx512, Stats::Record(st)) => unsafe {
            super::x86_attention_rows::softmax_rows_avx512(rows, (r0, t_len), scale, st)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx512, Stats::Replay(st)) => unsafe {
            super::x86_attention_rows::softmax_rows_from_stats_avx512(rows, (r0, t_len), scale, st)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (see `tile_row`); the row count was checked above.
        (Isa::Avx2, Stats::Record(st)) => unsafe {
            assert!(st.len() >= 2 * (rows.len() / t_len), "softmax statistics");
            super::x86_avx2_attention::softmax_rows_avx2(rows, (r0, t_len), scale, st)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2, Stats::Replay(st)) => unsafe {
            assert!(st.len() >= 2 * (rows.len() / t_len), "softmax statistics");
            super::x86_avx2_attention::softmax_rows_from_stats_avx2(rows, (r0, t_len), scale, st)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is available (see `tile_row`); the row count was checked above.
        (Isa::Neon, Stats::Record(st)) => unsafe {
            assert!(st.len() >= 2 * (rows.len() / t_len), "softmax statistics");
            super::neon_attention::softmax_rows_neon(rows, (r0, t_len), scale, st)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        (Isa::Neon, Stats::Replay(st)) => unsafe {
            assert!(st.len() >= 2 * (rows.len() / t_len), "softmax statistics");
            super::neon_attention::softmax_rows_from_stats_neon(rows, (r0, t_len), scale, st)
        },
        (_, Stats::Record(st)) => {
            for (i, (row, st)) in
                rows.chunks_exact_mut(t_len).zip(st.chunks_exact_mut(2)).enumerate()
            {
                let (max, inv) = softmax_row(row, r0 + i + 1, scale);
                st.copy_from_slice(&[max, inv]);
            }
        }
        (_, Stats::Replay(st)) => {
            for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(st.chunks_exact(2)).enumerate() {
                softmax_row_from_stats(row, r0 + i + 1, scale, (st[0], st[1]));
            }
        }
    }
}

/// The rows of `dS` of the queries `r0..` in place from those of `dP` (`ds`) and `P`
/// ([`softmax_grad_row`] on each).
pub(crate) fn softmax_grad_rows(
    isa: Isa,
    ds: &mut [f32],
    p: &[f32],
    (r0, t_len): (usize, usize),
    scale: f32,
) {
    assert!(ds.len() == p.len() && ds.len().is_multiple_of(t_len), "softmax gradient rows");
    assert!(r0 + ds.len() / t_len <= t_len, "softmax gradient rows");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (see `tile_row`); the shapes were checked above.
        Isa::Avx512 => unsafe {
            super::x86_attention_rows::softmax_grad_rows_avx512(ds, p, (r0, t_len), scale)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (see `tile_row`); the shapes were checked above.
        Isa::Avx2 => unsafe {
            super::x86_avx2_attention::softmax_grad_rows_avx2(ds, p, (r0, t_len), scale)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is available (see `tile_row`); the shapes were checked above.
        Isa::Neon => unsafe {
            super::neon_attention::softmax_grad_rows_neon(ds, p, (r0, t_len), scale)
        },
        _ => {
            let rows = ds.chunks_exact_mut(t_len).zip(p.chunks_exact(t_len));
            for (i, (d, p)) in rows.enumerate() {
                softmax_grad_row(d, p, r0 + i + 1, scale);
            }
        }
    }
}

/// `dst[c * rows + r] = src[r * cols + c]`: `dst` becomes the `cols x rows` transpose of `src`.
pub(crate) fn transpose_into(
    isa: Isa,
    dst: &mut Vec<f32>,
    src: &[f32],
    (rows, cols): (usize, usize),
) {
    assert_eq!(src.len(), rows * cols, "transpose");
    dst.resize(rows * cols, 0.0);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (see `tile_row`); both lengths are `rows * cols`.
        Isa::Avx512 => unsafe { super::x86_attention::transpose_avx512(dst, src, (rows, cols)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (see `tile_row`); both lengths are `rows * cols`.
        Isa::Avx2 => unsafe { super::x86_avx2_attention::transpose_avx2(dst, src, (rows, cols)) },
        _ => transpose_scalar(dst, src, (rows, cols), (0, 0)),
    }
}

/// The part of `transpose_into` from row `r_from` or column `c_from` on (what the 16 x 16
/// blocks of the SIMD path leave over; both `(0, 0)` for the whole matrix).
#[inline]
pub(crate) fn transpose_scalar(
    dst: &mut [f32],
    src: &[f32],
    (rows, cols): (usize, usize),
    (r_from, c_from): (usize, usize),
) {
    for (r, row) in src.chunks_exact(cols).enumerate() {
        let from = if r >= r_from { 0 } else { c_from };
        for (c, &v) in row.iter().enumerate().skip(from) {
            dst[c * rows + r] = v;
        }
    }
}

/// Copies rows of probabilities out to the caller's buffer (streaming stores on the SIMD
/// path: the caller's buffer is not read back here, so it need not pass through the caches).
pub(crate) fn store_rows(isa: Isa, dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "probability rows");
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (see `tile_row`); the lengths are equal.
        Isa::Avx512 => unsafe { super::x86_attention::stream_copy_avx512(dst, src) },
        _ => dst.copy_from_slice(src),
    }
}

/// Orders the streaming stores of [`store_rows`] before the buffer is handed on (at the end of
/// each head's task).
pub(crate) fn finish_stores(isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `sfence` only orders stores; SSE is part of x86-64.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    let _ = isa;
}

/// The key columns a row block ending at query `r1` computes: the live ones (`0..r1`), rounded
/// up to whole 16-lane vectors within the row.
pub(crate) fn live_cols(r1: usize, t_len: usize) -> usize {
    r1.next_multiple_of(LANES).min(t_len)
}

/// The query row blocks `(r0, r1)` of a sequence of `t_len` positions.
pub(crate) fn row_blocks(t_len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t_len).step_by(MR).map(move |r0| (r0, (r0 + MR).min(t_len)))
}

/// Rows `r0..r1` of the causal probabilities of one head into `rows` (`(r1 - r0) x T`, each
/// row zero after the diagonal), from `q` and the transposed keys `kt` (`hd x T`). Forward and
/// backward both come here, so the scores are the same tiles and the probabilities the same
/// bits.
pub(crate) fn probability_rows(
    isa: Isa,
    rows: &mut [f32],
    (q, kt): (&[f32], &[f32]),
    (r0, r1): (usize, usize),
    (t_len, hd): (usize, usize),
    stats: Stats,
) {
    let scale = 1.0 / (hd as f32).sqrt();
    if fused(isa, t_len) {
        #[cfg(target_arch = "x86_64")]
        let q = &q[r0 * hd..r1 * hd];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `fused` checked AVX-512 F and `t_len`; the shapes are those of the blocked
        // path below (checked by the callee).
        unsafe {
            use super::x86_attention_rows::probability_rows_avx512;
            let shape = (r0, t_len, hd);
            match stats {
                Stats::Record(st) => {
                    probability_rows_avx512::<false>(rows, (q, kt), shape, scale, (&[], st))
                }
                Stats::Replay(st) => {
                    probability_rows_avx512::<true>(rows, (q, kt), shape, scale, (st, &mut []))
                }
            }
        }
        return;
    }
    let scores = TileOperands { a: &q[r0 * hd..], a_rs: hd, a_cs: 1, b: kt, ldb: t_len, depth: hd };
    tile_row(isa, rows, t_len, (r1 - r0, live_cols(r1, t_len)), scores);
    softmax_rows(isa, rows, (r0, t_len), scale, stats);
}

/// Whether the SIMD path scores whole rows in registers (fused with the softmax, or with the
/// score gradient): rows of at most 8 vectors. The fused kernels compute the same entries with
/// the same operations as the blocked tiles and row passes.
fn fused(isa: Isa, t_len: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        return t_len <= super::x86_attention_rows::FUSED_MAX_T;
    }
    let _ = (isa, t_len);
    false
}

/// Rows `r0..r1` of `dS` into `ds` (`(r1 - r0) x T`): `dP = dO V^T` from `dout` and the
/// transposed values `vt` (`hd x T`), then [`softmax_grad_rows`] with the probabilities `p`.
pub(crate) fn score_gradient_rows(
    isa: Isa,
    (ds, p): (&mut [f32], &[f32]),
    (dout, vt): (&[f32], &[f32]),
    (r0, r1): (usize, usize),
    (t_len, hd): (usize, usize),
    scale: f32,
) {
    if fused(isa, t_len) {
        #[cfg(target_arch = "x86_64")]
        let dout = &dout[r0 * hd..r1 * hd];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `fused` checked AVX-512 F and `t_len`; the callee checks the shapes.
        unsafe {
            super::x86_attention_rows::score_gradient_rows_avx512(
                ds,
                p,
                (dout, vt),
                (r0, t_len, hd),
                scale,
            )
        };
        return;
    }
    let dp = TileOperands { a: &dout[r0 * hd..], a_rs: hd, a_cs: 1, b: vt, ldb: t_len, depth: hd };
    tile_row(isa, ds, t_len, (r1 - r0, live_cols(r1, t_len)), dp);
    softmax_grad_rows(isa, ds, p, (r0, t_len), scale);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SIMD path's exponential (`vscalefps` for the power of two) is `exp_scalar` bit for
    /// bit: every float of the range where results are denormal, a dense sample elsewhere, and
    /// the special values.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn scalef_exp_is_exp_scalar() {
        if !Isa::Avx512.is_available() {
            return;
        }
        let denormal = (-104.0f32).to_bits()..=(-87.0f32).to_bits();
        let negative = ((-0.0f32).to_bits()..=(-120.0f32).to_bits()).step_by(61);
        let positive = (0u32..=90.0f32.to_bits()).step_by(61);
        let special = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -104.0, 88.8, 88.72, 89.0];
        let bits = denormal.chain(negative).chain(positive).chain(special.map(f32::to_bits));
        let mut lanes = [0.0f32; LANES];
        let mut filled = 0;
        let check = |x: [f32; LANES]| {
            // SAFETY: AVX-512 F was checked above.
            let got = unsafe { super::super::x86_attention_rows::exp16_for_test(x) };
            for (&x, &g) in x.iter().zip(&got) {
                let want = exp_scalar(x);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "exp({x}): {g} vs {want}"
                );
            }
        };
        for b in bits {
            lanes[filled] = f32::from_bits(b);
            filled += 1;
            if filled == LANES {
                check(lanes);
                filled = 0;
            }
        }
        check(lanes);
    }

    /// The SIMD transpose (16 x 16 blocks and the scalar rest) is the plain one.
    #[test]
    fn transposes_agree() {
        for (rows, cols) in [(128, 32), (37, 20), (16, 16), (5, 3), (33, 48)] {
            let src = crate::testutil::pseudo_random(rows * cols, 9, 1.0);
            let mut want = vec![0.0; rows * cols];
            transpose_scalar(&mut want, &src, (rows, cols), (0, 0));
            for isa in Isa::available_among(&super::super::attention::ATTENTION_PATHS) {
                let mut got = Vec::new();
                transpose_into(isa, &mut got, &src, (rows, cols));
                assert_eq!(got, want, "{isa:?} {rows}x{cols}");
            }
        }
    }

    /// The streaming copy moves every element, whatever the alignment of its ends.
    #[test]
    fn row_copies_agree() {
        let src = crate::testutil::pseudo_random(300, 3, 1.0);
        for isa in Isa::available_among(&super::super::attention::ATTENTION_PATHS) {
            for (from, len) in [(0, 300), (1, 299), (3, 17), (5, 0), (7, 64), (2, 15)] {
                let mut dst = vec![0.0; 300];
                store_rows(isa, &mut dst[from..from + len], &src[from..from + len]);
                finish_stores(isa);
                assert_eq!(&dst[from..from + len], &src[from..from + len], "{isa:?} {from}+{len}");
            }
        }
    }
}
