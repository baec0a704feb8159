//! The AVX-512 VNNI micro-kernel of the block-scaled int8 weight gradient (see `i8_grad.rs`).

use super::i8_grad::{ASlices, BLOCK, I8Tile, MR, NR, QUADS};
use super::x86_lanes::mask_of;
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
        blocks >= 1
            && t.a.len() >= (blocks - 1) * t.a_stride + QUADS * MR
            && t.b.len() >= blocks * QUADS * NR
            && t.scales.len() >= (blocks - 1) * t.s_stride + MR
            && t.inits.len() >= (blocks - 1) * t.s_stride + MR,
        "int8 gradient tile out of bounds"
    );
    assert!(t.cols <= NR && t.l0 + t.cols <= t.k && t.out.len() >= R * t.k, "int8 tile output");
    let masks: [__mmask16; 2] = [mask_of(t.cols), mask_of(t.cols.saturating_sub(16))];
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
        let s0 = bl * t.s_stride;
        for (r, s) in sums.iter_mut().enumerate() {
            let init = _mm512_set1_epi32(t.inits[s0 + r]);
            *s = [init, init];
        }
        for qq in 0..QUADS {
            let q = bl * QUADS + qq;
            // SAFETY: lanes q * 32 .. q * 32 + 32 of `b` and lane bl * a_stride + qq * 6 + r
            // (r < R <= 6) of `a` are in bounds (asserted above); unaligned loads are allowed.
            unsafe {
                let b = bp.add(q * NR);
                let b = [_mm512_loadu_si512(b.cast()), _mm512_loadu_si512(b.add(16).cast())];
                let a_q = ap.add(bl * t.a_stride + qq * MR);
                for (r, s) in sums.iter_mut().enumerate() {
                    let a = _mm512_set1_epi32(*a_q.add(r) as i32);
                    s[0] = _mm512_dpbusd_epi32(s[0], b[0], a);
                    s[1] = _mm512_dpbusd_epi32(s[1], b[1], a);
                }
            }
        }
        for (r, (acc_r, s)) in acc.iter_mut().zip(&sums).enumerate() {
            let c = _mm512_set1_ps(t.scales[s0 + r]);
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

/// One 32-column panel of `X_q + 128` as `[quad][NR]` lanes of four tokens' bytes, 16 columns
/// per vector: each token's bytes are loaded (masked past `k`), flipped, widened to 32-bit
/// lanes and shifted to their byte; tokens past `m` and columns past `k` are 128. The same
/// lanes as `i8_grad::pack_b_panel`.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `l0 < k`, `x_q` holds `m * k` codes and `dst` is a
/// whole number of `NR`-lane rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_b_panel_avx512(
    x_q: &[i8],
    m: usize,
    k: usize,
    l0: usize,
    dst: &mut [u32],
) {
    assert!(l0 < k && x_q.len() >= m * k && dst.len().is_multiple_of(NR), "int8 pack panel");
    let cols = (k - l0).min(NR);
    let masks: [__mmask16; 2] = [mask_of(cols), mask_of(cols.saturating_sub(16))];
    let flip = _mm_set1_epi8(i8::MIN);
    let row = |i: usize, h: usize| -> __m512i {
        let bytes = if i < m && masks[h] != 0 {
            // SAFETY: row i < m, columns l0 + 16 h .. l0 + 16 h + 16 masked to those below k;
            // the first one is in bounds since masks[h] != 0 means cols > 16 h.
            unsafe { _mm_maskz_loadu_epi8(masks[h], x_q.as_ptr().add(i * k + l0 + 16 * h)) }
        } else {
            _mm_setzero_si128()
        };
        _mm512_cvtepu8_epi32(_mm_xor_si128(bytes, flip))
    };
    for (q, lane_row) in dst.chunks_exact_mut(NR).enumerate() {
        for h in 0..2 {
            let i = 4 * q;
            let v = _mm512_or_si512(
                _mm512_or_si512(row(i, h), _mm512_slli_epi32::<8>(row(i + 1, h))),
                _mm512_or_si512(
                    _mm512_slli_epi32::<16>(row(i + 2, h)),
                    _mm512_slli_epi32::<24>(row(i + 3, h)),
                ),
            );
            // SAFETY: lanes 16 h .. 16 h + 16 of a row of NR = 32 lanes.
            unsafe { _mm512_storeu_si512(lane_row.as_mut_ptr().add(16 * h).cast(), v) };
        }
    }
}

/// Stores lanes `0 .. valid` of `v`, the values of rows `r0 .. r0 + valid`, at their places in
/// a `[tile][..][MR]` layout: row `r` goes to `at(r / MR) + r % MR`. One masked store per run of
/// rows inside one tile (at most four for 16 lanes).
///
/// # Safety
/// The CPU must support AVX-512 F; every `at(tile) + lane` of the rows is inside `dst`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn store_tiled<T: Lane32>(
    dst: &mut [T],
    v: __m512i,
    r0: usize,
    valid: usize,
    at: impl Fn(usize) -> usize,
) {
    let mut r = r0;
    while r < r0 + valid {
        let end = ((r / MR + 1) * MR).min(r0 + valid);
        let to = at(r / MR) + r % MR;
        debug_assert!(to + (end - r) <= dst.len());
        let (lo, hi) = (r - r0, end - r0);
        let mask: __mmask16 = (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as u16;
        // Lane e of `v` lands at `to + e - lo`: only lanes lo .. hi are written, at
        // to .. to + (end - r), in bounds by the contract; the base pointer itself may lie before
        // `dst` (never dereferenced), hence `wrapping_sub`.
        let base = dst.as_mut_ptr().wrapping_add(to).wrapping_sub(lo);
        // SAFETY: see above.
        unsafe { _mm512_mask_storeu_epi32(base.cast(), mask, v) };
        r = end;
    }
}

/// `i8_grad::pack_a` (depth-major `A`) on AVX-512: 16 output rows per vector. Per token block,
/// pass 1 takes the absmax of `dy[i][j] * (1 / s_i)` over the block's tokens, walking each
/// token's rows along memory (NaN made canonical, as `amax_step`); pass 2, on the same values
/// now in cache, codes each value as `code` does (multiply,
/// comparison clamp to +-127, round half to even by `vcvtps2dq` in the default rounding mode),
/// packs four tokens' codes per 32-bit lane and sums them; codes, scales and starting sums are
/// stored straight into the micro-kernel's tile layout. The same operations per element as the
/// scalar packer, so the same bits.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; the slices hold `rn` rows and `bc` blocks; `dy` holds `m * n` values, `inv_s` `m`, and `j0 + rn <= n`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_a_avx512(
    ASlices { codes, scales, inits }: ASlices<'_>,
    dy: &[f32],
    inv_s: &[f32],
    (m, n): (usize, usize),
    (j0, rn): (usize, usize),
    (b0, bc): (usize, usize),
) {
    let tiles = rn.div_ceil(MR);
    assert!(
        j0 + rn <= n
            && dy.len() >= m * n
            && inv_s.len() >= m
            && codes.len() >= tiles * bc * QUADS * MR
            && scales.len() >= tiles * bc * MR
            && inits.len() >= tiles * bc * MR
            && (bc == 0 || (b0 + bc - 1) * BLOCK < m),
        "int8 A block out of bounds"
    );
    let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
    let (c127, nan) = (_mm512_set1_ps(127.0), _mm512_set1_ps(f32::NAN));
    let byte = _mm512_set1_epi32(0xFF);
    let groups = rn.div_ceil(16);
    assert!(groups <= MAX_GROUPS, "int8 A block of {rn} rows");
    // The block's absmax and code factor of each group of 16 rows.
    let mut amax = [_mm512_setzero_ps(); MAX_GROUPS];
    let mut inverse = [_mm512_setzero_ps(); MAX_GROUPS];
    let mut seen_nan = [0 as __mmask16; MAX_GROUPS];
    // `dy[i][j0 + 16 g ..] * (1 / s_i)`, masked to the block's rows.
    let scaled = |i: usize, g: usize| -> __m512 {
        // SAFETY: token i < m, rows j0 + 16 g + (lanes below the mask) < j0 + rn <= n.
        let v = unsafe {
            _mm512_maskz_loadu_ps(mask_of(rn - 16 * g), dy.as_ptr().add(i * n + j0 + 16 * g))
        };
        _mm512_mul_ps(v, _mm512_set1_ps(inv_s[i]))
    };
    for bl in 0..bc {
        let i0 = (b0 + bl) * BLOCK;
        let live = (m - i0).min(BLOCK);
        // Pass 1, token by token along memory (each token's rows are contiguous): the absmax of
        // every row over the block's tokens, NaN kept apart as `amax_step` does.
        amax[..groups].fill(_mm512_setzero_ps());
        seen_nan[..groups].fill(0);
        for i in i0..i0 + live {
            // The rows of a token a few ahead (in this block or the next): each token's rows are
            // a separate short run of memory (`n` floats apart), which the hardware prefetchers
            // pick up late. Measured on the LM head's dW (`kernel -- head-summary`, d = 256,
            // 1 thread): 12.3 ms without, 10.8-10.9 ms 2 to 16 tokens ahead.
            let ahead = (i + PREFETCH_TOKENS < m)
                .then(|| dy.as_ptr().wrapping_add((i + PREFETCH_TOKENS) * n + j0));
            for g in 0..groups {
                if let Some(p) = ahead {
                    // SAFETY: a prefetch never faults; the address is inside `dy` (token < m).
                    // (An `unsafe` call for older compilers, such as the workspace's
                    // rust-version 1.90; a safe one in this target-feature context for newer.)
                    #[allow(unused_unsafe)]
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(16 * g).cast())
                    };
                }
                let x = _mm512_abs_ps(scaled(i, g));
                seen_nan[g] |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
                // `x > amax ? x : amax` for the lanes without a NaN.
                amax[g] = _mm512_max_ps(x, amax[g]);
            }
        }
        for g in 0..groups {
            let a = _mm512_mask_mov_ps(amax[g], seen_nan[g], nan);
            // block_scale: both 0 unless amax > 0 or NaN.
            let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, _mm512_setzero_ps()) | seen_nan[g];
            inverse[g] = _mm512_maskz_div_ps(keep, c127, a);
            let scale = _mm512_maskz_div_ps(keep, a, c127);
            let (r0, valid) = (16 * g, (rn - 16 * g).min(16));
            // SAFETY: rows r0 .. r0 + valid < rn of block bl, inside the slices sized for
            // `tiles` tiles and `bc` blocks (the same for the two stores below).
            unsafe {
                store_tiled(scales, _mm512_castps_si512(scale), r0, valid, |tile| {
                    (tile * bc + bl) * MR
                })
            };
        }
        // Pass 2, on the block's values (now in cache): codes, four tokens per lane, and sums.
        for (g, &inverse) in inverse.iter().enumerate().take(groups) {
            let (r0, valid) = (16 * g, (rn - 16 * g).min(16));
            let mut sums = _mm512_setzero_si512();
            for quad in 0..QUADS {
                let mut lanes = _mm512_setzero_si512();
                for t in 0..4 {
                    let tok = 4 * quad + t;
                    if tok >= live {
                        break;
                    }
                    let x = _mm512_mul_ps(scaled(i0 + tok, g), inverse);
                    // clamp_like_simd: `x > lo ? x : lo` (NaN -> lo), then `x < hi ? x : hi`.
                    let x = _mm512_min_ps(_mm512_max_ps(x, lo), hi);
                    let c = _mm512_cvtps_epi32(x);
                    sums = _mm512_add_epi32(sums, c);
                    let b = _mm512_and_si512(c, byte);
                    lanes = _mm512_or_si512(
                        lanes,
                        _mm512_sllv_epi32(b, _mm512_set1_epi32(8 * t as i32)),
                    );
                }
                // SAFETY: as for the scales.
                unsafe {
                    store_tiled(codes, lanes, r0, valid, |tile| {
                        (tile * bc + bl) * QUADS * MR + quad * MR
                    })
                };
            }
            let init = _mm512_mullo_epi32(sums, _mm512_set1_epi32(-128));
            // SAFETY: as for the scales.
            unsafe { store_tiled(inits, init, r0, valid, |tile| (tile * bc + bl) * MR) };
        }
    }
}

/// How many tokens ahead pass 1 of `pack_a_avx512` prefetches.
const PREFETCH_TOKENS: usize = 4;

/// Groups of 16 rows in one call (`i8_grad::PACK_ROWS_AVX512` rows at most).
const MAX_GROUPS: usize = super::i8_grad::PACK_ROWS_AVX512 / 16;

/// A 32-bit lane type `store_tiled` may write vector lanes into (every bit pattern valid).
trait Lane32: Copy {}
impl Lane32 for u32 {}
impl Lane32 for i32 {}
impl Lane32 for f32 {}
