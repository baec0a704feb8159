//! The AVX-512 BF16 micro-kernel of the weight gradient (see `bf16.rs`).

use super::bf16::{Bf16Tile, MR, NR};
use super::x86_lanes::mask_of;
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
            let mask = mask_of(valid);
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

/// Lane indices of the `[pair][MR]` transpose in [`pack_a_output_rows_f32`]: output vector `o`
/// (lanes `16 o .. 16 o + 16` of 8 pairs x 6 rows) takes lane `e` from row `r = (16 o + e) % 6`,
/// pair `p = (16 o + e) / 6`, found at lane `(r % 2) * 8 + p` of the vector holding rows
/// `r - r % 2, r - r % 2 + 1`; `permutex2var` reads rows 0-3 (bit 4 picks rows 2-3), a masked
/// `permutexvar` rows 4-5.
const fn transpose_lanes(o: usize) -> ([i32; 16], [i32; 16], u16) {
    let (mut low, mut high, mut mask) = ([0i32; 16], [0i32; 16], 0u16);
    let mut e = 0;
    while e < 16 {
        let (p, r) = ((16 * o + e) / 6, (16 * o + e) % 6);
        let lane = ((r % 2) * 8 + p) as i32;
        if r < 4 {
            low[e] = lane + 16 * (r / 2) as i32;
        } else {
            high[e] = lane;
            mask |= 1 << e;
        }
        e += 1;
    }
    (low, high, mask)
}

const TRANSPOSE: [([i32; 16], [i32; 16], u16); 3] =
    [transpose_lanes(0), transpose_lanes(1), transpose_lanes(2)];

/// `bf16_tiles::pack_a_output_rows` for fp32 rows on AVX-512 BF16: 16 depth values of each of a
/// tile's 6 rows are rounded by `vcvtneps2bf16` (round to nearest even, NaN quieted, denormal
/// inputs flushed: exactly `f32_to_bf16`) into 8 pairs, and the 6 x 8 pairs are transposed into
/// the tile's `[pair][6]` lanes by two permutes per output vector. Values past the depth are 0
/// (so a last odd pair is `(v, 0)`), and the lanes of rows past `rn` in the last tile are 0.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and BF16; `dst` holds `rn.div_ceil(6) * pc * 6` lanes,
/// and `row(r)` holds at least `min(2 (p0 + pc), depth)` values for every `r < rn`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn pack_a_output_rows_f32<'a>(
    dst: &mut [u32],
    (rn, p0, pc, depth): (usize, usize, usize, usize),
    row: impl Fn(usize) -> &'a [f32],
) {
    let (i0, i1) = (2 * p0, (2 * (p0 + pc)).min(depth));
    if rn == 0 || pc == 0 || i1 <= i0 {
        return;
    }
    let len = i1 - i0;
    let tiles = rn.div_ceil(MR);
    assert!(dst.len() >= tiles * pc * MR, "bf16 output-row pack out of bounds");
    let idx: [(__m512i, __m512i, __mmask16); 3] = std::array::from_fn(|o| {
        let (low, high, mask) = &TRANSPOSE[o];
        // SAFETY: 16 lanes of an [i32; 16] each.
        let (low, high) = unsafe {
            (_mm512_loadu_si512(low.as_ptr().cast()), _mm512_loadu_si512(high.as_ptr().cast()))
        };
        (low, high, *mask)
    });
    for tile in 0..tiles {
        let here = (rn - tile * MR).min(MR);
        let srcs: [&[f32]; MR] =
            std::array::from_fn(|r| if r < here { &row(tile * MR + r)[i0..i1] } else { &[] });
        let base = tile * pc * MR;
        for c in 0..pc.div_ceil(8) {
            let f0 = 16 * c;
            let avail = (len - f0).min(16);
            let load = mask_of(avail);
            let conv = |r: usize| -> __m256i {
                if srcs[r].is_empty() {
                    return _mm256_setzero_si256();
                }
                // SAFETY: f0 < len (16 c <= 2 pc - 2 < len) and the mask covers values
                // f0 .. f0 + avail <= len of the row's block.
                let v = unsafe { _mm512_maskz_loadu_ps(load, srcs[r].as_ptr().add(f0)) };
                // SAFETY: __m256bh and __m256i are both 256 plain bits.
                unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
            };
            let two =
                |r: usize| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(conv(r)), conv(r + 1));
            let (r01, r23, r45) = (two(0), two(2), two(4));
            let lanes = (pc - 8 * c).min(8) * MR;
            for (o, &(low, high, mask)) in idx.iter().enumerate() {
                if 16 * o >= lanes {
                    break;
                }
                let v = _mm512_permutex2var_epi32(r01, low, r23);
                let v = _mm512_mask_permutexvar_epi32(v, mask, high, r45);
                let n = lanes - 16 * o;
                let store = mask_of(n);
                // SAFETY: lanes base + 48 c + 16 o .. + n are pairs 8 c .. 8 c + lanes / 6 < pc
                // of this tile, inside the asserted length.
                unsafe {
                    _mm512_mask_storeu_epi32(
                        dst.as_mut_ptr().add(base + 48 * c + 16 * o).cast(),
                        store,
                        v,
                    )
                };
            }
        }
    }
}
