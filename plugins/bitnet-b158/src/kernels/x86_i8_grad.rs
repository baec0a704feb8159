//! The AVX-512 VNNI micro-kernel of the block-scaled int8 weight gradient (see `i8_grad.rs`).

use super::i8_grad::{I8Tile, MR, NR, QUADS};
use std::arch::x86_64::*;

/// `vpdpbusd` micro-kernel: up to 6 rows x one 32-column panel of `dW`, over `t.blocks` token
/// blocks; per block and output vector one int32 accumulator (8 `vpdpbusd` steps from the
/// block's starting sum), then one conversion and one fused multiply-add into fp32.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and VNNI; `1 <= t.rows <= 6`, `t.a` holds
/// `blocks * QUADS * 6` lanes, `t.scales` and `t.inits` `blocks * 6`, `t.b` `blocks * QUADS * 32`,
/// `t.cols <= 32`, `t.l0 + t.cols <= t.k` and `t.out` holds `rows * k` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn kernel_i8_grad(t: I8Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            6 => rows_i8::<6>(t),
            5 => rows_i8::<5>(t),
            4 => rows_i8::<4>(t),
            3 => rows_i8::<3>(t),
            2 => rows_i8::<2>(t),
            1 => rows_i8::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn rows_i8<const R: usize>(t: I8Tile<'_>) {
    let blocks = t.blocks;
    assert!(
        t.a.len() >= blocks * QUADS * MR
            && t.b.len() >= blocks * QUADS * NR
            && t.scales.len() >= blocks * MR
            && t.inits.len() >= blocks * MR,
        "int8 gradient tile out of bounds"
    );
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "int8 tile output");
    let masks: [__mmask16; 2] = [
        if t.cols >= 16 { 0xFFFF } else { (1u16 << t.cols) - 1 },
        if t.cols >= 32 {
            0xFFFF
        } else if t.cols > 16 {
            (1u16 << (t.cols - 16)) - 1
        } else {
            0
        },
    ];
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    if t.accumulate {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (v, acc_rv) in acc_r.iter_mut().enumerate() {
                // SAFETY: the masked lanes are columns l0 + 16 v .. l0 + cols <= k of row r < R
                // of `out` (asserted above).
                unsafe {
                    let src = t.out.as_ptr().add(r * t.k + t.l0 + 16 * v);
                    *acc_rv = _mm512_maskz_loadu_ps(masks[v], src);
                }
            }
        }
    }
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    for bl in 0..blocks {
        let mut sums = [[_mm512_setzero_si512(); 2]; R];
        for (r, s) in sums.iter_mut().enumerate() {
            let init = _mm512_set1_epi32(t.inits[bl * MR + r]);
            *s = [init, init];
        }
        for q in bl * QUADS..(bl + 1) * QUADS {
            // SAFETY: lanes q * 32 .. q * 32 + 32 of `b` and lane q * 6 + r (r < R <= 6) of `a`
            // are in bounds (asserted above); unaligned loads are allowed.
            unsafe {
                let b = bp.add(q * NR);
                let b = [_mm512_loadu_si512(b.cast()), _mm512_loadu_si512(b.add(16).cast())];
                for (r, s) in sums.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(*ap.add(q * MR + r) as i32);
                    s[0] = _mm512_dpbusd_epi32(s[0], b[0], a);
                    s[1] = _mm512_dpbusd_epi32(s[1], b[1], a);
                }
            }
        }
        for (r, (acc_r, s)) in acc.iter_mut().zip(&sums).enumerate() {
            let c = _mm512_set1_ps(t.scales[bl * MR + r]);
            acc_r[0] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(s[0]), acc_r[0]);
            acc_r[1] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(s[1]), acc_r[1]);
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &acc_rv) in acc_r.iter().enumerate() {
            if masks[v] == 0 {
                continue;
            }
            // SAFETY: as for the loads above; `out` is an exclusive borrow.
            unsafe {
                let dst = t.out.as_mut_ptr().add(r * t.k + t.l0 + 16 * v);
                _mm512_mask_storeu_ps(dst, masks[v], acc_rv);
            }
        }
    }
}
