//! The NEON micro-kernel of the bf16 products (see `bf16.rs` and `bf16_tiles.rs`).
//!
//! As on AVX2: NEON without the (Armv8.6) bf16 extension has no bf16 dot product, so each lane
//! pair is widened to two fp32 (a bf16 is the high half of an fp32) and multiplied-added with
//! `fmla` in the order the scalar twin uses, the high (odd) product first, then the low (even)
//! one. A product of two bf16 is exact in fp32, so each fused multiply-add rounds exactly as the
//! twin's addition does; the only difference is the twin's flush of denormal sums to zero (Linux
//! runs aarch64 with `FPCR.FZ` clear, so `fmla` keeps them): at most `2 * pairs * 2^-126` per
//! element, far inside the bound the tests hold every path to.

use super::bf16::{Bf16Tile, MR, NR};
use super::bf16_tiles::KC;
use std::arch::aarch64::*;

/// `fmla` micro-kernel: up to 6 rows x one 64-column panel, 16 columns at a time.
///
/// # Safety
/// The CPU must support NEON; `1 <= t.rows <= 6`, `t.pairs <= KC`, `t.a` holds `pairs * 6`
/// lanes (pair-major), `t.b` holds `pairs * 64` lanes, `t.cols <= 64`, `t.l0 + t.cols <= t.k`
/// and `t.out` holds `rows * k` floats (all asserted).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn kernel_bf16_neon(t: Bf16Tile<'_>) {
    match t.rows {
        6 => rows_neon::<6>(t),
        5 => rows_neon::<5>(t),
        4 => rows_neon::<4>(t),
        3 => rows_neon::<3>(t),
        2 => rows_neon::<2>(t),
        1 => rows_neon::<1>(t),
        r => unreachable!("the driver never asks for {r} rows"),
    }
}

#[inline]
#[target_feature(enable = "neon")]
fn rows_neon<const R: usize>(t: Bf16Tile<'_>) {
    let pairs = t.pairs;
    assert!(pairs <= KC, "bf16 tile deeper than one block");
    assert!(t.a.len() >= pairs * MR && t.b.len() >= pairs * NR, "bf16 tile out of bounds");
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "bf16 tile output");
    // The tile's A lanes widened once to fp32: `[pair][hi R, lo R]`.
    let mut wide = [0f32; 2 * MR * KC];
    for p in 0..pairs {
        for r in 0..R {
            let a = t.a[p * MR + r];
            wide[p * 2 * R + r] = f32::from_bits(a & 0xFFFF_0000);
            wide[p * 2 * R + R + r] = f32::from_bits(a << 16);
        }
    }
    let hi_mask = vdupq_n_u32(0xFFFF_0000);
    for c in (0..t.cols).step_by(16) {
        let mut acc = [[vdupq_n_f32(0.0); 4]; R];
        for p in 0..pairs {
            let b: [uint32x4_t; 4] = std::array::from_fn(|v| {
                // SAFETY: lanes p * 64 + c + 4 v .. + 4 <= (p + 1) * 64 of `b` are in bounds
                // (asserted above; c <= 48 is a multiple of 16).
                unsafe { vld1q_u32(t.b.as_ptr().add(p * NR + c + 4 * v)) }
            });
            let w = &wide[p * 2 * R..(p + 1) * 2 * R];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = vdupq_n_f32(w[r]);
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    *acc_rv = vfmaq_f32(*acc_rv, a, vreinterpretq_f32_u32(vandq_u32(bv, hi_mask)));
                }
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = vdupq_n_f32(w[R + r]);
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    *acc_rv = vfmaq_f32(*acc_rv, a, vreinterpretq_f32_u32(vshlq_n_u32::<16>(bv)));
                }
            }
        }
        let valid = (t.cols - c).min(16);
        for (r, acc_r) in acc.iter().enumerate() {
            let mut lanes = [0f32; 16];
            for (v, &a) in acc_r.iter().enumerate() {
                // SAFETY: `lanes` holds 16 floats; lanes 4 v .. 4 v + 4 are in bounds.
                unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * v), a) };
            }
            let at = r * t.k + t.l0 + c;
            let dst = &mut t.out[at..at + valid];
            if t.accumulate {
                for (d, &l) in dst.iter_mut().zip(&lanes) {
                    *d += l;
                }
            } else {
                dst.copy_from_slice(&lanes[..valid]);
            }
        }
    }
}
