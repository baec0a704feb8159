//! The AVX2 + FMA micro-kernel of the bf16 products (see `bf16.rs` and `bf16_tiles.rs`).
//!
//! AVX2 has no bf16 dot product, so each lane pair is widened to two fp32 (a bf16 is the high
//! half of an fp32) and multiplied-added in the order `vdpbf16ps` and the scalar twin use: the
//! high (odd) product first, then the low (even) one. A product of two bf16 is exact in fp32
//! (8 + 8 significant bits), so each fused multiply-add rounds exactly as the twin's addition
//! does. The one difference: the twin (like `vdpbf16ps`) flushes denormal sums to zero and FMA
//! keeps them, so an element can differ by at most `2 * pairs * 2^-126` (sums below 2^-126 in
//! magnitude only), far inside the bound the tests hold every path to.

use super::bf16::{Bf16Tile, MR, NR};
use super::bf16_tiles::KC;
use std::arch::x86_64::*;

/// `fma` micro-kernel: up to 6 rows x one 64-column panel, 16 columns at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `1 <= t.rows <= 6`, `t.pairs <= KC`, `t.a` holds
/// `pairs * 6` lanes (pair-major), `t.b` holds `pairs * 64` lanes, `t.cols <= 64`,
/// `t.l0 + t.cols <= t.k` and `t.out` holds `rows * k` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn kernel_bf16_avx2(t: Bf16Tile<'_>) {
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
unsafe fn rows_avx2<const R: usize>(t: Bf16Tile<'_>) {
    let pairs = t.pairs;
    assert!(pairs <= KC, "bf16 tile deeper than one block");
    assert!(t.a.len() >= pairs * MR && t.b.len() >= pairs * NR, "bf16 tile out of bounds");
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "bf16 tile output");
    // The tile's A lanes widened once to fp32: `[pair][hi R, lo R]`, broadcast from memory below.
    let mut wide = [0f32; 2 * MR * KC];
    for p in 0..pairs {
        for r in 0..R {
            let a = t.a[p * MR + r];
            wide[p * 2 * R + r] = f32::from_bits(a & 0xFFFF_0000);
            wide[p * 2 * R + R + r] = f32::from_bits(a << 16);
        }
    }
    let (wp, bp) = (wide.as_ptr(), t.b.as_ptr());
    let hi_mask = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    for c in (0..t.cols).step_by(16) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..pairs {
            // SAFETY: lanes p * 64 + c .. p * 64 + c + 16 <= (p + 1) * 64 of `b` and entries
            // p * 2R .. (p + 1) * 2R of `wide` are in bounds (asserted above, c < cols <= 64,
            // c a multiple of 16); unaligned loads are allowed.
            unsafe {
                let b = bp.add(p * NR + c);
                let w = wp.add(p * 2 * R);
                let hi = [
                    _mm256_castsi256_ps(_mm256_and_si256(_mm256_loadu_si256(b.cast()), hi_mask)),
                    _mm256_castsi256_ps(_mm256_and_si256(
                        _mm256_loadu_si256(b.add(8).cast()),
                        hi_mask,
                    )),
                ];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*w.add(r));
                    acc_r[0] = _mm256_fmadd_ps(a, hi[0], acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(a, hi[1], acc_r[1]);
                }
                let lo = [
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(b.cast()), 16)),
                    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_loadu_si256(b.add(8).cast()), 16)),
                ];
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = _mm256_broadcast_ss(&*w.add(R + r));
                    acc_r[0] = _mm256_fmadd_ps(a, lo[0], acc_r[0]);
                    acc_r[1] = _mm256_fmadd_ps(a, lo[1], acc_r[1]);
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
