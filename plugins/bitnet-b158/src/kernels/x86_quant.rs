//! AVX-512 quantizers; the scalar twins in `quant.rs` define their exact semantics.

use super::quant::{ABSMEAN_LANES, WEIGHT_EPS, act_scale, finish_absmean};
use super::x86_lanes::mask_of;
use std::arch::x86_64::*;

const ROUND_NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// Clamp like `clamp_like_simd` and round half to even; returns 16 i32.
#[inline]
#[target_feature(enable = "avx512f")]
fn clamp_round(v: __m512, lo: __m512, hi: __m512) -> __m512i {
    // max(v, lo): lo unless v > lo; min(_, hi): hi unless _ < hi (the scalar twin's order).
    let c = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    _mm512_cvt_roundps_epi32::<ROUND_NEAREST>(c)
}

/// Absmean ternary quantisation of `w` into `q`; returns `g`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL, and `q.len() == w.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_weights_avx512(w: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(w.len(), q.len());
    if w.is_empty() {
        return 0.0;
    }
    let full = w.len() / ABSMEAN_LANES * ABSMEAN_LANES;
    let mut lo = _mm512_setzero_pd();
    let mut hi = _mm512_setzero_pd();
    for block in w[..full].chunks_exact(ABSMEAN_LANES) {
        // SAFETY: `block` has exactly 16 f32 (64 bytes); loadu has no alignment requirement.
        let v = _mm512_abs_ps(unsafe { _mm512_loadu_ps(block.as_ptr()) });
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        hi = _mm512_add_pd(
            hi,
            _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)))),
        );
    }
    let mut lanes = [0.0f64; ABSMEAN_LANES];
    // SAFETY: `lanes` has 16 f64: the first 8 receive `lo`, the next 8 `hi`.
    unsafe {
        _mm512_storeu_pd(lanes.as_mut_ptr(), lo);
        _mm512_storeu_pd(lanes.as_mut_ptr().add(8), hi);
    }
    let tail: f64 = w[full..].iter().map(|v| f64::from(v.abs())).fold(0.0, |a, b| a + b);
    let g = finish_absmean(&lanes, tail, w.len());

    let div = _mm512_set1_ps(g + WEIGHT_EPS);
    let (lo_b, hi_b) = (_mm512_set1_ps(-1.0), _mm512_set1_ps(1.0));
    let mut i = 0;
    while i < w.len() {
        let rest = w.len() - i;
        let mask = mask_of(rest);
        // SAFETY: `mask` selects only the `min(rest, 16)` in-bounds elements from index `i`;
        // masked-off lanes are neither read nor written.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, w.as_ptr().add(i));
            let r = clamp_round(_mm512_div_ps(v, div), lo_b, hi_b);
            _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i).cast(), mask, r);
        }
        i += 16;
    }
    g
}

/// Absmax int8 quantisation of one row; returns its scale.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL, and `q.len() == x.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_row_avx512(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let n = x.len();
    let mut m = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let rest = n - i;
        let mask = mask_of(rest);
        // SAFETY: the mask covers only in-bounds elements; masked lanes load 0, which never
        // exceeds the running absmax (>= 0).
        let v = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i)) };
        // max(|v|, m): keeps m unless |v| > m, so NaN never wins (as in the scalar twin).
        m = _mm512_max_ps(_mm512_abs_ps(v), m);
        i += 16;
    }
    // The lanes hold no NaN, so the order of this reduction does not change the maximum.
    let mut lanes = [0.0f32; 16];
    // SAFETY: `lanes` has 16 f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), m) };
    let absmax = lanes.iter().fold(0.0f32, |a, &b| if b > a { b } else { a });
    let s = act_scale(absmax);
    let sv = _mm512_set1_ps(s);
    let (lo_b, hi_b) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
    let mut i = 0;
    while i < n {
        let rest = n - i;
        let mask = mask_of(rest);
        // SAFETY: the mask covers only the in-bounds elements of `x` and `q` from index `i`.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(i));
            let r = clamp_round(_mm512_mul_ps(v, sv), lo_b, hi_b);
            _mm512_mask_cvtepi32_storeu_epi8(q.as_mut_ptr().add(i).cast(), mask, r);
        }
        i += 16;
    }
    s
}
