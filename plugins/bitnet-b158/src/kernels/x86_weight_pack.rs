//! AVX-512 fused quantize-and-pack and absmean block sums; the scalar twins in
//! `weight_pack.rs` define their exact semantics.
//!
//! The panel kernel works on tiles of 16 rows (outputs `16 v .. 16 v + 16` of a forward panel)
//! by 64 columns: each row becomes one vector of 64 codes (two comparisons per 16 weights), and
//! both packings are byte shuffles of those 16 vectors:
//! - forward: rows `4 t + r` (t = 0..3) go to bits `2 t` of the bytes `16 v + 4 r + kk` of each
//!   4-column group, so the rows are combined with shifts and a 4 x 16 dword transpose hands out
//!   16 bytes per group;
//! - transposed: the 4 rows of a group `G` fill one whole 64-byte block of the transposed panel
//!   of these 64 columns; in each 16-column lane, column `4 t + r` of row `kk` goes to byte
//!   `4 r + kk` at bit `2 t` (a byte shuffle, then two multiply-adds fold the four `t`).

use super::packed::{GROUP, PACKED_GROUP_BYTES, PANEL};
use super::weight_pack::{
    SUM_BLOCK, TILE_COLS, TILE_ROWS, TransposedBlocks, abs_sum_from, abs_sum_in_order, accept_block,
};
use std::arch::x86_64::*;

/// `sum |w|` in f64, equal to the in-order sum (see `abs_sum_scalar`): each block is summed in
/// 4 x 8 f64 lanes and kept when provably exact, else summed in order.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn abs_sum_avx512(w: &[f32]) -> f64 {
    if w.is_empty() {
        return abs_sum_in_order(w);
    }
    let magnitude = _mm512_set1_epi32(0x7FFF_FFFF);
    let one = _mm512_set1_epi32(1);
    let mut s = 0.0f64;
    for block in w.chunks(SUM_BLOCK) {
        let mut acc = [_mm512_setzero_pd(); 4];
        let mut min_m1 = _mm512_set1_epi32(-1);
        let mut max_bits = _mm512_setzero_si512();
        let mut add = |x: __m512, lo: &mut __m512d, hi: &mut __m512d| {
            let bits = _mm512_and_si512(_mm512_castps_si512(x), magnitude);
            // bits - 1 wraps for zeros, so they never win the minimum.
            min_m1 = _mm512_min_epu32(min_m1, _mm512_sub_epi32(bits, one));
            max_bits = _mm512_max_epu32(max_bits, bits);
            let a = _mm512_castsi512_pd(bits);
            *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_castpd512_pd256(a))));
            *hi = _mm512_add_pd(
                *hi,
                _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(a))),
            );
        };
        let (mut i, n) = (0, block.len());
        while i + 32 <= n {
            // SAFETY: elements i .. i + 32 are inside `block`.
            let (x0, x1) = unsafe {
                let p = block.as_ptr().add(i);
                (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
            };
            let [a0, a1, a2, a3] = &mut acc;
            add(x0, a0, a1);
            add(x1, a2, a3);
            i += 32;
        }
        while i < n {
            let rest = n - i;
            let mask: __mmask16 = if rest >= 16 { 0xFFFF } else { (1u16 << rest) - 1 };
            // SAFETY: the mask selects only the in-bounds elements from index i; the others
            // load +0, which changes neither the sum nor the minimum or maximum.
            let x = unsafe { _mm512_maskz_loadu_ps(mask, block.as_ptr().add(i)) };
            let [a0, a1, ..] = &mut acc;
            add(x, a0, a1);
            i += 16;
        }
        let lanes = _mm512_add_pd(_mm512_add_pd(acc[0], acc[1]), _mm512_add_pd(acc[2], acc[3]));
        let total = s + _mm512_reduce_add_pd(lanes);
        let (lo, hi) = (_mm512_reduce_min_epu32(min_m1), _mm512_reduce_max_epu32(max_bits));
        s = accept_block(s, total, lo, hi).unwrap_or_else(|| abs_sum_from(s, block));
    }
    s
}

/// Packs forward panel `panel` of the row-major `n_out x n_in` latent weights `w`, quantized
/// with the threshold `u` (`plus_one_threshold`), into `dst`, and the transposed groups this
/// panel owns (`16 panel .. 16 panel + 16`) into `tr`.
///
/// # Safety
/// The CPU must support AVX-512 F, BW and VL. The caller gives this task sole access to those
/// groups of `tr` (see `TransposedBlocks`).
///
/// # Panics
/// If `w` is not `n_out * n_in` long or `dst` is not the panel's `ceil(n_in / 4) * 64` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_panel_avx512(
    w: &[f32],
    n_out: usize,
    n_in: usize,
    u: f32,
    panel: usize,
    dst: &mut [u8],
    tr: Option<&TransposedBlocks<'_>>,
) {
    let groups = n_in.div_ceil(GROUP);
    assert!(w.len() == n_out * n_in, "latent weights");
    assert!(dst.len() == groups * PACKED_GROUP_BYTES, "forward panel");
    let (up, down) = (_mm512_set1_ps(u), _mm512_set1_ps(-u));
    for v in 0..PANEL / TILE_ROWS {
        let n0 = panel * PANEL + TILE_ROWS * v;
        let rows = n_out.saturating_sub(n0).min(TILE_ROWS);
        for tile in 0..n_in.div_ceil(TILE_COLS) {
            let k0 = tile * TILE_COLS;
            let cols = (n_in - k0).min(TILE_COLS);
            // Rows past n_out (padding) get the zero code. The common full tile is unrolled so
            // its 16 code vectors stay in registers.
            let row = |i: usize| {
                // SAFETY: row n0 + i < n_out (i < rows) and columns k0 .. k0 + cols <= n_in are
                // inside `w`.
                unsafe { row_codes(w.as_ptr().add((n0 + i) * n_in + k0), cols, up, down) }
            };
            let codes: [__m512i; TILE_ROWS] = if rows == TILE_ROWS {
                std::array::from_fn(row)
            } else {
                std::array::from_fn(|i| if i < rows { row(i) } else { _mm512_set1_epi8(1) })
            };
            store_forward(&codes, dst, tile, v, groups);
            if let Some(tr) = tr {
                store_transposed(&codes, tr, tile, (panel * PANEL + TILE_ROWS * v) / GROUP);
            }
        }
    }
}

/// The 64 codes of one tile row: `2` where `w >= u`, `0` where `w <= -u`, else `1` (also for
/// the columns past `cols`).
///
/// # Safety
/// AVX-512 F/BW; `row .. row + cols` is readable and `1 <= cols <= 64`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn row_codes(row: *const f32, cols: usize, up: __m512, down: __m512) -> __m512i {
    let (mut pos, mut neg) = (0u64, 0u64);
    if cols == TILE_COLS {
        for j in 0..4 {
            // SAFETY: 16 j + 16 <= cols floats from `row` are readable.
            let x = unsafe { _mm512_loadu_ps(row.add(16 * j)) };
            pos |= u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, up)) << (16 * j);
            neg |= u64::from(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, down)) << (16 * j);
        }
    } else {
        for j in 0..cols.div_ceil(16) {
            let rest = cols - 16 * j;
            let m: __mmask16 = if rest >= 16 { 0xFFFF } else { (1u16 << rest) - 1 };
            // SAFETY: 16 j < cols, so the address is inside the row; the mask reads only the
            // columns below `cols`, the others load +0 (code 1).
            let x = unsafe { _mm512_maskz_loadu_ps(m, row.add(16 * j)) };
            pos |= u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, up)) << (16 * j);
            neg |= u64::from(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, down)) << (16 * j);
        }
    }
    let zero_or_one = _mm512_mask_blend_epi8(neg, _mm512_set1_epi8(1), _mm512_setzero_si512());
    _mm512_mask_blend_epi8(pos, zero_or_one, _mm512_set1_epi8(2))
}

/// Writes the forward bytes of a tile: rows `4 t + r` at bit `2 t` of bytes `16 v + 4 r + kk`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn store_forward(
    codes: &[__m512i; TILE_ROWS],
    dst: &mut [u8],
    tile: usize,
    v: usize,
    groups: usize,
) {
    // Byte c of acc[r]: the packed byte of column c for rows r, r + 4, r + 8, r + 12. The
    // 16-bit shifts cannot carry across bytes: a code shifted by at most 6 stays below 256.
    let acc: [__m512i; 4] = std::array::from_fn(|r| {
        _mm512_or_si512(
            _mm512_or_si512(codes[r], _mm512_slli_epi16::<2>(codes[4 + r])),
            _mm512_or_si512(
                _mm512_slli_epi16::<4>(codes[8 + r]),
                _mm512_slli_epi16::<6>(codes[12 + r]),
            ),
        )
    });
    // Dword transpose: lane L of out[j] is (acc[0..4] dword 4 L + j), the 16 bytes of group
    // 16 tile + 4 L + j.
    let (t0, t1) = (_mm512_unpacklo_epi32(acc[0], acc[1]), _mm512_unpackhi_epi32(acc[0], acc[1]));
    let (t2, t3) = (_mm512_unpacklo_epi32(acc[2], acc[3]), _mm512_unpackhi_epi32(acc[2], acc[3]));
    let out = [
        _mm512_unpacklo_epi64(t0, t2),
        _mm512_unpackhi_epi64(t0, t2),
        _mm512_unpacklo_epi64(t1, t3),
        _mm512_unpackhi_epi64(t1, t3),
    ];
    for (j, o) in out.into_iter().enumerate() {
        let lanes = [
            _mm512_castsi512_si128(o),
            _mm512_extracti32x4_epi32::<1>(o),
            _mm512_extracti32x4_epi32::<2>(o),
            _mm512_extracti32x4_epi32::<3>(o),
        ];
        for (l, lane) in lanes.into_iter().enumerate() {
            let g = tile * (TILE_COLS / GROUP) + 4 * l + j;
            if g < groups {
                // SAFETY: g < groups, so bytes 64 g + 16 v .. + 16 (v < 4) are inside `dst`
                // (`groups * 64` bytes, asserted by the caller).
                unsafe {
                    _mm_storeu_si128(
                        dst.as_mut_ptr().add(g * PACKED_GROUP_BYTES + 16 * v).cast(),
                        lane,
                    )
                };
            }
        }
    }
}

/// Writes the transposed blocks of a tile: the rows `4 q .. 4 q + 4` are group `first + q` of
/// transposed panel `tile`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn store_transposed(
    codes: &[__m512i; TILE_ROWS],
    tr: &TransposedBlocks<'_>,
    tile: usize,
    first: usize,
) {
    // Within each 16-column lane, byte 4 r + t takes column 4 t + r.
    let order =
        _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    // Codes (t = 0, 1) weighted (1, 4), then the pairs (1, 16): sum of code_t << 2 t per dword.
    let (pair, quad) = (_mm512_set1_epi16(0x0401), _mm512_set1_epi32(0x0010_0001));
    for q in 0..TILE_ROWS / GROUP {
        let group = first + q;
        if group >= tr.groups() {
            break; // rows past the last input of the transposed matrix
        }
        let folded: [__m512i; GROUP] = std::array::from_fn(|kk| {
            let t_major = _mm512_shuffle_epi8(codes[GROUP * q + kk], order);
            _mm512_madd_epi16(_mm512_maddubs_epi16(t_major, pair), quad)
        });
        // Row kk's byte goes to byte kk of each dword (v', r): offset 16 v' + 4 r + kk.
        let block = _mm512_or_si512(
            _mm512_or_si512(folded[0], _mm512_slli_epi32::<8>(folded[1])),
            _mm512_or_si512(_mm512_slli_epi32::<16>(folded[2]), _mm512_slli_epi32::<24>(folded[3])),
        );
        let at = tr.block(tile, group);
        // SAFETY: `at` is the 64-byte block (tile, group), in range (checked by `block`) and
        // written by this panel's task only.
        unsafe { _mm512_storeu_si512(at.cast(), block) };
    }
}
