//! NEON passes of causal attention; the scalar twins in `attention_rows.rs` define their exact
//! semantics, and each pass here performs the same operations in the same order:
//! - register tiles of up to 8 rows x 8 columns, each entry one chain of fused multiply-adds
//!   (`fmla`) in `p` order from zero; columns past the last whole vector run the same chain one
//!   at a time;
//! - the softmax rows and score-gradient rows with their 16 lane-ordered partial maxima and
//!   sums kept as four 4-lane vectors, elements past the last whole vector added to the same
//!   lanes one at a time, reduced by the same trees (`max_lanes`, `sum_lanes`), with the
//!   exponential of `neon_exp`.
//!
//! Bit-identical to the scalar twins (and so to the x86 paths).

use super::attention_rows::{MR, TileOperands, max_lanes, sum_lanes};
use super::exp::{LANES, exp_scalar};
use super::neon_exp::{exp4, lanes_of};
use std::arch::aarch64::*;

/// `c[r * ldc + j] = sum_p a[r * a_rs + p * a_cs] * b[p * ldb + j]` for `r < rows`, `j < cols`.
///
/// # Safety
/// The CPU must support NEON; `1 <= rows <= MR`, `(rows - 1) * ldc + cols <= c.len()`, and when
/// `depth > 0`, `(rows - 1) * a_rs + (depth - 1) * a_cs < a.len()` and
/// `(depth - 1) * ldb + cols <= b.len()` (what `tile_row` asserts).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn tile_row_neon(
    c: &mut [f32],
    ldc: usize,
    (rows, cols): (usize, usize),
    t: &TileOperands,
) {
    assert!((1..=MR).contains(&rows), "tile rows");
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    let full = cols / 4 * 4;
    for j in (0..full).step_by(8) {
        let two = j + 8 <= full;
        let mut acc = [[vdupq_n_f32(0.0); 2]; MR];
        for p in 0..t.depth {
            // SAFETY: columns j .. j + 4 (j + 8 when `two`) <= cols of b's row p are in bounds
            // (the contract); each a element r < rows, p < depth is in bounds.
            unsafe {
                let b0 = vld1q_f32(bp.add(p * t.ldb + j));
                let b1 = if two { vld1q_f32(bp.add(p * t.ldb + j + 4)) } else { b0 };
                for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
                    let a = vdupq_n_f32(*ap.add(r * t.a_rs + p * t.a_cs));
                    acc_r[0] = vfmaq_f32(acc_r[0], a, b0);
                    acc_r[1] = vfmaq_f32(acc_r[1], a, b1);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            // SAFETY: columns j .. j + 4 (j + 8 when `two`) of output row r < rows are in
            // bounds (the contract).
            unsafe {
                let dst = c.as_mut_ptr().add(r * ldc + j);
                vst1q_f32(dst, acc_r[0]);
                if two {
                    vst1q_f32(dst.add(4), acc_r[1]);
                }
            }
        }
    }
    for r in 0..rows {
        for j in full..cols {
            let mut acc = 0.0f32;
            for p in 0..t.depth {
                acc = t.a[r * t.a_rs + p * t.a_cs].mul_add(t.b[p * t.ldb + j], acc);
            }
            c[r * ldc + j] = acc;
        }
    }
}

/// `softmax_row`: the softmax of `row[..live]` scaled by `scale` in place, zeros after;
/// returns `(max, 1 / sum)`.
#[inline]
#[target_feature(enable = "neon")]
fn softmax_row_neon(row: &mut [f32], live: usize, scale: f32) -> (f32, f32) {
    let (live, tail) = row.split_at_mut(live);
    let full = live.len() / 4 * 4;
    let mut m = [vdupq_n_f32(f32::NEG_INFINITY); 4];
    for (i, ch) in live[..full].chunks_exact(4).enumerate() {
        // SAFETY: `ch` holds 4 floats.
        let v = unsafe { vld1q_f32(ch.as_ptr()) };
        // `v > m ? v : m`, as the twin's `max_like_simd`.
        m[i % 4] = vbslq_f32(vcgtq_f32(v, m[i % 4]), v, m[i % 4]);
    }
    let mut ml = lanes_of(&m);
    for (i, &v) in live.iter().enumerate().skip(full) {
        ml[i % LANES] = if v > ml[i % LANES] { v } else { ml[i % LANES] };
    }
    let max = max_lanes(ml) * scale;
    let (sc, mx) = (vdupq_n_f32(scale), vdupq_n_f32(max));
    let mut acc = [vdupq_n_f32(0.0); 4];
    for (i, ch) in live[..full].chunks_exact_mut(4).enumerate() {
        // SAFETY: `ch` holds 4 floats.
        unsafe {
            let e = exp4(vsubq_f32(vmulq_f32(vld1q_f32(ch.as_ptr()), sc), mx));
            acc[i % 4] = vaddq_f32(acc[i % 4], e);
            vst1q_f32(ch.as_mut_ptr(), e);
        }
    }
    let mut al = lanes_of(&acc);
    for (i, v) in live.iter_mut().enumerate().skip(full) {
        let e = exp_scalar(*v * scale - max);
        al[i % LANES] += e;
        *v = e;
    }
    let inv = 1.0 / sum_lanes(al);
    for v in live.iter_mut() {
        *v *= inv;
    }
    tail.fill(0.0);
    (max, inv)
}

/// `softmax_rows` with recorded (`st` written) statistics: `rows` holds rows of `t_len`, the
/// first of them query `r0`.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax_rows_neon(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    st: &mut [f32],
) {
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(st.chunks_exact_mut(2)).enumerate() {
        let (max, inv) = softmax_row_neon(row, (r0 + i + 1).min(t_len), scale);
        st.copy_from_slice(&[max, inv]);
    }
}

/// `softmax_rows` replaying recorded statistics `st`: `row[i] = exp(row[i] * scale - max) *
/// inv` on the live prefix, zeros after.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax_rows_from_stats_neon(
    rows: &mut [f32],
    (r0, t_len): (usize, usize),
    scale: f32,
    st: &[f32],
) {
    for (i, (row, st)) in rows.chunks_exact_mut(t_len).zip(st.chunks_exact(2)).enumerate() {
        let (max, inv) = (st[0], st[1]);
        let (live, tail) = row.split_at_mut((r0 + i + 1).min(t_len));
        let full = live.len() / 4 * 4;
        let (sc, mx, iv) = (vdupq_n_f32(scale), vdupq_n_f32(max), vdupq_n_f32(inv));
        for ch in live[..full].chunks_exact_mut(4) {
            // SAFETY: `ch` holds 4 floats.
            unsafe {
                let e = exp4(vsubq_f32(vmulq_f32(vld1q_f32(ch.as_ptr()), sc), mx));
                vst1q_f32(ch.as_mut_ptr(), vmulq_f32(e, iv));
            }
        }
        for v in live[full..].iter_mut() {
            *v = exp_scalar(*v * scale - max) * inv;
        }
        tail.fill(0.0);
    }
}

/// `softmax_grad_rows`: each row `d` of `dP` becomes `p * (d - sum(d * p)) * scale` on its
/// live prefix, zeros after.
///
/// # Safety
/// The CPU must support NEON; `ds` and `p` have the same length, a multiple of `t_len`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax_grad_rows_neon(
    ds: &mut [f32],
    p: &[f32],
    (r0, t_len): (usize, usize),
    scale: f32,
) {
    assert!(ds.len() == p.len(), "softmax gradient rows");
    for (row, (d, pr)) in ds.chunks_exact_mut(t_len).zip(p.chunks_exact(t_len)).enumerate() {
        let n = (r0 + row + 1).min(t_len);
        let full = n / 4 * 4;
        let mut acc = [vdupq_n_f32(0.0); 4];
        for (i, (dc, pc)) in d[..full].chunks_exact(4).zip(pr[..full].chunks_exact(4)).enumerate() {
            // SAFETY: both chunks hold 4 floats.
            let (dv, pv) = unsafe { (vld1q_f32(dc.as_ptr()), vld1q_f32(pc.as_ptr())) };
            acc[i % 4] = vfmaq_f32(acc[i % 4], dv, pv);
        }
        let mut al = lanes_of(&acc);
        for i in full..n {
            al[i % LANES] = d[i].mul_add(pr[i], al[i % LANES]);
        }
        let sum = sum_lanes(al);
        let (sv, sc) = (vdupq_n_f32(sum), vdupq_n_f32(scale));
        for (dc, pc) in d[..full].chunks_exact_mut(4).zip(pr[..full].chunks_exact(4)) {
            // SAFETY: both chunks hold 4 floats.
            unsafe {
                let (dv, pv) = (vld1q_f32(dc.as_ptr()), vld1q_f32(pc.as_ptr()));
                vst1q_f32(dc.as_mut_ptr(), vmulq_f32(vmulq_f32(pv, vsubq_f32(dv, sv)), sc));
            }
        }
        for i in full..n {
            d[i] = pr[i] * (d[i] - sum) * scale;
        }
        d[n..].fill(0.0);
    }
}
