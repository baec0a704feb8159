//! AVX-512 exponential passes; the scalar twins in `exp.rs` define their exact semantics.

use super::exp::{EXP_HI, EXP_LO, LANES, LN2_HI, LN2_LO, LOG2E, POLY, finish_lanes};
use super::x86_lanes::mask_of;
use std::arch::x86_64::*;

const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// 16 lanes of `exp_scalar`: the same range reduction and polynomial, and the power of two
/// applied by `vscalefps` (`y * 2^n` rounded once, which is what `exp_scalar`'s two exact
/// multiplications then one rounding give; a sweep test in `attention_rows` holds it so).
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp16(x: __m512) -> __m512 {
    // max_ps(a, b) is `a > b ? a : b` and min_ps(a, b) `a < b ? a : b`: NaN in `b` passes.
    let x = _mm512_max_ps(_mm512_set1_ps(EXP_LO), x);
    let x = _mm512_min_ps(_mm512_set1_ps(EXP_HI), x);
    let n = _mm512_roundscale_ps::<ROUND_NEAREST>(_mm512_mul_ps(x, _mm512_set1_ps(LOG2E)));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let z = _mm512_mul_ps(r, r);
    let mut p = _mm512_set1_ps(POLY[0]);
    for &c in &POLY[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(p, z, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(y, n)
}

/// Lane-ordered partial sums to the final sum, as the scalar twin finishes them.
#[inline]
#[target_feature(enable = "avx512f")]
fn finish(acc: __m512) -> f32 {
    let mut lanes = [0.0f32; LANES];
    // SAFETY: `lanes` holds exactly 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    finish_lanes(&lanes)
}

/// `row[i] = exp(row[i] * scale - shift) * mul`; returns the sum of the exponentials.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn exp_affine_avx512(row: &mut [f32], scale: f32, shift: f32, mul: f32) -> f32 {
    let (sc, sh, mu) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift), _mm512_set1_ps(mul));
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < row.len() {
        let mask = mask_of(row.len() - i);
        // SAFETY: `mask` selects only the in-bounds elements `i .. min(i + 16, len)`; masked-off
        // lanes are neither read nor written.
        unsafe {
            let p = row.as_mut_ptr().add(i);
            let v = _mm512_maskz_loadu_ps(mask, p);
            let e = exp16(_mm512_sub_ps(_mm512_mul_ps(v, sc), sh));
            acc = _mm512_mask_add_ps(acc, mask, acc, e);
            _mm512_mask_storeu_ps(p, mask, _mm512_mul_ps(e, mu));
        }
        i += LANES;
    }
    finish(acc)
}

/// `sum_i exp(row[i] - shift)`.
///
/// # Safety
/// The CPU must support AVX-512 F.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn sum_exp_avx512(row: &[f32], shift: f32) -> f32 {
    let sh = _mm512_set1_ps(shift);
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < row.len() {
        let mask = mask_of(row.len() - i);
        // SAFETY: `mask` selects only in-bounds elements; masked-off lanes are not read.
        let v = unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i)) };
        acc = _mm512_mask_add_ps(acc, mask, acc, exp16(_mm512_sub_ps(v, sh)));
        i += LANES;
    }
    finish(acc)
}

/// 16 lanes of `sigmoid_scalar`.
#[inline]
#[target_feature(enable = "avx512f")]
fn sigmoid16(g: __m512) -> __m512 {
    let one = _mm512_set1_ps(1.0);
    let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_div_ps(one, _mm512_add_ps(one, e))
}

/// `h = (gate * sigmoid(gate)) * up`.
///
/// # Safety
/// The CPU must support AVX-512 F; the three slices have the same length.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn swiglu_forward_avx512(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == h.len() && up.len() == h.len(), "swiglu lengths");
    let mut i = 0;
    while i < h.len() {
        let mask = mask_of(h.len() - i);
        // SAFETY: `mask` selects only elements below the common length; masked-off lanes are
        // neither read nor written.
        unsafe {
            let g = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(mask, up.as_ptr().add(i));
            let y = _mm512_mul_ps(_mm512_mul_ps(g, sigmoid16(g)), u);
            _mm512_mask_storeu_ps(h.as_mut_ptr().add(i), mask, y);
        }
        i += LANES;
    }
}

/// `gate <- dh * up * s * (1 + gate * (1 - s))`, `up <- dh * (gate * s)`.
///
/// # Safety
/// The CPU must support AVX-512 F; the three slices have the same length.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn swiglu_backward_avx512(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    assert!(up.len() == gate.len() && dh.len() == gate.len(), "swiglu lengths");
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < gate.len() {
        let mask = mask_of(gate.len() - i);
        // SAFETY: `mask` selects only elements below the common length; masked-off lanes are
        // neither read nor written.
        unsafe {
            let gp = gate.as_mut_ptr().add(i);
            let up_p = up.as_mut_ptr().add(i);
            let g = _mm512_maskz_loadu_ps(mask, gp);
            let u = _mm512_maskz_loadu_ps(mask, up_p);
            let d = _mm512_maskz_loadu_ps(mask, dh.as_ptr().add(i));
            let s = sigmoid16(g);
            let silu = _mm512_mul_ps(g, s);
            let tail = _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, s)));
            let dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), s), tail);
            _mm512_mask_storeu_ps(gp, mask, dg);
            _mm512_mask_storeu_ps(up_p, mask, _mm512_mul_ps(d, silu));
        }
        i += LANES;
    }
}
