//! NEON quantizers; the scalar twins in `quant.rs` define their exact semantics.
//!
//! NEON's `fmax`/`fmin` propagate NaN, unlike the x86 `max`/`min` the scalar twins follow, so
//! the comparisons are written as compare-and-select (`v > m ? v : m`), which gives the twins'
//! answer for NaN too. `fcvtns` rounds half to even, as `round_ties_even` does.

use super::clamp_like_simd;
use super::quant::{ABSMEAN_LANES, WEIGHT_EPS, act_scale, finish_absmean};
use std::arch::aarch64::*;

/// [`clamp_like_simd`] and round half to even, per lane.
#[inline]
#[target_feature(enable = "neon")]
fn clamp_round(v: float32x4_t, lo: float32x4_t, hi: float32x4_t) -> int32x4_t {
    let v = vbslq_f32(vcgtq_f32(v, lo), v, lo);
    let v = vbslq_f32(vcltq_f32(v, hi), v, hi);
    vcvtnq_s32_f32(v)
}

/// Narrows four vectors of small integers (within i8) to 16 bytes at `dst`.
///
/// # Safety
/// `dst` must be valid for 16 bytes of writes.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn store16(dst: *mut i8, r: [int32x4_t; 4]) {
    let lo = vcombine_s16(vmovn_s32(r[0]), vmovn_s32(r[1]));
    let hi = vcombine_s16(vmovn_s32(r[2]), vmovn_s32(r[3]));
    // SAFETY: the caller guarantees 16 writable bytes.
    unsafe { vst1q_s8(dst, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi))) };
}

/// Absmean ternary quantisation of `w` into `q`; returns `g`.
///
/// # Safety
/// The CPU must support NEON, and `q.len() == w.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_weights_neon(w: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(w.len(), q.len(), "weight lengths");
    if w.is_empty() {
        return 0.0;
    }
    let full = w.len() / ABSMEAN_LANES * ABSMEAN_LANES;
    let mut acc = [vdupq_n_f64(0.0); ABSMEAN_LANES / 2];
    for block in w[..full].chunks_exact(ABSMEAN_LANES) {
        for j in 0..ABSMEAN_LANES / 4 {
            // SAFETY: `block` has 16 f32; lanes 4 j .. 4 j + 4 are in bounds.
            let v = vabsq_f32(unsafe { vld1q_f32(block.as_ptr().add(4 * j)) });
            acc[2 * j] = vaddq_f64(acc[2 * j], vcvt_f64_f32(vget_low_f32(v)));
            acc[2 * j + 1] = vaddq_f64(acc[2 * j + 1], vcvt_high_f64_f32(v));
        }
    }
    let mut lanes = [0.0f64; ABSMEAN_LANES];
    for (j, &a) in acc.iter().enumerate() {
        // SAFETY: `lanes` has 16 f64; lanes 2 j .. 2 j + 2 are in bounds.
        unsafe { vst1q_f64(lanes.as_mut_ptr().add(2 * j), a) };
    }
    let tail: f64 = w[full..].iter().map(|v| f64::from(v.abs())).fold(0.0, |a, b| a + b);
    let g = finish_absmean(&lanes, tail, w.len());
    let div = g + WEIGHT_EPS;
    let (dv, lo, hi) = (vdupq_n_f32(div), vdupq_n_f32(-1.0), vdupq_n_f32(1.0));
    let full16 = w.len() / 16 * 16;
    for (src, dst) in w[..full16].chunks_exact(16).zip(q[..full16].chunks_exact_mut(16)) {
        // SAFETY: both chunks hold 16 elements.
        unsafe {
            let r = std::array::from_fn(|j| {
                clamp_round(vdivq_f32(vld1q_f32(src.as_ptr().add(4 * j)), dv), lo, hi)
            });
            store16(dst.as_mut_ptr(), r);
        }
    }
    for (qi, &wi) in q[full16..].iter_mut().zip(&w[full16..]) {
        *qi = clamp_like_simd(wi / div, -1.0, 1.0).round_ties_even() as i8;
    }
    g
}

/// Absmax int8 quantisation of one row; returns its scale.
///
/// # Safety
/// The CPU must support NEON, and `q.len() == x.len()`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_row_neon(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "activation row lengths");
    let full16 = x.len() / 16 * 16;
    let mut m = [vdupq_n_f32(0.0); 4];
    for src in x[..full16].chunks_exact(16) {
        for (j, mj) in m.iter_mut().enumerate() {
            // SAFETY: `src` holds 16 floats.
            let a = vabsq_f32(unsafe { vld1q_f32(src.as_ptr().add(4 * j)) });
            // `a > m ? a : m`: NaN never wins (as in the scalar twin).
            *mj = vbslq_f32(vcgtq_f32(a, *mj), a, *mj);
        }
    }
    // The lanes hold no NaN, so the order of this reduction does not change the maximum.
    let mut lanes = [0.0f32; 16];
    for (j, &mj) in m.iter().enumerate() {
        // SAFETY: `lanes` holds 16 floats.
        unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * j), mj) };
    }
    let mut absmax = lanes.iter().fold(0.0f32, |a, &b| if b > a { b } else { a });
    for &v in &x[full16..] {
        let a = v.abs();
        absmax = if a > absmax { a } else { absmax };
    }
    let s = act_scale(absmax);
    let (sv, lo, hi) = (vdupq_n_f32(s), vdupq_n_f32(-128.0), vdupq_n_f32(127.0));
    for (src, dst) in x[..full16].chunks_exact(16).zip(q[..full16].chunks_exact_mut(16)) {
        // SAFETY: both chunks hold 16 elements.
        unsafe {
            let r = std::array::from_fn(|j| {
                clamp_round(vmulq_f32(vld1q_f32(src.as_ptr().add(4 * j)), sv), lo, hi)
            });
            store16(dst.as_mut_ptr(), r);
        }
    }
    for (qi, &xi) in q[full16..].iter_mut().zip(&x[full16..]) {
        *qi = clamp_like_simd(xi * s, -128.0, 127.0).round_ties_even() as i8;
    }
    s
}
