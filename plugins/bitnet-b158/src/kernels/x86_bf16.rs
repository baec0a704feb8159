//! The AVX-512 BF16 micro-kernel of the weight gradient (see `bf16.rs`).

use super::bf16::{Bf16Tile, MR, NR};
use std::arch::x86_64::*;

/// `vdpbf16ps` micro-kernel: up to 6 rows x one 64-column panel of `dW`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and BF16; `1 <= t.rows <= 6`, `t.a` holds
/// `pairs * 6` lanes (pair-major), `t.b` holds `pairs * 64` lanes, `t.cols <= 64`, `t.l0 + t.cols <= t.k`
/// and `t.out` holds `rows * k` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn kernel_bf16(t: Bf16Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            6 => rows_bf16::<6>(t),
            5 => rows_bf16::<5>(t),
            4 => rows_bf16::<4>(t),
            3 => rows_bf16::<3>(t),
            2 => rows_bf16::<2>(t),
            1 => rows_bf16::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn rows_bf16<const R: usize>(t: Bf16Tile<'_>) {
    let pairs = t.pairs;
    assert!(t.a.len() >= pairs * MR && t.b.len() >= pairs * NR, "bf16 tile out of bounds");
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "bf16 tile output");
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for p in 0..pairs {
        // SAFETY: lanes p * 64 .. p * 64 + 64 of `b` and lane p * 6 + r (r < R <= 6) of `a`
        // are in bounds (asserted above); unaligned loads are allowed.
        unsafe {
            let b = bp.add(p * NR);
            let b = [
                _mm512_loadu_si512(b.cast()),
                _mm512_loadu_si512(b.add(16).cast()),
                _mm512_loadu_si512(b.add(32).cast()),
                _mm512_loadu_si512(b.add(48).cast()),
            ];
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + r) as i32));
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    let bv: __m512bh = std::mem::transmute(bv);
                    *acc_rv = _mm512_dpbf16_ps(*acc_rv, a, bv);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &acc_rv) in acc_r.iter().enumerate() {
            let c = 16 * v;
            if c >= t.cols {
                break;
            }
            let valid = (t.cols - c).min(16);
            let mask: __mmask16 = if valid == 16 { 0xFFFF } else { (1u16 << valid) - 1 };
            // SAFETY: the masked lanes are columns l0 + c .. l0 + c + valid <= k of row r < R of
            // `out` (asserted above); `out` is an exclusive borrow.
            unsafe {
                let dst = t.out.as_mut_ptr().add(r * t.k + t.l0 + c);
                let y = if t.accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), acc_rv)
                } else {
                    acc_rv
                };
                _mm512_mask_storeu_ps(dst, mask, y);
            }
        }
    }
}
