//! AVX2 + FMA exponential passes; the scalar twins in `exp.rs` define their exact semantics.
//!
//! Eight lanes per vector: the 16 lane-ordered partial sums of the twins are kept as two
//! vectors (lanes 0-7 and 8-15 of each run of 16 elements), and the power of two is applied as
//! the twin applies it, by two exact multiplications (AVX2 has no `vscalefps`). Bit-identical.

use super::exp::{EXP_HI, EXP_LO, LANES, LN2_HI, LN2_LO, LOG2E, POLY, finish_lanes};
use std::arch::x86_64::*;

const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// 8 lanes of `exp_scalar`, operation for operation.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8(x: __m256) -> __m256 {
    // max_ps(a, b) is `a > b ? a : b` and min_ps(a, b) `a < b ? a : b`: NaN in `b` passes.
    let x = _mm256_max_ps(_mm256_set1_ps(EXP_LO), x);
    let x = _mm256_min_ps(_mm256_set1_ps(EXP_HI), x);
    let n = _mm256_round_ps::<ROUND_NEAREST>(_mm256_mul_ps(x, _mm256_set1_ps(LOG2E)));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let z = _mm256_mul_ps(r, r);
    let mut p = _mm256_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(p, z, r), _mm256_set1_ps(1.0));
    // `n` is integral in [-150, 128] (NaN lanes give garbage powers, but `y` is NaN there).
    let n = _mm256_cvtps_epi32(n);
    let n1 = _mm256_srai_epi32(n, 1);
    let pow2 = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23))
    };
    _mm256_mul_ps(_mm256_mul_ps(y, pow2(n1)), pow2(_mm256_sub_epi32(n, n1)))
}

/// The load/store mask of the first `min(rest, 8)` lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn lane_mask(rest: usize) -> __m256i {
    let m = super::x86_avx2_bf16::mask8(rest);
    // SAFETY: `m` holds exactly 8 i32.
    unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
}

/// The two partial-sum vectors to the final sum, as the scalar twin finishes them.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn finish(acc: [__m256; 2]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds exactly 16 f32.
    unsafe {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[1]);
    }
    finish_lanes(&lanes)
}

/// `acc + e` in the lanes of `mask`, `acc` elsewhere.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn masked_add(acc: __m256, e: __m256, mask: __m256i) -> __m256 {
    _mm256_blendv_ps(acc, _mm256_add_ps(acc, e), _mm256_castsi256_ps(mask))
}

/// `row[i] = exp(row[i] * scale - shift) * mul`; returns the sum of the exponentials.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_affine_avx2(row: &mut [f32], scale: f32, shift: f32, mul: f32) -> f32 {
    let (sc, sh, mu) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift), _mm256_set1_ps(mul));
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < row.len() {
        let mask = lane_mask(row.len() - i);
        // SAFETY: `mask` selects only the in-bounds elements `i .. min(i + 8, len)`; masked-off
        // lanes are neither read nor written.
        unsafe {
            let p = row.as_mut_ptr().add(i);
            let v = _mm256_maskload_ps(p, mask);
            let e = exp8(_mm256_sub_ps(_mm256_mul_ps(v, sc), sh));
            let half = (i / 8) % 2;
            acc[half] = masked_add(acc[half], e, mask);
            _mm256_maskstore_ps(p, mask, _mm256_mul_ps(e, mu));
        }
        i += 8;
    }
    finish(acc)
}

/// `sum_i exp(row[i] - shift)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn sum_exp_avx2(row: &[f32], shift: f32) -> f32 {
    let sh = _mm256_set1_ps(shift);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    while i < row.len() {
        let mask = lane_mask(row.len() - i);
        // SAFETY: `mask` selects only in-bounds elements; masked-off lanes are not read.
        let v = unsafe { _mm256_maskload_ps(row.as_ptr().add(i), mask) };
        let half = (i / 8) % 2;
        acc[half] = masked_add(acc[half], exp8(_mm256_sub_ps(v, sh)), mask);
        i += 8;
    }
    finish(acc)
}

/// 8 lanes of `sigmoid_scalar`.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn sigmoid8(g: __m256) -> __m256 {
    let one = _mm256_set1_ps(1.0);
    let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_div_ps(one, _mm256_add_ps(one, e))
}

/// `h = (gate * sigmoid(gate)) * up`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_forward_avx2(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == h.len() && up.len() == h.len(), "swiglu lengths");
    let mut i = 0;
    while i < h.len() {
        let mask = lane_mask(h.len() - i);
        // SAFETY: `mask` selects only elements below the common length; masked-off lanes are
        // neither read nor written.
        unsafe {
            let g = _mm256_maskload_ps(gate.as_ptr().add(i), mask);
            let u = _mm256_maskload_ps(up.as_ptr().add(i), mask);
            let y = _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), u);
            _mm256_maskstore_ps(h.as_mut_ptr().add(i), mask, y);
        }
        i += 8;
    }
}

/// `gate <- dh * up * s * (1 + gate * (1 - s))`, `up <- dh * (gate * s)`.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn swiglu_backward_avx2(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    assert!(up.len() == gate.len() && dh.len() == gate.len(), "swiglu lengths");
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < gate.len() {
        let mask = lane_mask(gate.len() - i);
        // SAFETY: `mask` selects only elements below the common length; masked-off lanes are
        // neither read nor written.
        unsafe {
            let gp = gate.as_mut_ptr().add(i);
            let up_p = up.as_mut_ptr().add(i);
            let g = _mm256_maskload_ps(gp, mask);
            let u = _mm256_maskload_ps(up_p, mask);
            let d = _mm256_maskload_ps(dh.as_ptr().add(i), mask);
            let s = sigmoid8(g);
            let silu = _mm256_mul_ps(g, s);
            let tail = _mm256_add_ps(one, _mm256_mul_ps(g, _mm256_sub_ps(one, s)));
            let dg = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(d, u), s), tail);
            _mm256_maskstore_ps(gp, mask, dg);
            _mm256_maskstore_ps(up_p, mask, _mm256_mul_ps(d, silu));
        }
        i += 8;
    }
}
