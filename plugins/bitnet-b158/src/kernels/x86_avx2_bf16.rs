//! The AVX2 + FMA micro-kernel of the bf16 products (see `bf16.rs` and `bf16_tiles.rs`).
//!
//! AVX2 has no bf16 dot product, so each lane pair is widened to two fp32 (a bf16 is the high
//! half of an fp32) and multiplied-added in the order `vdpbf16ps` and the scalar twin use: the
//! high (odd) product first, then the low (even) one. A product of two bf16 is exact in fp32
//! (8 + 8 significant bits), so each fused multiply-add rounds exactly as the twin's addition
//! does. The one difference: the twin (like `vdpbf16ps`) flushes denormal sums to zero and FMA
//! keeps them, so an element can differ by at most `2 * pairs * 2^-126` (sums below 2^-126 in
//! magnitude only), far inside the bound the tests hold every path to.
//!
//! Both operands are widened to fp32 before the micro-kernel runs, not inside it: the driver
//! widens each packed `A` block once ([`widen_a`], then reused by every panel of `B`) and each
//! `KC x 64` slice of a `B` panel once per block ([`widen_b`], then reused by every 6-row tile).
//! The micro-kernel's loop is then only loads, broadcasts and FMAs: 12 accumulators, two `B`
//! vectors and one broadcast fit the 16 `ymm` registers. (Widening inside the loop, with a mask
//! and a shift per `B` vector and the tile's `A` lanes widened on every call, spilled
//! accumulators to the stack and ran the LM head's products at about half the FMA peak.)

use super::bf16::{Bf16Tile, MR, NR};
use super::bf16_tiles::KC;
use std::arch::x86_64::*;

/// One micro-kernel call on widened operands (from [`widen_a`] and [`widen_b`]).
pub(crate) type WideTile<'a> = Bf16Tile<'a, f32>;

/// Widens a packed `A` block (`[tile][pair][MR]` bf16 pairs) to `[tile][pair][hi MR, lo MR]`
/// fp32: `dst` holds `2 * a.len()` floats.
pub(crate) fn widen_a(a: &[u32], dst: &mut [f32]) {
    debug_assert_eq!(dst.len(), 2 * a.len());
    for (lanes, out) in a.chunks_exact(MR).zip(dst.chunks_exact_mut(2 * MR)) {
        let (hi, lo) = out.split_at_mut(MR);
        for ((h, l), &v) in hi.iter_mut().zip(lo).zip(lanes) {
            *h = f32::from_bits(v & 0xFFFF_0000);
            *l = f32::from_bits(v << 16);
        }
    }
}

/// Widens a depth block of a packed `B` panel (`[pair][64]` bf16 pairs) to
/// `[pair][hi 64, lo 64]` fp32: `dst` holds `2 * b.len()` floats.
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn widen_b(b: &[u32], dst: &mut [f32]) {
    assert!(b.len().is_multiple_of(NR) && dst.len() == 2 * b.len(), "bf16 B widening");
    let hi_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for (p, lanes) in b.chunks_exact(NR).enumerate() {
        for v in 0..NR / 8 {
            // SAFETY: lanes v * 8 .. v * 8 + 8 of the pair's 64, and floats p * 128 + v * 8 ..
            // + 8 and p * 128 + 64 + v * 8 .. + 8 of `dst`, are in bounds (asserted above).
            unsafe {
                let x = _mm256_loadu_si256(lanes.as_ptr().add(8 * v).cast());
                let d = dst.as_mut_ptr().add(p * 2 * NR + 8 * v);
                _mm256_storeu_si256(d.cast(), _mm256_and_si256(x, hi_mask));
                _mm256_storeu_si256(d.add(NR).cast(), _mm256_slli_epi32(x, 16));
            }
        }
    }
}

/// `fma` micro-kernel: up to 6 rows x one 64-column panel, 16 columns at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `1 <= t.rows <= 6`, `t.pairs <= KC`, `t.a` holds
/// `pairs * 12` floats, `t.b` holds `pairs * 128` floats, `t.cols <= 64`,
/// `t.l0 + t.cols <= t.k` and `t.out` holds `rows * k` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn kernel_bf16_avx2(t: WideTile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            6 => rows_avx2::<6>(t),
            5 => rows_avx2::<5>(t),
            4 => rows_avx2::<4>(t),
            3 => rows_avx2::<3>(t),
            2 => rows_avx2::<2>(t),
            1 => rows_avx2::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

/// The mask of the first `min(rest, 8)` lanes of an 8-lane vector, for `maskload`/`maskstore`.
#[inline(always)]
pub(crate) fn mask8(rest: usize) -> [i32; 8] {
    let mut m = [0i32; 8];
    for (i, v) in m.iter_mut().enumerate() {
        *v = if i < rest { -1 } else { 0 };
    }
    m
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<const R: usize>(t: WideTile<'_>) {
    let pairs = t.pairs;
    assert!(pairs <= KC, "bf16 tile deeper than one block");
    assert!(t.a.len() >= pairs * 2 * MR && t.b.len() >= pairs * 2 * NR, "bf16 tile out of bounds");
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "bf16 tile output");
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    for c in (0..t.cols).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..pairs {
            // SAFETY: floats p * 128 + c .. + 16 and p * 128 + 64 + c .. + 16 of `b` (c < cols
            // <= 64, c a multiple of 16) and p * 12 .. p * 12 + 12 of `a` are in bounds
            // (asserted above); unaligned loads are allowed.
            unsafe {
                let b = bp.add(p * 2 * NR + c);
                let a = ap.add(p * 2 * MR);
                let hi = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r));
                    acc_r[0] = _mm256_fmadd_ps(x, hi[0], acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(x, hi[1], acc_r[1]);
                }
                let lo = [_mm256_loadu_ps(b.add(NR)), _mm256_loadu_ps(b.add(NR + 8))];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(MR + r));
                    acc_r[0] = _mm256_fmadd_ps(x, lo[0], acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(x, lo[1], acc_r[1]);
                }
            }
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (v, &acc_rv) in acc_r.iter().enumerate() {
                let col = c + 8 * v;
                if col >= t.cols {
                    break;
                }
                let m = mask8(t.cols - col);
                // SAFETY: the masked lanes are columns l0 + col .. l0 + min(col + 8, cols) <= k
                // of row r < R of `out` (asserted above); `out` is an exclusive borrow.
                unsafe {
                    let mask = _mm256_loadu_si256(m.as_ptr().cast());
                    let dst = t.out.as_mut_ptr().add(r * t.k + t.l0 + col);
                    let y = if t.accumulate {
                        _mm256_add_ps(_mm256_maskload_ps(dst, mask), acc_rv)
                    } else {
                        acc_rv
                    };
                    _mm256_maskstore_ps(dst, mask, y);
                }
            }
        }
    }
}
