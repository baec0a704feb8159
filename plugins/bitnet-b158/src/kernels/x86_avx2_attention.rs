//! AVX2 + FMA passes of causal attention; the scalar twins in `attention_rows.rs` define their
//! exact semantics, and each pass here performs the same operations in the same order:
//! - register tiles of up to 8 rows x 8 columns, each entry one chain of fused multiply-adds in
//!   `p` order from zero;
//! - the softmax rows and score-gradient rows with their 16 lane-ordered partial maxima and
//!   sums kept as two 8-lane vectors (lanes 0-7 and 8-15 of each run of 16 elements), reduced
//!   by the same trees (`max_lanes`, `sum_lanes`), and the exponential of `x86_avx2_exp`.
//!
//! Bit-identical to the scalar twins (and so to the AVX-512 path).

use super::attention_rows::{MR, TileOperands, max_lanes, sum_lanes};
use super::exp::LANES;
use super::x86_avx2_exp::{exp8, lane_mask};
use std::arch::x86_64::*;

/// `c[r * ldc + j] = sum_p a[r * a_rs + p * a_cs] * b[p * ldb + j]` for `r < rows`, `j < cols`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `1 <= rows <= MR`, `(rows - 1) * ldc + cols <= c.len()`,
/// and when `depth > 0`, `(rows - 1) * a_rs + (depth - 1) * a_cs < a.len()` and
/// `(depth - 1) * ldb + cols <= b.len()` (what `tile_row` asserts).
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn tile_row_avx2(
    c: &mut [f32],
    ldc: usize,
    (rows, cols): (usize, usize),
    t: &TileOperands,
) {
    assert!((1..=MR).contains(&rows), "tile rows");
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    for j in (0..cols).step_by(8) {
        let mask = lane_mask(cols - j);
        let mut acc = [_mm256_setzero_ps(); MR];
        for p in 0..t.depth {
            // SAFETY: columns j .. min(j + 8, cols) of b's row p are in bounds (the contract);
            // masked-off lanes are not read. Each a element r < rows, p < depth is in bounds.
            unsafe {
                let b = _mm256_maskload_ps(bp.add(p * t.ldb + j), mask);
                for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                    let a = _mm256_broadcast_ss(&*ap.add(r * t.a_rs + p * t.a_cs));
                    *acc_r = _mm256_fmadd_ps(a, b, *acc_r);
                }
            }
        }
        for (r, &acc_r) in acc.iter().enumerate().take(rows) {
            // SAFETY: columns j .. min(j + 8, cols) of output row r < rows are in bounds (the
            // contract); masked-off lanes are not written.
            unsafe { _mm256_maskstore_ps(c.as_mut_ptr().add(r * ldc + j), mask, acc_r) };
        }
    }
}

/// The two partial vectors as the 16 lanes of the scalar twins.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lanes_of(acc: [__m256; 2]) -> [f32; LANES] {
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds exactly 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
    }
    lanes
}

/// `new` in the lanes of `mask`, `old` elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn select(old: __m256, new: __m256, mask: __m256i) -> __m256 {
    _mm256_blendv_ps(old, new, _mm256_castsi256_ps(mask))
}

/// `softmax_row`: the softmax of `row[..live]` scaled by `scale` in place, zeros after;
/// returns `(max, 1 / sum)`.
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32], live: usize, scale: f32) -> (f32, f32) {
    let (live, tail) = row.split_at_mut(live);
    let n = live.len();
    let p = live.as_mut_ptr();
    let mut m = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for i in (0..n).step_by(8) {
        let mask = lane_mask(n - i);
        // SAFETY: `mask` selects the in-bounds elements i .. min(i + 8, n) only.
        let v = unsafe { _mm256_maskload_ps(p.add(i), mask) };
        let h = (i / 8) % 2;
        m[h] = select(m[h], _mm256_max_ps(v, m[h]), mask);
    }
    let max = max_lanes(lanes_of(m)) * scale;
    let (sc, mx) = (_mm256_set1_ps(scale), _mm256_set1_ps(max));
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in (0..n).step_by(8) {
        let mask = lane_mask(n - i);
        // SAFETY: as above; masked-off lanes are neither read nor written.
        unsafe {
            let v = _mm256_maskload_ps(p.add(i), mask);
            let e = exp8(_mm256_sub_ps(_mm256_mul_ps(v, sc), mx));
            let h = (i / 8) % 2;
            acc[h] = select(acc[h], _mm256_add_ps(acc[h], e), mask);
            _mm256_maskstore_ps(p.add(i), mask, e);
        }
    }
    let inv = 1.0 / sum_lanes(lanes_of(acc));
    let iv = _mm256_set1_ps(inv);
    for i in (0..n).step_by(8) {
        let mask = lane_mask(n - i);
        // SAFETY: as above.
        unsafe {
            let v = _mm256_maskload_ps(p.add(i), mask);
            _mm256_maskstore_ps(p.add(i), mask, _mm256_mul_ps(v, iv));
        }
    }
    tail.fill(0.0);
    (max, inv)
}

/// `softmax_row_from_stats`: `row[i] = exp(row[i] * scale - max) * inv` on `..live`, zeros
/// after.
#[target_feature(enable = "avx2,fma")]
fn softmax_row_from_stats_avx2(row: &mut [f32], live: usize, scale: f32, (max, inv): (f32, f32)) {
    let (live, tail) = row.split_at_mut(live);
    let n = live.len();
    let p = live.as_mut_ptr();
    let (sc, mx, iv) = (_mm256_set1_ps(scale), _mm256_set1_ps(max), _mm256_set1_ps(inv));
    for i in (0..n).step_by(8) {
        let mask = lane_mask(n - i);
        // SAFETY: `mask` selects the in-bounds elements i .. min(i + 8, n) only.
        unsafe {
            let v = _mm256_maskload_ps(p.add(i), mask);
            let e = exp8(_mm256_sub_ps(_mm256_mul_ps(v, sc), mx));
            _mm256_maskstore_ps(p.add(i), mask, _mm256_mul_ps(e, iv));
        }
    }
    tail.fill(0.0);
}

/// `softmax_rows` with recorded (`st` written) statistics: `rows` holds rows of `t_len`, the
/// first of them query `r0`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_rows_avx2(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    st: &mut [f32],
) {
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(st.chunks_exact_mut(2)).enumerate() {
        let (max, inv) = softmax_row_avx2(row, (r0 + i + 1).min(t_len), scale);
        st.copy_from_slice(&[max, inv]);
    }
}

/// `softmax_rows` replaying recorded statistics `st`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_rows_from_stats_avx2(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    st: &[f32],
) {
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(st.chunks_exact(2)).enumerate() {
        softmax_row_from_stats_avx2(row, (r0 + i + 1).min(t_len), scale, (st[0], st[1]));
    }
}

/// `softmax_grad_rows`: each row `d` of `dP` becomes `p * (d - sum(d * p)) * scale` on its
/// live prefix, zeros after.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `ds` and `p` have the same length, a multiple of `t_len`.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn softmax_grad_rows_avx2(
    ds: &mut [f32],
    p: &[f32],
    (r0, t_len): (usize, usize),
    scale: f32,
) {
    assert!(ds.len() == p.len(), "softmax gradient rows");
    let sc = _mm256_set1_ps(scale);
    for (row, (d, pr)) in ds.chunks_exact_mut(t_len).zip(p.chunks_exact(t_len)).enumerate() {
        let n = (r0 + row + 1).min(t_len);
        let (dp, pp) = (d.as_mut_ptr(), pr.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 2];
        for i in (0..n).step_by(8) {
            let mask = lane_mask(n - i);
            // SAFETY: `mask` selects elements i .. min(i + 8, n) <= t_len of both rows only.
            unsafe {
                let dv = _mm256_maskload_ps(dp.add(i), mask);
                let pv = _mm256_maskload_ps(pp.add(i), mask);
                let h = (i / 8) % 2;
                acc[h] = select(acc[h], _mm256_fmadd_ps(dv, pv, acc[h]), mask);
            }
        }
        let sum = _mm256_set1_ps(sum_lanes(lanes_of(acc)));
        for i in (0..n).step_by(8) {
            let mask = lane_mask(n - i);
            // SAFETY: as above; masked-off lanes are not written.
            unsafe {
                let dv = _mm256_maskload_ps(dp.add(i), mask);
                let pv = _mm256_maskload_ps(pp.add(i), mask);
                let y = _mm256_mul_ps(_mm256_mul_ps(pv, _mm256_sub_ps(dv, sum)), sc);
                _mm256_maskstore_ps(dp.add(i), mask, y);
            }
        }
        d[n..].fill(0.0);
    }
}

/// `transpose_scalar` of the whole matrix, compiled for AVX2.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn transpose_avx2(dst: &mut [f32], src: &[f32], (rows, cols): (usize, usize)) {
    super::attention_rows::transpose_scalar(dst, src, (rows, cols), (0, 0))
}
