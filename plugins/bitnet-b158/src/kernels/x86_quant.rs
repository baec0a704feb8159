//! AVX-512 and AVX2 quantizers; the scalar twins in `quant.rs` define their exact semantics.

use super::clamp_like_simd;
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

/// Clamp like `clamp_like_simd` and round half to even, as [`clamp_round`] on 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn clamp_round_avx2(v: __m256, lo: __m256, hi: __m256) -> __m256i {
    // max(v, lo) is v only when v > lo (NaN gives lo), min(_, hi) keeps hi unless _ < hi: the
    // scalar twin's order. The rounded value is integral, so the truncating conversion is exact.
    let c = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
    _mm256_cvttps_epi32(_mm256_round_ps::<ROUND_NEAREST>(c))
}

/// Narrows 32 int32 lanes in `[-128, 127]` (four vectors, in element order) to 32 bytes in the
/// same order: the saturating packs are exact on such values; they interleave 128-bit lanes,
/// which the final permutation undoes.
#[inline]
#[target_feature(enable = "avx2")]
fn narrow_32(v: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packs_epi32(v[0], v[1]);
    let cd = _mm256_packs_epi32(v[2], v[3]);
    let bytes = _mm256_packs_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Applies `f` (8 values to 8 rounded int32) to `x` in blocks of 32 and stores the bytes to `q`;
/// returns the length of the prefix done (a multiple of 32), the rest being the caller's.
///
/// # Safety
/// The CPU must support AVX2, and `q.len() == x.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn narrow_blocks(x: &[f32], q: &mut [i8], f: impl Fn(__m256) -> __m256i) -> usize {
    debug_assert_eq!(x.len(), q.len());
    let full = x.len() / 32 * 32;
    for (xb, qb) in x[..full].chunks_exact(32).zip(q[..full].chunks_exact_mut(32)) {
        // SAFETY: `xb` holds 32 f32 and `qb` 32 bytes; unaligned loads and stores are allowed.
        unsafe {
            let v: [__m256i; 4] =
                std::array::from_fn(|j| f(_mm256_loadu_ps(xb.as_ptr().add(8 * j))));
            _mm256_storeu_si256(qb.as_mut_ptr().cast(), narrow_32(v));
        }
    }
    full
}

/// Absmean ternary quantisation of `w` into `q` on AVX2; returns `g`. The 16 absmean lanes are
/// four registers of 4 f64, each lane adding its elements in the scalar twin's order.
///
/// # Safety
/// The CPU must support AVX2, and `q.len() == w.len()`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_weights_avx2(w: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(w.len(), q.len());
    if w.is_empty() {
        return 0.0;
    }
    let full = w.len() / ABSMEAN_LANES * ABSMEAN_LANES;
    let sign = _mm256_set1_ps(-0.0);
    let mut acc = [_mm256_setzero_pd(); 4];
    for block in w[..full].chunks_exact(ABSMEAN_LANES) {
        for half in 0..2 {
            // SAFETY: `block` has 16 f32; each half reads 8 of them.
            let v =
                _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * half)) });
            let lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
            let hi = _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v));
            acc[2 * half] = _mm256_add_pd(acc[2 * half], lo);
            acc[2 * half + 1] = _mm256_add_pd(acc[2 * half + 1], hi);
        }
    }
    let mut lanes = [0.0f64; ABSMEAN_LANES];
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: `lanes` has 16 f64; register j holds lanes 4 j .. 4 j + 4.
        unsafe { _mm256_storeu_pd(lanes.as_mut_ptr().add(4 * j), *a) };
    }
    let tail: f64 = w[full..].iter().map(|v| f64::from(v.abs())).fold(0.0, |a, b| a + b);
    let g = finish_absmean(&lanes, tail, w.len());

    let div_s = g + WEIGHT_EPS;
    let div = _mm256_set1_ps(div_s);
    let (lo, hi) = (_mm256_set1_ps(-1.0), _mm256_set1_ps(1.0));
    // SAFETY: the CPU has AVX2 (this function's contract); lengths are equal.
    let done = unsafe { narrow_blocks(w, q, |v| clamp_round_avx2(_mm256_div_ps(v, div), lo, hi)) };
    for (qi, &wi) in q[done..].iter_mut().zip(&w[done..]) {
        *qi = clamp_like_simd(wi / div_s, -1.0, 1.0).round_ties_even() as i8;
    }
    g
}

/// Absmax int8 quantisation of one row on AVX2; returns its scale.
///
/// # Safety
/// The CPU must support AVX2, and `q.len() == x.len()`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn quantize_row_avx2(x: &[f32], q: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), q.len());
    let full = x.len() / 32 * 32;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = [_mm256_setzero_ps(); 4];
    for block in x[..full].chunks_exact(32) {
        for (j, mj) in m.iter_mut().enumerate() {
            // SAFETY: `block` has 32 f32; register j reads 8 of them.
            let v = unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * j)) };
            // max(|v|, m): keeps m unless |v| > m, so NaN never wins (as in the scalar twin).
            *mj = _mm256_max_ps(_mm256_andnot_ps(sign, v), *mj);
        }
    }
    let mut lanes = [0.0f32; 32];
    for (j, mj) in m.iter().enumerate() {
        // SAFETY: `lanes` has 32 f32; register j fills 8 of them.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *mj) };
    }
    // The lanes hold no NaN, so the order of this reduction does not change the maximum.
    let absmax = lanes.iter().chain(&x[full..]).fold(0.0f32, |a, &b| {
        let b = b.abs();
        if b > a { b } else { a }
    });
    let s = act_scale(absmax);
    let sv = _mm256_set1_ps(s);
    let (lo, hi) = (_mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    // SAFETY: the CPU has AVX2 (this function's contract); lengths are equal.
    let done = unsafe { narrow_blocks(x, q, |v| clamp_round_avx2(_mm256_mul_ps(v, sv), lo, hi)) };
    for (qi, &xi) in q[done..].iter_mut().zip(&x[done..]) {
        *qi = clamp_like_simd(xi * s, -128.0, 127.0).round_ties_even() as i8;
    }
    s
}
