//! AVX-512 row passes of causal attention: the softmax of score rows (recording or replaying
//! its statistics) and the score gradient rows, over memory for any `T` and in registers
//! (fused with the scores) for `T <= 128`. The scalar twins in `attention_rows.rs` define their
//! exact semantics.

use super::attention_rows::MR;
use super::exp::LANES;
use super::x86_attention::{load_masked, store_masked};
use super::x86_exp::exp16;
use super::x86_lanes::mask_of;
use std::arch::x86_64::*;

/// `attention_rows::sum_lanes`: lane `i` becomes `x[i] + x[i ^ s]` for `s = 8, 4, 2, 1`; then
/// lane 0.
#[inline]
#[target_feature(enable = "avx512f")]
fn sum_lanes(x: __m512) -> f32 {
    let x = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0x4E>(x, x));
    let x = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0xB1>(x, x));
    let x = _mm512_add_ps(x, _mm512_permute_ps::<0x4E>(x));
    let x = _mm512_add_ps(x, _mm512_permute_ps::<0xB1>(x));
    _mm512_cvtss_f32(x)
}

/// `attention_rows::max_lanes`: lane `i` becomes `max_ps(x[i ^ s], x[i])` for `s = 8, 4, 2, 1`.
#[inline]
#[target_feature(enable = "avx512f")]
fn max_lanes(x: __m512) -> f32 {
    let x = _mm512_max_ps(_mm512_shuffle_f32x4::<0x4E>(x, x), x);
    let x = _mm512_max_ps(_mm512_shuffle_f32x4::<0xB1>(x, x), x);
    let x = _mm512_max_ps(_mm512_permute_ps::<0x4E>(x), x);
    let x = _mm512_max_ps(_mm512_permute_ps::<0xB1>(x), x);
    _mm512_cvtss_f32(x)
}

/// `row[live..] = 0`.
#[inline]
#[target_feature(enable = "avx512f")]
fn zero_tail(row: &mut [f32], live: usize) {
    let zero = _mm512_setzero_ps();
    let mut i = live;
    while i < row.len() {
        // SAFETY: the mask selects only elements below `row.len()`.
        unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr().add(i), mask_of(row.len() - i), zero) };
        i += LANES;
    }
}

/// 16 lanes of `exp_scalar`, for the tests.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[cfg(test)]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp16_for_test(x: [f32; LANES]) -> [f32; LANES] {
    let mut out = [0.0f32; LANES];
    // SAFETY: both arrays hold exactly 16 f32.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
    out
}

/// The largest of `row[..live]` (`max_ps` per lane, then [`max_lanes`]).
#[inline]
#[target_feature(enable = "avx512f")]
fn row_max(row: &[f32], live: usize) -> f32 {
    let (ptr, live) = (row.as_ptr(), live.min(row.len()));
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..live).step_by(LANES) {
        let mask = mask_of(live - i);
        // SAFETY: `mask` selects only elements below `live <= row.len()`.
        let v = unsafe { load_masked(mask, ptr.add(i)) };
        m = _mm512_mask_max_ps(m, mask, v, m);
    }
    max_lanes(m)
}

/// `row[i] = exp(row[i] * scale - max)` on `..live`; returns the sum of the exponentials.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp_row(row: &mut [f32], live: usize, scale: f32, max: f32) -> f32 {
    let (ptr, live) = (row.as_mut_ptr(), live.min(row.len()));
    let (sc, sh) = (_mm512_set1_ps(scale), _mm512_set1_ps(max));
    let mut acc = _mm512_setzero_ps();
    for i in (0..live).step_by(LANES) {
        let mask = mask_of(live - i);
        // SAFETY: `mask` selects only elements below `live <= row.len()`; masked-off lanes are
        // neither read nor written.
        unsafe {
            let v = load_masked(mask, ptr.add(i));
            let e = exp16(_mm512_sub_ps(_mm512_mul_ps(v, sc), sh));
            acc = _mm512_mask_add_ps(acc, mask, acc, e);
            store_masked(ptr.add(i), mask, e);
        }
    }
    sum_lanes(acc)
}

/// `row[..live] *= inv`, zeros after.
#[inline]
#[target_feature(enable = "avx512f")]
fn scale_row(row: &mut [f32], live: usize, inv: f32) {
    let (ptr, live) = (row.as_mut_ptr(), live.min(row.len()));
    let iv = _mm512_set1_ps(inv);
    for i in (0..live).step_by(LANES) {
        let mask = mask_of(live - i);
        // SAFETY: as in `exp_row`.
        unsafe {
            let v = load_masked(mask, ptr.add(i));
            store_masked(ptr.add(i), mask, _mm512_mul_ps(v, iv));
        }
    }
    zero_tail(row, live);
}

/// `attention_rows::softmax_rows` recording the statistics: row `i` of `rows` (query `r0 + i`)
/// is live on `..=r0 + i`. Each step runs over all the rows before the next, so the rows'
/// chains (reductions, division) overlap.
///
/// # Safety
/// AVX-512 F (the shapes are checked).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn softmax_rows_avx512(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    stats: &mut [f32],
) {
    let n = rows.len() / t_len;
    assert!(n <= MR && r0 + n <= t_len && stats.len() == 2 * n, "softmax rows");
    let mut max = [0.0f32; MR];
    for (i, row) in rows.chunks_exact(t_len).enumerate() {
        // `scale > 0` and rounding is monotonic: the largest scaled score is the scaled largest.
        max[i] = row_max(row, r0 + i + 1) * scale;
    }
    let mut sum = [0.0f32; MR];
    for (i, row) in rows.chunks_exact_mut(t_len).enumerate() {
        sum[i] = exp_row(row, r0 + i + 1, scale, max[i]);
    }
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(stats.chunks_exact_mut(2)).enumerate() {
        let inv = 1.0 / sum[i];
        scale_row(row, r0 + i + 1, inv);
        (st[0], st[1]) = (max[i], inv);
    }
}

/// `attention_rows::softmax_rows` from recorded statistics:
/// `row[j] = exp(row[j] * scale - max) * inv` on the live part, zeros after.
///
/// # Safety
/// AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn softmax_rows_from_stats_avx512(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    stats: &[f32],
) {
    let sc = _mm512_set1_ps(scale);
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(stats.chunks_exact(2)).enumerate() {
        let live = (r0 + i + 1).min(row.len());
        let (sh, iv) = (_mm512_set1_ps(st[0]), _mm512_set1_ps(st[1]));
        let ptr = row.as_mut_ptr();
        for j in (0..live).step_by(LANES) {
            let mask = mask_of(live - j);
            // SAFETY: `mask` selects only elements below `live <= row.len()`.
            unsafe {
                let v = load_masked(mask, ptr.add(j));
                let e = exp16(_mm512_sub_ps(_mm512_mul_ps(v, sc), sh));
                store_masked(ptr.add(j), mask, _mm512_mul_ps(e, iv));
            }
        }
        zero_tail(row, live);
    }
}

/// `attention_rows::softmax_grad_rows`: per row, `s = sum d p` over the live part (16 fused
/// partial sums), then `d = (p * (d - s)) * scale` there, zeros after. All the sums first, so
/// their reductions overlap.
///
/// # Safety
/// AVX-512 F (the shapes are checked).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn softmax_grad_rows_avx512(
    ds: &mut [f32],
    p: &[f32],
    (r0, t_len): (usize, usize),
    scale: f32,
) {
    let n = ds.len() / t_len;
    assert!(ds.len() == p.len() && n <= MR && r0 + n <= t_len, "softmax gradient rows");
    let mut sums = [0.0f32; MR];
    for (i, (d, p)) in ds.chunks_exact(t_len).zip(p.chunks_exact(t_len)).enumerate() {
        let live = r0 + i + 1;
        let mut acc = _mm512_setzero_ps();
        for j in (0..live).step_by(LANES) {
            let mask = mask_of(live - j);
            // SAFETY: `mask` selects only elements below `live <= t_len`, in both rows.
            unsafe {
                let dv = load_masked(mask, d.as_ptr().add(j));
                let pv = load_masked(mask, p.as_ptr().add(j));
                acc = _mm512_mask3_fmadd_ps(dv, pv, acc, mask);
            }
        }
        sums[i] = sum_lanes(acc);
    }
    let sc = _mm512_set1_ps(scale);
    for (i, (d, p)) in ds.chunks_exact_mut(t_len).zip(p.chunks_exact(t_len)).enumerate() {
        let live = r0 + i + 1;
        let sum = _mm512_set1_ps(sums[i]);
        let (dp, pp) = (d.as_mut_ptr(), p.as_ptr());
        for j in (0..live).step_by(LANES) {
            let mask = mask_of(live - j);
            // SAFETY: as above; masked-off lanes are neither read nor written.
            unsafe {
                let dv = load_masked(mask, dp.add(j));
                let pv = load_masked(mask, pp.add(j));
                let g = _mm512_mul_ps(_mm512_mul_ps(pv, _mm512_sub_ps(dv, sum)), sc);
                store_masked(dp.add(j), mask, g);
            }
        }
        zero_tail(d, live);
    }
}

/// Rows of at most this many keys (8 vectors) are scored and normalised in registers.
pub(crate) const FUSED_MAX_T: usize = 8 * LANES;

/// `R` rows of `a . bt` over the first `NV` 16-lane vectors of columns (`a`: `R` rows of
/// `depth` at row stride `lda`; `bt`: `depth` rows at stride `ldb`, the last vector masked by
/// `last`): every entry one chain of fused multiply-adds over `depth` from zero, as `tile_rv`.
///
/// # Safety
/// AVX-512 F; `a[r * lda + p]` for `r < R`, `p < depth`, and the first `16 (NV - 1)` floats
/// plus the `last` lanes after them of each `bt` row `p < depth` are in bounds.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn product_rows<const R: usize, const NV: usize>(
    (a, lda): (*const f32, usize),
    (bt, ldb): (*const f32, usize),
    depth: usize,
    last: __mmask16,
) -> [[__m512; NV]; R] {
    let mut acc = [[_mm512_setzero_ps(); NV]; R];
    for p in 0..depth {
        // SAFETY: in bounds by the caller's contract; masked-off lanes are not read.
        unsafe {
            let b = bt.add(p * ldb);
            let av: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(*a.add(r * lda + p)));
            for v in 0..NV {
                let bv = if v + 1 == NV {
                    _mm512_maskz_loadu_ps(last, b.add(v * LANES))
                } else {
                    _mm512_loadu_ps(b.add(v * LANES))
                };
                for (acc, &av) in acc.iter_mut().zip(&av) {
                    acc[v] = _mm512_fmadd_ps(av, bv, acc[v]);
                }
            }
        }
    }
    acc
}

/// Stores the `NV` vectors of a row (`last` masks the final one) and zeros the rest of the
/// row (`t_len` floats at `out`).
///
/// # Safety
/// AVX-512 F; `out` holds `t_len >= 16 (NV - 1) + popcount(last)` floats.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_row<const NV: usize>(
    out: *mut f32,
    t_len: usize,
    row: &[__m512; NV],
    last: __mmask16,
) {
    // SAFETY: in bounds by the caller's contract.
    unsafe {
        for (v, &x) in row.iter().enumerate() {
            store_masked(out.add(v * LANES), if v + 1 == NV { last } else { 0xFFFF }, x);
        }
        let zero = _mm512_setzero_ps();
        let mut j = NV * LANES;
        while j < t_len {
            _mm512_mask_storeu_ps(out.add(j), mask_of(t_len - j), zero);
            j += LANES;
        }
    }
}

/// The live lanes of vector `v` of a row live on `..live`.
#[inline(always)]
fn live_mask(live: usize, v: usize) -> __mmask16 {
    mask_of(live.saturating_sub(v * LANES))
}

/// The row-pair kernel of `probability_rows_avx512`: rows `t0..t0 + R` of the scores against
/// `NV` key vectors, then their softmax in registers (`REPLAY`: from `stats`, else recording
/// into it), stored as full rows of `out`.
///
/// # Safety
/// AVX-512 F; `q` holds `R` rows of `hd` at `t0`, `kt` is `hd x t_len`, `out` holds `R` rows of
/// `t_len`, `16 (NV - 1) < t_len` and `t0 + R <= 16 NV`.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_pair<const R: usize, const NV: usize, const REPLAY: bool>(
    out: *mut f32,
    (q, kt): (*const f32, *const f32),
    (t0, t_len, hd): (usize, usize, usize),
    scale: f32,
    stats: &mut [f32; 4],
) {
    let last = mask_of(t_len - (NV - 1) * LANES);
    // SAFETY: the operands are in bounds by the caller's contract.
    let mut e = unsafe { product_rows::<R, NV>((q, hd), (kt, t_len), hd, last) };
    // Each step for all rows before the next, so the rows' reductions overlap.
    let live: [usize; R] = std::array::from_fn(|r| t0 + r + 1);
    let max: [f32; R] = std::array::from_fn(|r| {
        if REPLAY {
            stats[2 * r]
        } else {
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for (v, &x) in e[r].iter().enumerate() {
                m = _mm512_mask_max_ps(m, live_mask(live[r], v), x, m);
            }
            // `scale > 0` and rounding is monotonic: the largest scaled score is the scaled
            // largest.
            max_lanes(m) * scale
        }
    });
    let sc = _mm512_set1_ps(scale);
    let mut sum = [_mm512_setzero_ps(); R];
    for (r, (e, sum)) in e.iter_mut().zip(&mut sum).enumerate() {
        let sh = _mm512_set1_ps(max[r]);
        for (v, e) in e.iter_mut().enumerate() {
            *e = exp16(_mm512_sub_ps(_mm512_mul_ps(*e, sc), sh));
            *sum = _mm512_mask_add_ps(*sum, live_mask(live[r], v), *sum, *e);
        }
    }
    let inv: [f32; R] =
        std::array::from_fn(|r| if REPLAY { stats[2 * r + 1] } else { 1.0 / sum_lanes(sum[r]) });
    for r in 0..R {
        let iv = _mm512_set1_ps(inv[r]);
        let p: [__m512; NV] =
            std::array::from_fn(|v| _mm512_maskz_mul_ps(live_mask(live[r], v), e[r][v], iv));
        // SAFETY: row `r < R` of `out` holds `t_len` floats (caller).
        unsafe { store_row::<NV>(out.add(r * t_len), t_len, &p, last) };
        if !REPLAY {
            stats[2 * r] = max[r];
            stats[2 * r + 1] = inv[r];
        }
    }
}

/// The row-pair kernel of `score_gradient_rows_avx512`: rows `t0..t0 + R` of
/// `dP = dO V^T` against `NV` vectors, then `dS = P * (dP - sum(P * dP)) * scale` on the live
/// part, zeros after, stored as full rows of `ds`.
///
/// # Safety
/// AVX-512 F; `dout` holds `R` rows of `hd` at `t0`, `vt` is `hd x t_len`, `ds` and `p` hold
/// `R` rows of `t_len`, `16 (NV - 1) < t_len` and `t0 + R <= 16 NV`.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn grad_pair<const R: usize, const NV: usize>(
    ds: *mut f32,
    p: *const f32,
    (dout, vt): (*const f32, *const f32),
    (t0, t_len, hd): (usize, usize, usize),
    scale: f32,
) {
    let last = mask_of(t_len - (NV - 1) * LANES);
    // SAFETY: the operands are in bounds by the caller's contract.
    let dp = unsafe { product_rows::<R, NV>((dout, hd), (vt, t_len), hd, last) };
    let sc = _mm512_set1_ps(scale);
    for (r, dp) in dp.iter().enumerate() {
        let live = t0 + r + 1;
        // SAFETY: row `r` of `p` holds `t_len` floats; the live lanes are below `t_len`.
        let pv: [__m512; NV] = std::array::from_fn(|v| unsafe {
            _mm512_maskz_loadu_ps(live_mask(live, v), p.add(r * t_len + v * LANES))
        });
        let mut acc = _mm512_setzero_ps();
        for v in 0..NV {
            acc = _mm512_mask3_fmadd_ps(dp[v], pv[v], acc, live_mask(live, v));
        }
        let sum = _mm512_set1_ps(sum_lanes(acc));
        let g: [__m512; NV] = std::array::from_fn(|v| {
            let g = _mm512_mul_ps(_mm512_mul_ps(pv[v], _mm512_sub_ps(dp[v], sum)), sc);
            _mm512_maskz_mov_ps(live_mask(live, v), g)
        });
        // SAFETY: row `r < R` of `ds` holds `t_len` floats (caller).
        unsafe { store_row::<NV>(ds.add(r * t_len), t_len, &g, last) };
    }
}

/// Calls `$kernel::<R, NV, ...>` with `NV` = `$nv` in `1..=8`.
macro_rules! by_nv {
    ($nv:expr, $kernel:ident, <$r:literal $(, $extra:ident)?>, $($arg:expr),*) => {
        match $nv {
            1 => $kernel::<$r, 1 $(, $extra)?>($($arg),*),
            2 => $kernel::<$r, 2 $(, $extra)?>($($arg),*),
            3 => $kernel::<$r, 3 $(, $extra)?>($($arg),*),
            4 => $kernel::<$r, 4 $(, $extra)?>($($arg),*),
            5 => $kernel::<$r, 5 $(, $extra)?>($($arg),*),
            6 => $kernel::<$r, 6 $(, $extra)?>($($arg),*),
            7 => $kernel::<$r, 7 $(, $extra)?>($($arg),*),
            _ => $kernel::<$r, 8 $(, $extra)?>($($arg),*),
        }
    };
}

/// `attention_rows::probability_rows` for `t_len <= FUSED_MAX_T`: the rows `r0..r0 + n` of
/// `rows` (`n x t_len`) from the query rows `q` (`n x hd`) and `kt` (`hd x t_len`), two rows at
/// a time with the scores kept in registers. The statistics (`2 n`) are read from `stats.0`
/// (`REPLAY`) or written to `stats.1`.
///
/// # Safety
/// AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn probability_rows_avx512<const REPLAY: bool>(
    rows: &mut [f32],
    (q, kt): (&[f32], &[f32]),
    (r0, t_len, hd): (usize, usize, usize),
    scale: f32,
    (stats_in, stats_out): (&[f32], &mut [f32]),
) {
    let n = rows.len() / t_len;
    assert!(t_len <= FUSED_MAX_T && r0 + n <= t_len && rows.len() == n * t_len, "fused rows");
    assert!(q.len() >= n * hd && kt.len() >= hd * t_len, "fused rows");
    let stats_len = if REPLAY { stats_in.len() } else { stats_out.len() };
    assert_eq!(stats_len, 2 * n, "softmax statistics");
    for i in (0..n).step_by(2) {
        let t0 = r0 + i;
        let nv = (t0 + 2).min(t_len).div_ceil(LANES);
        let out = rows[i * t_len..].as_mut_ptr();
        let ops = (q[i * hd..].as_ptr(), kt.as_ptr());
        let pair = 2.min(n - i);
        // Element by element: a slice copy of 2-4 floats is a `memmove` call.
        let mut st = [0.0f32; 4];
        if REPLAY {
            for (j, s) in st.iter_mut().enumerate().take(2 * pair) {
                *s = stats_in[2 * i + j];
            }
        }
        // SAFETY: rows `i..i + pair` of `rows` and `q` are in bounds, `kt` is `hd x t_len`,
        // `16 (nv - 1) < min(t0 + 2, t_len) <= t_len` and `t0 + pair <= 16 nv`.
        unsafe {
            if pair == 2 {
                by_nv!(nv, softmax_pair, <2, REPLAY>, out, ops, (t0, t_len, hd), scale, &mut st);
            } else {
                by_nv!(nv, softmax_pair, <1, REPLAY>, out, ops, (t0, t_len, hd), scale, &mut st);
            }
        }
        if !REPLAY {
            for (j, &s) in st.iter().enumerate().take(2 * pair) {
                stats_out[2 * i + j] = s;
            }
        }
    }
}

/// `attention_rows::score_gradient_rows` for `t_len <= FUSED_MAX_T`: the rows `r0..r0 + n` of
/// `dS` into `ds` (`n x t_len`) from those of `dO` (`n x hd`), `vt` (`hd x t_len`) and `P`
/// (`p`, `n x t_len`), two rows at a time with `dP` kept in registers.
///
/// # Safety
/// AVX-512 F (the shapes are checked).
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn score_gradient_rows_avx512(
    ds: &mut [f32],
    p: &[f32],
    (dout, vt): (&[f32], &[f32]),
    (r0, t_len, hd): (usize, usize, usize),
    scale: f32,
) {
    let n = ds.len() / t_len;
    assert!(t_len <= FUSED_MAX_T && r0 + n <= t_len && p.len() == ds.len(), "fused rows");
    assert!(dout.len() >= n * hd && vt.len() >= hd * t_len, "fused rows");
    for i in (0..n).step_by(2) {
        let t0 = r0 + i;
        let nv = (t0 + 2).min(t_len).div_ceil(LANES);
        let (out, pp) = (ds[i * t_len..].as_mut_ptr(), p[i * t_len..].as_ptr());
        let ops = (dout[i * hd..].as_ptr(), vt.as_ptr());
        // SAFETY: as in `probability_rows_avx512`, with `p` shaped as `ds`.
        unsafe {
            if n - i >= 2 {
                by_nv!(nv, grad_pair, <2>, out, pp, ops, (t0, t_len, hd), scale);
            } else {
                by_nv!(nv, grad_pair, <1>, out, pp, ops, (t0, t_len, hd), scale);
            }
        }
    }
}
