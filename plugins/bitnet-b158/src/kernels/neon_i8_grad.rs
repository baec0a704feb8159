//! The aarch64 micro-kernels of the int8 weight gradient (see `i8_grad.rs`).
//!
//! The packed `X_q + 128` lanes are turned back into signed bytes (`^ 0x80`), so each block sum
//! is `sum A_q X_q` directly, without the `-128 sum A_q` start the unsigned x86 products need:
//! the same exact integer as the scalar twin's `init + sum A_q (X_q + 128)`. The blocks are then
//! combined with the same fused multiply-adds in the same order: bit-identical.
//!
//! - [`Isa::NeonDot`](super::Isa::NeonDot): `sdot`, four tokens per 32-bit lane and step.
//! - [`Isa::Neon`](super::Isa::Neon): `smull` into 16-bit products (at most `128 * 128`, which
//!   fits), pairs added into int32 by `sadalp`, the two halves of each lane joined by `addp` at
//!   the end of the block.
//!
//! Register tile: up to 6 rows x 8 columns, over the tile's token blocks.

use super::i8_grad::{I8Tile, KB, MR, NR, QUADS};
use super::neon_ternary::sdot;
use std::arch::aarch64::*;

/// The `sdot` micro-kernel.
///
/// # Safety
/// The CPU must support NEON and `dotprod`; the tile must satisfy the bounds `rows` asserts
/// (`1 <= t.rows <= 6`, `t.blocks <= KB`, slices sized for the blocks, `t.cols <= 32`).
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn kernel_i8_grad_neon_dot(t: I8Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { by_rows::<true>(t) }
}

/// The plain NEON micro-kernel.
///
/// # Safety
/// The CPU must support NEON; the tile as for [`kernel_i8_grad_neon_dot`].
#[target_feature(enable = "neon")]
pub(crate) unsafe fn kernel_i8_grad_neon(t: I8Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe { by_rows::<false>(t) }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn by_rows<const DOT: bool>(t: I8Tile<'_>) {
    // SAFETY: forwarded from the callers' contracts (features included).
    unsafe {
        match t.rows {
            6 => rows::<6, DOT>(t),
            5 => rows::<5, DOT>(t),
            4 => rows::<4, DOT>(t),
            3 => rows::<3, DOT>(t),
            2 => rows::<2, DOT>(t),
            1 => rows::<1, DOT>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

/// The exact int32 sums of one block for 4 columns: `b` is the block's 4-column vector of each
/// quad (signed `X_q` bytes), `a` the row's code lane of each quad.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn block_sums<const DOT: bool>(a: &[u32; QUADS], b: &[int8x16_t; QUADS]) -> int32x4_t {
    if DOT {
        let mut acc = vdupq_n_s32(0);
        for (&av, &bv) in a.iter().zip(b) {
            // SAFETY: only instantiated with DOT from the `dotprod` kernel.
            acc = unsafe { sdot(acc, bv, vreinterpretq_s8_u32(vdupq_n_u32(av))) };
        }
        acc
    } else {
        let (mut lo, mut hi) = (vdupq_n_s32(0), vdupq_n_s32(0));
        for (&av, &bv) in a.iter().zip(b) {
            let a8 = vreinterpret_s8_u32(vdup_n_u32(av));
            lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(bv), a8));
            hi = vpadalq_s16(hi, vmull_s8(vget_high_s8(bv), a8));
        }
        vpaddq_s32(lo, hi)
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn rows<const R: usize, const DOT: bool>(t: I8Tile<'_>) {
    let blocks = t.blocks;
    assert!((1..=KB).contains(&blocks), "int8 tile block count");
    assert!(
        t.a.len() >= (blocks - 1) * t.a_stride + QUADS * MR
            && t.scales.len() >= (blocks - 1) * t.s_stride + MR
            && t.b.len() >= blocks * QUADS * NR,
        "int8 tile out of bounds"
    );
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "int8 tile output");
    let flip = vdupq_n_u8(0x80);
    for c in (0..t.cols).step_by(8) {
        let valid = (t.cols - c).min(8);
        let mut facc = [[0f32; 8]; R];
        if t.accumulate {
            for (r, f) in facc.iter_mut().enumerate() {
                let at = r * t.k + t.l0 + c;
                f[..valid].copy_from_slice(&t.out[at..at + valid]);
            }
        }
        let mut fv = [[vdupq_n_f32(0.0); 2]; R];
        for (f, v) in facc.iter().zip(fv.iter_mut()) {
            // SAFETY: each row of `facc` holds 8 floats.
            unsafe { *v = [vld1q_f32(f.as_ptr()), vld1q_f32(f.as_ptr().add(4))] };
        }
        for bl in 0..blocks {
            let mut b = [[vdupq_n_s8(0); QUADS]; 2];
            for q in 0..QUADS {
                let at = (bl * QUADS + q) * NR + c;
                for (h, bh) in b.iter_mut().enumerate() {
                    // SAFETY: lanes at + 4 h .. at + 4 h + 4 lie inside the block's 32-lane row
                    // of `b` (c + 8 <= 32), in bounds as asserted above.
                    bh[q] = unsafe {
                        vreinterpretq_s8_u8(veorq_u8(
                            vld1q_u8(t.b.as_ptr().add(at + 4 * h).cast()),
                            flip,
                        ))
                    };
                }
            }
            for (r, f) in fv.iter_mut().enumerate() {
                let a: [u32; QUADS] = std::array::from_fn(|q| t.a[bl * t.a_stride + q * MR + r]);
                let scale = vdupq_n_f32(t.scales[bl * t.s_stride + r]);
                for (fh, bh) in f.iter_mut().zip(&b) {
                    // SAFETY: the caller's features (see `by_rows`).
                    let sums = unsafe { block_sums::<DOT>(&a, bh) };
                    *fh = vfmaq_f32(*fh, scale, vcvtq_f32_s32(sums));
                }
            }
        }
        for (r, v) in fv.iter().enumerate() {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe {
                vst1q_f32(lanes.as_mut_ptr(), v[0]);
                vst1q_f32(lanes.as_mut_ptr().add(4), v[1]);
            }
            let at = r * t.k + t.l0 + c;
            t.out[at..at + valid].copy_from_slice(&lanes[..valid]);
        }
    }
}
