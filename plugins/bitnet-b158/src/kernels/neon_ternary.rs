//! The aarch64 micro-kernels of the ternary products (see `ternary.rs`).
//!
//! The unpacked panel holds, per group of 4 inputs, 64 columns x 4 codes: one 16-byte vector is
//! 4 columns x 4 inputs, exactly the operand of `sdot` (4 dot products of 4 signed bytes). The
//! codes `w + 1` are 0..=2, so they are valid signed bytes and the row-sum correction of the x86
//! paths applies unchanged: `sum x (w + 1) - sum x = sum x w`, exact integers on every path.
//!
//! - [`Isa::NeonDot`](super::Isa::NeonDot): `sdot` (written as inline assembly: the intrinsic
//!   is not stable Rust yet), 4 rows x 16 columns per register tile.
//! - [`Isa::Neon`](super::Isa::Neon): `smlal` into 16-bit lanes (a product is at most 256 in
//!   magnitude, so 64 groups fit an i16), widened by `sadalp` into int32 pairs, 2 rows x 8
//!   columns per register tile.

use super::packed::{GROUP, TILE_BYTES};
use super::ternary::{Sink, Tile, tail_group};
use std::arch::aarch64::*;

/// `acc += dot4(a, b)` per 32-bit lane (`sdot`).
///
/// # Safety
/// The CPU must support the `dotprod` extension.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: `sdot` reads and writes registers only; the caller guarantees the extension.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// The 4 activations of group `g` of row `r` of the tile as one 32-bit lane (zero padded past
/// `k`).
#[inline(always)]
fn x_lane(t: &Tile<'_>, r: usize, g: usize) -> i32 {
    let k = t.k;
    let row = &t.x[(t.row0 + r) * k..(t.row0 + r + 1) * k];
    match row.get(GROUP * g..GROUP * g + GROUP) {
        Some(b) => i32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8]),
        None => tail_group(row, g),
    }
}

/// Writes the integer results `vals` of row `r`, columns `c ..` of the tile (those below
/// `t.cols`) through the tile's sink, as the scalar twin does.
#[inline(always)]
fn store(t: &Tile<'_>, r: usize, c: usize, vals: &[i32]) {
    let at_row = (t.row0 + r) * t.n + t.col0;
    let valid = t.cols.saturating_sub(c).min(vals.len());
    for (j, &acc) in vals[..valid].iter().enumerate() {
        let v = acc - t.rowsums[r];
        // SAFETY: column col0 + c + j < n of row row0 + r < m (the driver's contract); this
        // task is the only writer of the element.
        unsafe {
            match t.sink {
                Sink::I32(p) => *p.0.add(at_row + c + j) = v,
                Sink::F32(p, g) => *p.0.add(at_row + c + j) = v as f32 * (g / t.row_scales[r]),
                Sink::F32Add(p, g) => *p.0.add(at_row + c + j) += v as f32 * (g / t.row_scales[r]),
            }
        }
    }
}

/// The `sdot` micro-kernel: up to 4 rows x one 64-column panel.
///
/// # Safety
/// The CPU must support NEON and `dotprod`; `t` must be in bounds: `1 <= rows <= 4`, rows
/// `row0 .. row0 + rows` of `x` (`k` columns) exist, `tiles` holds `ceil(k / 4) * 256` bytes,
/// `cols <= 64`, and the output rectangle lies inside the live `m x n` output.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn kernel_neon_dot(t: &Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            4 => dot_rows::<4>(t),
            3 => dot_rows::<3>(t),
            2 => dot_rows::<2>(t),
            1 => dot_rows::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "neon,dotprod")]
unsafe fn dot_rows<const R: usize>(t: &Tile<'_>) {
    let groups = t.k.div_ceil(GROUP);
    assert!(t.tiles.len() >= groups * TILE_BYTES, "panel buffer too small");
    assert!(t.rowsums.len() >= R && t.x.len() >= (t.row0 + R) * t.k, "tile rows out of bounds");
    let tp = t.tiles.as_ptr();
    for c0 in (0..t.cols).step_by(16) {
        let mut acc = [[vdupq_n_s32(0); 4]; R];
        for g in 0..groups {
            // SAFETY: group g < groups of the buffer spans 256 bytes; columns c0 .. c0 + 16
            // (c0 + 16 <= 64) are its bytes 4 c0 .. 4 c0 + 64.
            let b = unsafe {
                let p = tp.add(g * TILE_BYTES + GROUP * c0).cast::<i8>();
                [vld1q_s8(p), vld1q_s8(p.add(16)), vld1q_s8(p.add(32)), vld1q_s8(p.add(48))]
            };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = vreinterpretq_s8_s32(vdupq_n_s32(x_lane(t, r, g)));
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    // SAFETY: this function requires `dotprod`.
                    *acc_rv = unsafe { sdot(*acc_rv, bv, a) };
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let mut vals = [0i32; 16];
            for (v, &a) in acc_r.iter().enumerate() {
                // SAFETY: `vals` holds 16 i32, lanes 4 v .. 4 v + 4 are in bounds.
                unsafe { vst1q_s32(vals.as_mut_ptr().add(4 * v), a) };
            }
            store(t, r, c0, &vals);
        }
    }
}

/// Groups whose `smlal` products the plain NEON kernel sums in 16 bits before widening:
/// `64 * 256 = 16384 <= i16::MAX`.
const I16_GROUPS: usize = 64;

/// The plain NEON micro-kernel: up to 2 rows x one 64-column panel.
///
/// # Safety
/// The CPU must support NEON; `t` must be in bounds as for [`kernel_neon_dot`], with
/// `rows <= 2`.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn kernel_neon(t: &Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            2 => neon_rows::<2>(t),
            1 => neon_rows::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "neon")]
unsafe fn neon_rows<const R: usize>(t: &Tile<'_>) {
    let groups = t.k.div_ceil(GROUP);
    assert!(t.tiles.len() >= groups * TILE_BYTES, "panel buffer too small");
    assert!(t.rowsums.len() >= R && t.x.len() >= (t.row0 + R) * t.k, "tile rows out of bounds");
    let tp = t.tiles.as_ptr();
    for c0 in (0..t.cols).step_by(8) {
        // Per row and 4-column vector, int32 pair sums of columns (0, 1) and (2, 3).
        let mut acc = [[[vdupq_n_s32(0); 2]; 2]; R];
        for g0 in (0..groups).step_by(I16_GROUPS) {
            let mut acc16 = [[[vdupq_n_s16(0); 2]; 2]; R];
            for g in g0..(g0 + I16_GROUPS).min(groups) {
                // SAFETY: as in `dot_rows`: columns c0 .. c0 + 8 of group g are in bounds.
                let b = unsafe {
                    let p = tp.add(g * TILE_BYTES + GROUP * c0).cast::<i8>();
                    [vld1q_s8(p), vld1q_s8(p.add(16))]
                };
                for (r, acc_r) in acc16.iter_mut().enumerate() {
                    let a = vreinterpret_s8_s32(vdup_n_s32(x_lane(t, r, g)));
                    for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                        acc_rv[0] = vmlal_s8(acc_rv[0], vget_low_s8(bv), a);
                        acc_rv[1] = vmlal_s8(acc_rv[1], vget_high_s8(bv), a);
                    }
                }
            }
            for (acc_r, acc16_r) in acc.iter_mut().zip(&acc16) {
                for (acc_rv, acc16_rv) in acc_r.iter_mut().zip(acc16_r) {
                    acc_rv[0] = vpadalq_s16(acc_rv[0], acc16_rv[0]);
                    acc_rv[1] = vpadalq_s16(acc_rv[1], acc16_rv[1]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            let mut vals = [0i32; 8];
            for (v, acc_rv) in acc_r.iter().enumerate() {
                // Each pair lane holds two inputs of a column: [c0, c0, c1, c1] + [c2, c2, c3, c3].
                let cols = vpaddq_s32(acc_rv[0], acc_rv[1]);
                // SAFETY: `vals` holds 8 i32, lanes 4 v .. 4 v + 4 are in bounds.
                unsafe { vst1q_s32(vals.as_mut_ptr().add(4 * v), cols) };
            }
            store(t, r, c0, &vals);
        }
    }
}
