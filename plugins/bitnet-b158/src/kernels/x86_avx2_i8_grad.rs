//! The AVX2 micro-kernel of the int8 weight gradient (see `i8_grad.rs`).
//!
//! AVX2 has no `vpdpbusd`, and `vpmaddubsw` saturates its 16-bit pair sums (255 * 127 * 2 does
//! not fit), so the bytes are widened to 16 bits instead: the unsigned `X_q + 128` bytes of a
//! lane split into tokens (0, 2) and (1, 3) by masks and shifts, the signed codes of `A` into the
//! same pairs, sign-extended, and `vpmaddwd` adds each pair of exact products into an int32.
//! Every block sum is therefore the same exact integer as the scalar twin's, and the blocks are
//! combined with the same fused multiply-adds in the same order: bit-identical.

use super::i8_grad::{I8Tile, KB, MR, NR, QUADS};
use super::x86_avx2_bf16::mask8;
use std::arch::x86_64::*;

/// Micro-kernel: up to 6 rows x one 32-column panel, 8 columns at a time, over the tile's
/// token blocks.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `1 <= t.rows <= 6`, `t.blocks <= KB`, `t.a` holds
/// `(blocks - 1) * a_stride + QUADS * 6` lanes, `t.scales` and `t.inits` hold
/// `(blocks - 1) * s_stride + 6` entries, `t.b` holds `blocks * QUADS * 32` lanes,
/// `t.cols <= 32`, `t.l0 + t.cols <= t.k` and `t.out` holds `rows * k` floats.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn kernel_i8_grad_avx2(t: I8Tile<'_>) {
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

/// The bounds both AVX2 kernels rely on: at most `KB` blocks, and the tile's slices long enough
/// for its blocks, rows and columns.
fn check_tile(t: &I8Tile<'_>, rows: usize) {
    let blocks = t.blocks;
    assert!((1..=KB).contains(&blocks), "int8 tile block count");
    assert!(
        t.a.len() >= (blocks - 1) * t.a_stride + QUADS * MR
            && t.scales.len() >= (blocks - 1) * t.s_stride + MR
            && t.inits.len() >= (blocks - 1) * t.s_stride + MR
            && t.b.len() >= blocks * QUADS * NR,
        "int8 tile out of bounds"
    );
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= rows * t.k, "int8 tile output");
}

/// The mask of the first `rest` (at most 8) 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lane_mask_i32(rest: usize) -> __m256i {
    let m = mask8(rest);
    // SAFETY: `m` holds exactly 8 i32.
    unsafe { _mm256_loadu_si256(m.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<const R: usize>(t: I8Tile<'_>) {
    let blocks = t.blocks;
    check_tile(&t, R);
    // The tile's codes split once, eight lanes at a time (six rows used):
    // `[block][quad][even 8, odd 8]`, broadcast from memory below.
    let mut wide = [0u32; 16 * QUADS * KB];
    let six = lane_mask_i32(MR);
    for bl in 0..blocks {
        for q in 0..QUADS {
            // SAFETY: lanes bl * a_stride + q * 6 .. + 6 of `a` are in bounds (asserted above;
            // q * 6 + 6 <= QUADS * 6); masked-off lanes are not read. `wide` holds 16 lanes at
            // (bl * QUADS + q) * 16 (bl < KB).
            unsafe {
                let v =
                    _mm256_maskload_epi32(t.a.as_ptr().add(bl * t.a_stride + q * MR).cast(), six);
                let even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 8);
                let odd = _mm256_srai_epi16(v, 8);
                let w = wide.as_mut_ptr().add((bl * QUADS + q) * 16);
                _mm256_storeu_si256(w.cast(), even);
                _mm256_storeu_si256(w.add(8).cast(), odd);
            }
        }
    }
    let (wp, bp) = (wide.as_ptr(), t.b.as_ptr());
    let low_bytes = _mm256_set1_epi32(0x00FF_00FF);
    for c in (0..t.cols).step_by(8) {
        let m = mask8(t.cols - c);
        // SAFETY: `m` is 8 lanes.
        let mask = unsafe { _mm256_loadu_si256(m.as_ptr().cast()) };
        let mut facc = [_mm256_setzero_ps(); R];
        if t.accumulate {
            for (r, f) in facc.iter_mut().enumerate() {
                // SAFETY: the masked lanes are columns l0 + c .. l0 + min(c + 8, cols) <= k of
                // row r < R of `out` (asserted above).
                *f = unsafe { _mm256_maskload_ps(t.out.as_ptr().add(r * t.k + t.l0 + c), mask) };
            }
        }
        for bl in 0..blocks {
            let mut iacc = [_mm256_setzero_si256(); R];
            for (r, acc) in iacc.iter_mut().enumerate() {
                *acc = _mm256_set1_epi32(t.inits[bl * t.s_stride + r]);
            }
            for q in 0..QUADS {
                // SAFETY: lanes (bl * QUADS + q) * 32 + c .. + 8 <= blocks * QUADS * 32 of `b`
                // (c + 8 <= 32) and entries (bl * QUADS + q) * 16 .. + 16 of `wide` are in
                // bounds (asserted above); unaligned loads are allowed.
                unsafe {
                    let bv = _mm256_loadu_si256(bp.add((bl * QUADS + q) * NR + c).cast());
                    let b_even = _mm256_and_si256(bv, low_bytes);
                    let b_odd = _mm256_and_si256(_mm256_srli_epi32(bv, 8), low_bytes);
                    let w = wp.add((bl * QUADS + q) * 16);
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let ae = _mm256_set1_epi32(*w.add(r) as i32);
                        let ao = _mm256_set1_epi32(*w.add(8 + r) as i32);
                        let s = _mm256_add_epi32(
                            _mm256_madd_epi16(b_even, ae),
                            _mm256_madd_epi16(b_odd, ao),
                        );
                        *acc = _mm256_add_epi32(*acc, s);
                    }
                }
            }
            for (r, (f, &acc)) in facc.iter_mut().zip(&iacc).enumerate() {
                let scale = _mm256_set1_ps(t.scales[bl * t.s_stride + r]);
                *f = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(acc), *f);
            }
        }
        for (r, &f) in facc.iter().enumerate() {
            // SAFETY: as the masked load above; `out` is an exclusive borrow.
            unsafe { _mm256_maskstore_ps(t.out.as_mut_ptr().add(r * t.k + t.l0 + c), mask, f) };
        }
    }
}

/// The AVX-VNNI micro-kernel (`vpdpbusd` on 256-bit registers): the tile of
/// [`kernel_i8_grad_avx2`], with each lane's four-token dot product of the unsigned `X_q + 128`
/// bytes and the signed codes added straight into int32, as the AVX-512 VNNI kernel does, so no
/// widening of the codes. Block sums are the same exact integers, combined in the same order:
/// bit-identical to the scalar twin.
///
/// # Safety
/// The CPU must support AVX2, FMA and AVX-VNNI; the tile as for [`kernel_i8_grad_avx2`].
#[target_feature(enable = "avx2,fma,avxvnni")]
pub(crate) unsafe fn kernel_i8_grad_avx_vnni(t: I8Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            6 => rows_avx_vnni::<6>(t),
            5 => rows_avx_vnni::<5>(t),
            4 => rows_avx_vnni::<4>(t),
            3 => rows_avx_vnni::<3>(t),
            2 => rows_avx_vnni::<2>(t),
            1 => rows_avx_vnni::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn rows_avx_vnni<const R: usize>(t: I8Tile<'_>) {
    let blocks = t.blocks;
    check_tile(&t, R);
    let (ap, bp) = (t.a.as_ptr(), t.b.as_ptr());
    // 16 columns (two vectors) at a time: 2 R int32 accumulators, the two `B` vectors and one
    // broadcast fit the 16 registers for R = 6 (one vector at a time left six dependent chains
    // of `vpdpbusd`, too few to cover its latency). The fp32 sums are touched once per block,
    // so they live in memory.
    for c in (0..t.cols).step_by(16) {
        let masks = [lane_mask_i32(t.cols - c), lane_mask_i32(t.cols.saturating_sub(c + 8))];
        let mut facc = [[_mm256_setzero_ps(); 2]; R];
        if t.accumulate {
            for (r, f) in facc.iter_mut().enumerate() {
                for (v, fv) in f.iter_mut().enumerate() {
                    // SAFETY: the masked lanes are columns l0 + c + 8 v .. < l0 + cols <= k of
                    // row r < R of `out` (asserted above); masked-off lanes are not read.
                    *fv = unsafe {
                        _mm256_maskload_ps(t.out.as_ptr().add(r * t.k + t.l0 + c + 8 * v), masks[v])
                    };
                }
            }
        }
        for bl in 0..blocks {
            let mut iacc = [[_mm256_setzero_si256(); 2]; R];
            for (r, acc) in iacc.iter_mut().enumerate() {
                *acc = [_mm256_set1_epi32(t.inits[bl * t.s_stride + r]); 2];
            }
            for q in 0..QUADS {
                // SAFETY: lanes (bl * QUADS + q) * 32 + c .. + 16 of `b` (c + 16 <= 32) and
                // lanes bl * a_stride + q * 6 + r (r < R <= 6) of `a` are in bounds (asserted
                // above); unaligned loads are allowed.
                unsafe {
                    let b = bp.add((bl * QUADS + q) * NR + c);
                    let bv = [_mm256_loadu_si256(b.cast()), _mm256_loadu_si256(b.add(8).cast())];
                    let a_q = ap.add(bl * t.a_stride + q * MR);
                    for (r, acc) in iacc.iter_mut().enumerate() {
                        let a = _mm256_set1_epi32(*a_q.add(r) as i32);
                        acc[0] = _mm256_dpbusd_avx_epi32(acc[0], bv[0], a);
                        acc[1] = _mm256_dpbusd_avx_epi32(acc[1], bv[1], a);
                    }
                }
            }
            for (r, (f, acc)) in facc.iter_mut().zip(&iacc).enumerate() {
                let scale = _mm256_set1_ps(t.scales[bl * t.s_stride + r]);
                for (fv, &av) in f.iter_mut().zip(acc) {
                    *fv = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(av), *fv);
                }
            }
        }
        for (r, f) in facc.iter().enumerate() {
            for (v, &fv) in f.iter().enumerate() {
                // SAFETY: as the masked load above; `out` is an exclusive borrow.
                unsafe {
                    _mm256_maskstore_ps(
                        t.out.as_mut_ptr().add(r * t.k + t.l0 + c + 8 * v),
                        masks[v],
                        fv,
                    )
                };
            }
        }
    }
}

/// Pass 1 of `pack_a` on AVX2: `amax[r]` becomes the absmax of `dy[i][j0 + r] * inv_s[i]` over
/// the tokens `i0 .. i1`, NaN (canonical) where any value is NaN: what `amax_step` computes, with
/// the NaNs tracked apart so that `vmaxps` only sees numbers. Walks token by token along memory
/// and prefetches a few tokens ahead, as the AVX-512 packer does (each token's rows are a short
/// run `n` floats from the next, which the hardware prefetchers pick up late).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn block_amax_avx2(
    amax: &mut [f32],
    dy: &[f32],
    inv_s: &[f32],
    (n, j0): (usize, usize),
    (i0, i1): (usize, usize),
) {
    const MAX_ROWS: usize = 1024;
    const AHEAD: usize = 4;
    let rn = amax.len();
    assert!(rn <= MAX_ROWS && j0 + rn <= n, "int8 A block of {rn} rows");
    assert!(i0 <= i1 && i1 <= inv_s.len() && i1 * n <= dy.len(), "int8 A block out of bounds");
    let vecs = rn / 8;
    let mut nan = [0u32; MAX_ROWS];
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    amax.fill(0.0);
    for i in i0..i1 {
        let f = _mm256_set1_ps(inv_s[i]);
        let row = dy[i * n + j0..i * n + j0 + rn].as_ptr();
        let ahead = (i + AHEAD < i1).then(|| dy.as_ptr().wrapping_add((i + AHEAD) * n + j0));
        for v in 0..vecs {
            if let Some(p) = ahead.filter(|_| v % 2 == 0) {
                // SAFETY: a prefetch never faults; the address is inside `dy` (token < i1).
                #[allow(unused_unsafe)]
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(8 * v).cast())
                };
            }
            // SAFETY: rows 8 v .. 8 v + 8 <= rn of this token's run, of `amax` and of `nan`.
            unsafe {
                let x = _mm256_and_ps(_mm256_mul_ps(_mm256_loadu_ps(row.add(8 * v)), f), abs);
                let np = nan.as_mut_ptr().add(8 * v).cast::<__m256>();
                _mm256_storeu_ps(
                    np.cast(),
                    _mm256_or_ps(_mm256_loadu_ps(np.cast()), _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x)),
                );
                let ap = amax.as_mut_ptr().add(8 * v);
                _mm256_storeu_ps(ap, _mm256_max_ps(x, _mm256_loadu_ps(ap)));
            }
        }
        let tail = &dy[i * n + j0 + 8 * vecs..i * n + j0 + rn];
        for (a, &v) in amax[8 * vecs..].iter_mut().zip(tail) {
            *a = super::i8_grad::amax_step(*a, (v * inv_s[i]).abs());
        }
    }
    for (a, &seen) in amax[..8 * vecs].iter_mut().zip(&nan) {
        if seen != 0 {
            *a = f32::NAN;
        }
    }
}
