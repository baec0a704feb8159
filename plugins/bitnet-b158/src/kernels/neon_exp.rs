//! NEON exponential passes; the scalar twins in `exp.rs` define their exact semantics.
//!
//! Four lanes per vector: the 16 lane-ordered partial sums of the twins are four vectors (lanes
//! 0-3, 4-7, 8-11, 12-15 of each run of 16 elements); the elements past the last whole vector
//! go through the scalar twin into the same lanes. Clamps are compare-and-select (NEON's
//! `fmax`/`fmin` would turn the x86 `max`/`min` semantics around for NaN), `frintn` rounds half
//! to even and `fmla`/`fmls` are the fused multiply-adds of `mul_add`: bit-identical.

use super::exp::{
    EXP_HI, EXP_LO, LANES, LN2_HI, LN2_LO, LOG2E, POLY, exp_scalar, finish_lanes, sigmoid_scalar,
};
use std::arch::aarch64::*;

/// 4 lanes of `exp_scalar`, operation for operation.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn exp4(x: float32x4_t) -> float32x4_t {
    let lo = vdupq_n_f32(EXP_LO);
    let hi = vdupq_n_f32(EXP_HI);
    // `EXP_LO > x ? EXP_LO : x`, then `EXP_HI < x ? EXP_HI : x`: NaN passes through.
    let x = vbslq_f32(vcgtq_f32(lo, x), lo, x);
    let x = vbslq_f32(vcltq_f32(hi, x), hi, x);
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    let z = vmulq_f32(r, r);
    let mut p = vdupq_n_f32(POLY[0]);
    for &c in &POLY[1..] {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let y = vaddq_f32(vfmaq_f32(r, p, z), vdupq_n_f32(1.0));
    // `n` is integral in [-150, 128]; NaN converts to 0, as `n as i32` does.
    let n = vcvtq_s32_f32(n);
    let n1 = vshrq_n_s32::<1>(n);
    let pow2 =
        |k: int32x4_t| vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))));
    vmulq_f32(vmulq_f32(y, pow2(n1)), pow2(vsubq_s32(n, n1)))
}

/// The four partial-sum vectors as the twin's 16 lanes.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn lanes_of(acc: &[float32x4_t; 4]) -> [f32; LANES] {
    let mut lanes = [0.0f32; LANES];
    for (j, &a) in acc.iter().enumerate() {
        // SAFETY: `lanes` holds 16 floats; lanes 4 j .. 4 j + 4 are in bounds.
        unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * j), a) };
    }
    lanes
}

/// `row[i] = exp(row[i] * scale - shift) * mul`; returns the sum of the exponentials.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn exp_affine_neon(row: &mut [f32], scale: f32, shift: f32, mul: f32) -> f32 {
    let (sc, sh, mu) = (vdupq_n_f32(scale), vdupq_n_f32(shift), vdupq_n_f32(mul));
    let mut acc = [vdupq_n_f32(0.0); 4];
    let full = row.len() / 4 * 4;
    for (j, chunk) in row[..full].chunks_exact_mut(4).enumerate() {
        // SAFETY: `chunk` holds 4 floats.
        unsafe {
            let v = vld1q_f32(chunk.as_ptr());
            let e = exp4(vsubq_f32(vmulq_f32(v, sc), sh));
            acc[j % 4] = vaddq_f32(acc[j % 4], e);
            vst1q_f32(chunk.as_mut_ptr(), vmulq_f32(e, mu));
        }
    }
    let mut lanes = lanes_of(&acc);
    for (i, v) in row.iter_mut().enumerate().skip(full) {
        let e = exp_scalar(*v * scale - shift);
        lanes[i % LANES] += e;
        *v = e * mul;
    }
    finish_lanes(&lanes)
}

/// `sum_i exp(row[i] - shift)`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn sum_exp_neon(row: &[f32], shift: f32) -> f32 {
    let sh = vdupq_n_f32(shift);
    let mut acc = [vdupq_n_f32(0.0); 4];
    let full = row.len() / 4 * 4;
    for (j, chunk) in row[..full].chunks_exact(4).enumerate() {
        // SAFETY: `chunk` holds 4 floats.
        let v = unsafe { vld1q_f32(chunk.as_ptr()) };
        acc[j % 4] = vaddq_f32(acc[j % 4], exp4(vsubq_f32(v, sh)));
    }
    let mut lanes = lanes_of(&acc);
    for (i, &v) in row.iter().enumerate().skip(full) {
        lanes[i % LANES] += exp_scalar(v - shift);
    }
    finish_lanes(&lanes)
}

/// 4 lanes of `sigmoid_scalar`.
#[inline]
#[target_feature(enable = "neon")]
fn sigmoid4(g: float32x4_t) -> float32x4_t {
    let one = vdupq_n_f32(1.0);
    vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(g))))
}

/// `h = (gate * sigmoid(gate)) * up`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn swiglu_forward_neon(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == h.len() && up.len() == h.len(), "swiglu lengths");
    let full = h.len() / 4 * 4;
    for i in (0..full).step_by(4) {
        // SAFETY: `i + 4 <= full <= len` for all three slices (asserted equal lengths).
        unsafe {
            let g = vld1q_f32(gate.as_ptr().add(i));
            let u = vld1q_f32(up.as_ptr().add(i));
            vst1q_f32(h.as_mut_ptr().add(i), vmulq_f32(vmulq_f32(g, sigmoid4(g)), u));
        }
    }
    for ((hi, &g), &u) in h[full..].iter_mut().zip(&gate[full..]).zip(&up[full..]) {
        *hi = g * sigmoid_scalar(g) * u;
    }
}

/// `gate <- dh * up * s * (1 + gate * (1 - s))`, `up <- dh * (gate * s)`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn swiglu_backward_neon(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    assert!(up.len() == gate.len() && dh.len() == gate.len(), "swiglu lengths");
    let one = vdupq_n_f32(1.0);
    let full = gate.len() / 4 * 4;
    for i in (0..full).step_by(4) {
        // SAFETY: `i + 4 <= full <= len` for all three slices (asserted equal lengths).
        unsafe {
            let gp = gate.as_mut_ptr().add(i);
            let up_p = up.as_mut_ptr().add(i);
            let (g, u, d) = (vld1q_f32(gp), vld1q_f32(up_p), vld1q_f32(dh.as_ptr().add(i)));
            let s = sigmoid4(g);
            let silu = vmulq_f32(g, s);
            let tail = vaddq_f32(one, vmulq_f32(g, vsubq_f32(one, s)));
            vst1q_f32(gp, vmulq_f32(vmulq_f32(vmulq_f32(d, u), s), tail));
            vst1q_f32(up_p, vmulq_f32(d, silu));
        }
    }
    for ((gi, ui), &d) in gate[full..].iter_mut().zip(up[full..].iter_mut()).zip(&dh[full..]) {
        let (gv, uv) = (*gi, *ui);
        let s = sigmoid_scalar(gv);
        *gi = d * uv * s * (1.0 + gv * (1.0 - s));
        *ui = d * (gv * s);
    }
}
