//! x86-64 panel unpacking and micro-kernels of the ternary products (see `ternary.rs`).

use super::packed::{GROUP, PACKED_GROUP_BYTES, TILE_BYTES};
use super::ternary::{Sink, Tile, tail_group};
use std::arch::x86_64::*;

/// Right shifts of the 16-bit lanes: 128-bit lane `t` shifts by `2 t` (see `packed.rs`).
static SHIFTS_512: [u16; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 6, 6,
];

/// Unpacks one panel of 2-bit codes into bytes, 16 packed bytes to 64 unpacked at a time.
///
/// # Safety
/// The CPU must support AVX-512 F and BW; `packed.len()` is a multiple of 64 and
/// `tiles.len() >= 4 * packed.len()`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn unpack_panel_avx512(packed: &[u8], tiles: &mut [u8]) {
    debug_assert!(packed.len().is_multiple_of(PACKED_GROUP_BYTES));
    assert!(tiles.len() >= packed.len() * 4, "unpack buffer too small");
    // SAFETY: SHIFTS_512 is 64 bytes; loadu has no alignment requirement.
    let shifts = unsafe { _mm512_loadu_si512(SHIFTS_512.as_ptr().cast()) };
    let three = _mm512_set1_epi8(3);
    for i in 0..packed.len() / 16 {
        // SAFETY: bytes 16 i .. 16 i + 16 of `packed` and 64 i .. 64 i + 64 of `tiles` are in
        // bounds (i < len / 16 and the assertion above).
        unsafe {
            let p = _mm_loadu_si128(packed.as_ptr().add(16 * i).cast());
            let u = _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i32x4(p), shifts), three);
            _mm512_storeu_si512(tiles.as_mut_ptr().add(64 * i).cast(), u);
        }
    }
}

/// AVX2 twin of [`unpack_panel_avx512`].
///
/// # Safety
/// The CPU must support AVX2; same length requirements as [`unpack_panel_avx512`].
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn unpack_panel_avx2(packed: &[u8], tiles: &mut [u8]) {
    debug_assert!(packed.len().is_multiple_of(PACKED_GROUP_BYTES));
    assert!(tiles.len() >= packed.len() * 4, "unpack buffer too small");
    let lo_shift = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
    let hi_shift = _mm256_setr_epi32(4, 4, 4, 4, 6, 6, 6, 6);
    let three = _mm256_set1_epi8(3);
    for i in 0..packed.len() / 16 {
        // SAFETY: as in `unpack_panel_avx512`: both ranges are in bounds.
        unsafe {
            let p =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(packed.as_ptr().add(16 * i).cast()));
            let lo = _mm256_and_si256(_mm256_srlv_epi32(p, lo_shift), three);
            let hi = _mm256_and_si256(_mm256_srlv_epi32(p, hi_shift), three);
            let dst = tiles.as_mut_ptr().add(64 * i);
            _mm256_storeu_si256(dst.cast(), lo);
            _mm256_storeu_si256(dst.add(32).cast(), hi);
        }
    }
}

/// The AVX-512 VNNI micro-kernel: up to 6 rows x one 64-column panel. With `PACKED`, `t.tiles`
/// is the panel still packed (`ceil(k / 4) * 64` bytes) and each group's codes are unpacked in
/// registers as they are used, so a task of one tile of rows (a decode step's single row) never
/// writes and rereads the unpacked panel.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and VNNI; `t` must be in bounds: `1 <= rows <= 6`,
/// rows `row0 .. row0 + rows` of `x` (`k` columns) exist, `tiles` holds `ceil(k / 4) * 256`
/// bytes (`ceil(k / 4) * 64` with `PACKED`), `cols <= 64`, and the output rectangle lies inside
/// the live `m x n` output.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn kernel_vnni<const PACKED: bool>(t: &Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            6 => vnni_rows::<6, PACKED>(t),
            5 => vnni_rows::<5, PACKED>(t),
            4 => vnni_rows::<4, PACKED>(t),
            3 => vnni_rows::<3, PACKED>(t),
            2 => vnni_rows::<2, PACKED>(t),
            1 => vnni_rows::<1, PACKED>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn vnni_rows<const R: usize, const PACKED: bool>(t: &Tile<'_>) {
    let k = t.k;
    let full = k / GROUP;
    let rows = &t.x[t.row0 * k..(t.row0 + R) * k];
    let group_bytes = if PACKED { PACKED_GROUP_BYTES } else { TILE_BYTES };
    assert!(t.tiles.len() >= k.div_ceil(GROUP) * group_bytes, "panel buffer too small");
    let tp = t.tiles.as_ptr();
    let xp = rows.as_ptr();
    // SAFETY: SHIFTS_512 is 64 bytes; loadu has no alignment requirement.
    let shifts = unsafe { _mm512_loadu_si512(SHIFTS_512.as_ptr().cast()) };
    let three = _mm512_set1_epi8(3);
    // The four code vectors of group `g`: loaded unpacked, or unpacked from its 64 packed bytes
    // exactly as `unpack_panel_avx512` does (vector `v` from packed bytes `16 v .. 16 v + 16`).
    // SAFETY (callers): group g < ceil(k / 4) of the buffer, which the assertion above covers.
    let group = |g: usize| -> [__m512i; 4] {
        // SAFETY: see above; unaligned loads are allowed.
        unsafe {
            let b = tp.add(g * group_bytes);
            if PACKED {
                std::array::from_fn(|v| {
                    let p = _mm_loadu_si128(b.add(16 * v).cast());
                    _mm512_and_si512(_mm512_srlv_epi16(_mm512_broadcast_i32x4(p), shifts), three)
                })
            } else {
                std::array::from_fn(|v| _mm512_loadu_si512(b.add(64 * v).cast()))
            }
        }
    };
    let mut acc = [[_mm512_setzero_si512(); 4]; R];
    for g in 0..full {
        let b = group(g);
        // SAFETY: row r < R of `rows` has k >= 4 g + 4 bytes, so the 4-byte read at r k + 4 g
        // is in bounds; unaligned reads are allowed.
        unsafe {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_epi32(xp.add(r * k + GROUP * g).cast::<i32>().read_unaligned());
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    *acc_rv = _mm512_dpbusd_epi32(*acc_rv, bv, a);
                }
            }
        }
    }
    if full * GROUP < k {
        let b = group(full);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_epi32(tail_group(&rows[r * k..(r + 1) * k], full));
            for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                *acc_rv = _mm512_dpbusd_epi32(*acc_rv, bv, a);
            }
        }
    }
    // Column masks of the four vectors (0 past the panel's valid columns). The sink is matched
    // once, outside the loops, so each arm's loops unroll completely and `acc` stays in
    // registers (a match inside the loops made LLVM keep `acc` in memory, 2.5x slower).
    let masks: [__mmask16; 4] = std::array::from_fn(|v| {
        let valid = t.cols.saturating_sub(16 * v).min(16);
        ((1u32 << valid) - 1) as __mmask16
    });
    let rowsums: [__m512i; R] = std::array::from_fn(|r| _mm512_set1_epi32(t.rowsums[r]));
    match t.sink {
        Sink::I32(p) => {
            for r in 0..R {
                let at_row = (t.row0 + r) * t.n + t.col0;
                for v in 0..4 {
                    if masks[v] != 0 {
                        let val = _mm512_sub_epi32(acc[r][v], rowsums[r]);
                        // SAFETY: the masked lanes are columns col0 + 16 v .. < col0 + cols <= n
                        // of row row0 + r < m of the output (the contract); this task is their
                        // only writer.
                        unsafe {
                            _mm512_mask_storeu_epi32(p.0.add(at_row + 16 * v), masks[v], val)
                        };
                    }
                }
            }
        }
        Sink::F32(p, g) | Sink::F32Add(p, g) => {
            let add = matches!(t.sink, Sink::F32Add(..));
            for r in 0..R {
                let at_row = (t.row0 + r) * t.n + t.col0;
                let f = _mm512_set1_ps(g / t.row_scales[r]);
                for v in 0..4 {
                    if masks[v] != 0 {
                        let val = _mm512_sub_epi32(acc[r][v], rowsums[r]);
                        let y = _mm512_mul_ps(_mm512_cvtepi32_ps(val), f);
                        // SAFETY: as for the i32 sink: masked lanes are in-bounds elements this
                        // task alone writes.
                        unsafe {
                            let dst = p.0.add(at_row + 16 * v);
                            let y = if add {
                                _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], dst), y)
                            } else {
                                y
                            };
                            _mm512_mask_storeu_ps(dst, masks[v], y);
                        }
                    }
                }
            }
        }
    }
}

/// The AVX2 micro-kernel: up to 2 rows x one 64-column panel, in two 32-column halves.
///
/// # Safety
/// The CPU must support AVX2; `t` in bounds as for [`kernel_vnni`] with `1 <= rows <= 2`.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn kernel_avx2(t: &Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            2 => avx2_rows::<2>(t),
            1 => avx2_rows::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

/// Groups whose `maddubs` pair sums the AVX2 kernel adds in 16 bits before widening:
/// `32 * 512 = 16384 <= i16::MAX`.
const I16_GROUPS: usize = 32;

#[inline]
#[target_feature(enable = "avx2")]
unsafe fn avx2_rows<const R: usize>(t: &Tile<'_>) {
    let k = t.k;
    let full = k / GROUP;
    let groups = k.div_ceil(GROUP);
    let rows = &t.x[t.row0 * k..(t.row0 + R) * k];
    assert!(t.tiles.len() >= groups * TILE_BYTES, "panel buffer too small");
    let tp = t.tiles.as_ptr();
    let xp = rows.as_ptr();
    let ones = _mm256_set1_epi16(1);
    for half in 0..2 {
        let c0 = 32 * half;
        if c0 >= t.cols {
            break;
        }
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        // Codes are 0..=2, so each pairwise i16 sum of `maddubs` is at most 512 in magnitude
        // and 32 groups of them (16384) still fit an i16: sum 32 groups in 16 bits, then widen
        // once (exact integers either way).
        for g0 in (0..groups).step_by(I16_GROUPS) {
            let mut acc16 = [[_mm256_setzero_si256(); 4]; R];
            let end = (g0 + I16_GROUPS).min(groups);
            // The block's full groups, then the partial one if it falls here (as in
            // `avx_vnni_rows`, no branch between them inside the loop).
            for g in g0..end.min(full) {
                // SAFETY: group g < groups of the buffer spans 256 bytes, this half is 128 of
                // them; g < full, so the 4-byte read at r k + 4 g lies in row r < R.
                unsafe {
                    let b = load_half_group(tp, g, half);
                    for (r, acc_r) in acc16.iter_mut().enumerate() {
                        let a = _mm256_set1_epi32(
                            xp.add(r * k + GROUP * g).cast::<i32>().read_unaligned(),
                        );
                        for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                            *acc_rv = _mm256_add_epi16(*acc_rv, _mm256_maddubs_epi16(bv, a));
                        }
                    }
                }
            }
            if end > full {
                // SAFETY: group `full` < groups of the buffer spans 256 bytes.
                let b = unsafe { load_half_group(tp, full, half) };
                for (r, acc_r) in acc16.iter_mut().enumerate() {
                    let a = _mm256_set1_epi32(tail_group(&rows[r * k..(r + 1) * k], full));
                    for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                        *acc_rv = _mm256_add_epi16(*acc_rv, _mm256_maddubs_epi16(bv, a));
                    }
                }
            }
            for (acc_r, acc16_r) in acc.iter_mut().zip(&acc16) {
                for (acc_rv, &pairs) in acc_r.iter_mut().zip(acc16_r) {
                    *acc_rv = _mm256_add_epi32(*acc_rv, _mm256_madd_epi16(pairs, ones));
                }
            }
        }
        // SAFETY: the contract of this function covers the half's output rectangle.
        unsafe { store_half(t, c0, &acc) };
    }
}

/// The four 32-byte vectors of half `half` (0 or 1) of group `g` of a panel buffer.
///
/// # Safety
/// The buffer at `tp` holds group `g` (256 bytes from `g * TILE_BYTES`).
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load_half_group(tp: *const u8, g: usize, half: usize) -> [__m256i; 4] {
    // SAFETY: the 128 bytes of the half lie inside the group (the contract).
    unsafe {
        let b = tp.add(g * TILE_BYTES + 128 * half);
        [
            _mm256_loadu_si256(b.cast()),
            _mm256_loadu_si256(b.add(32).cast()),
            _mm256_loadu_si256(b.add(64).cast()),
            _mm256_loadu_si256(b.add(96).cast()),
        ]
    }
}

/// Writes the `R x 32` column sums `acc` of the half starting at column `c0` of the tile to its
/// sink, less the row-sum correction (the AVX2 kernels' epilogue).
///
/// # Safety
/// `t` is in bounds as for [`kernel_avx2`] and `c0 < t.cols`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_half<const R: usize>(t: &Tile<'_>, c0: usize, acc: &[[__m256i; 4]; R]) {
    // Valid columns of each vector; a ragged one is written through a lane mask (whole vectors,
    // the common case, with plain stores: masked stores are slow on some AMD cores). The sink is
    // matched once, outside the loops, as in `vnni_rows`.
    let valid: [usize; 4] = std::array::from_fn(|v| t.cols.saturating_sub(c0 + 8 * v).min(8));
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; 4] =
        std::array::from_fn(|v| _mm256_cmpgt_epi32(_mm256_set1_epi32(valid[v] as i32), lane));
    let rowsums: [__m256i; R] = std::array::from_fn(|r| _mm256_set1_epi32(t.rowsums[r]));
    match t.sink {
        Sink::I32(p) => {
            for r in 0..R {
                let at_row = (t.row0 + r) * t.n + t.col0 + c0;
                for v in 0..4 {
                    let val = _mm256_sub_epi32(acc[r][v], rowsums[r]);
                    // SAFETY: the lanes written are columns col0 + c0 + 8 v .. < col0 + cols <= n
                    // of row row0 + r < m of the output (the contract); this task is their only
                    // writer.
                    unsafe {
                        let dst = p.0.add(at_row + 8 * v);
                        match valid[v] {
                            0 => {}
                            8 => _mm256_storeu_si256(dst.cast(), val),
                            _ => _mm256_maskstore_epi32(dst, masks[v], val),
                        }
                    }
                }
            }
        }
        Sink::F32(p, g) | Sink::F32Add(p, g) => {
            let add = matches!(t.sink, Sink::F32Add(..));
            for r in 0..R {
                let at_row = (t.row0 + r) * t.n + t.col0 + c0;
                let f = _mm256_set1_ps(g / t.row_scales[r]);
                for v in 0..4 {
                    let val = _mm256_sub_epi32(acc[r][v], rowsums[r]);
                    let y = _mm256_mul_ps(_mm256_cvtepi32_ps(val), f);
                    // SAFETY: as for the i32 sink: the lanes written (and read, to add) are
                    // in-bounds elements this task alone writes.
                    unsafe {
                        let dst = p.0.add(at_row + 8 * v);
                        match (valid[v], add) {
                            (0, _) => {}
                            (8, false) => _mm256_storeu_ps(dst, y),
                            (8, true) => {
                                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), y))
                            }
                            (_, false) => _mm256_maskstore_ps(dst, masks[v], y),
                            (_, true) => {
                                let old = _mm256_maskload_ps(dst, masks[v]);
                                _mm256_maskstore_ps(dst, masks[v], _mm256_add_ps(old, y));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The AVX-VNNI micro-kernel (`vpdpbusd` on 256-bit registers, the VEX form of Alder Lake and
/// later client CPUs and of Sapphire Rapids): up to 2 rows x one 64-column panel, in two
/// 32-column halves, like [`kernel_avx2`] but with the four-byte dot products added straight
/// into int32 (one instruction instead of `vpmaddubsw`, a 16-bit add and the periodic widening).
///
/// # Safety
/// The CPU must support AVX2 and AVX-VNNI; `t` in bounds as for [`kernel_vnni`] with
/// `1 <= rows <= 2`.
#[target_feature(enable = "avx2,avxvnni")]
pub(crate) unsafe fn kernel_avx_vnni(t: &Tile<'_>) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        match t.rows {
            2 => avx_vnni_rows::<2>(t),
            1 => avx_vnni_rows::<1>(t),
            r => unreachable!("the driver never asks for {r} rows"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn avx_vnni_rows<const R: usize>(t: &Tile<'_>) {
    let k = t.k;
    let full = k / GROUP;
    let groups = k.div_ceil(GROUP);
    let rows = &t.x[t.row0 * k..(t.row0 + R) * k];
    assert!(t.tiles.len() >= groups * TILE_BYTES, "panel buffer too small");
    let tp = t.tiles.as_ptr();
    let xp = rows.as_ptr();
    for half in 0..2 {
        let c0 = 32 * half;
        if c0 >= t.cols {
            break;
        }
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        // The full groups, then the partial one: a branch between the two inside the loop made
        // LLVM store the accumulators to the stack on every group.
        for g in 0..full {
            // SAFETY: group g < groups of the buffer spans 256 bytes, this half is 128 of them;
            // row r < R has k >= 4 g + 4 bytes, so the 4-byte read at r k + 4 g is in bounds
            // (unaligned reads are allowed).
            unsafe {
                let b = load_half_group(tp, g, half);
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a =
                        _mm256_set1_epi32(xp.add(r * k + GROUP * g).cast::<i32>().read_unaligned());
                    for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                        *acc_rv = _mm256_dpbusd_avx_epi32(*acc_rv, bv, a);
                    }
                }
            }
        }
        if groups > full {
            // SAFETY: group `full` < groups of the buffer spans 256 bytes.
            let b = unsafe { load_half_group(tp, full, half) };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = _mm256_set1_epi32(tail_group(&rows[r * k..(r + 1) * k], full));
                for (acc_rv, &bv) in acc_r.iter_mut().zip(&b) {
                    *acc_rv = _mm256_dpbusd_avx_epi32(*acc_rv, bv, a);
                }
            }
        }
        // SAFETY: the contract of this function covers the half's output rectangle.
        unsafe { store_half(t, c0, &acc) };
    }
}

/// Packs 64 codes (bytes < 4) into 16 bytes: byte `i` gets the code of byte `i + 16 t` at bit
/// `2 t` (the layout of `packed.rs`). 16-bit shifts are safe: a code shifted by at most 6 stays
/// inside its byte.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn squeeze(q0: __m128i, q1: __m128i, q2: __m128i, q3: __m128i) -> __m128i {
    _mm_or_si128(
        _mm_or_si128(q0, _mm_slli_epi16::<2>(q1)),
        _mm_or_si128(_mm_slli_epi16::<4>(q2), _mm_slli_epi16::<6>(q3)),
    )
}

/// Packs the full 4-input groups of panel `panel` of the row-major `n_out x n_in` ternary `w`
/// into `dst` with gathers. Returns the number of groups packed (`n_in / 4`), or `None` if a
/// value is outside `{-1, 0, 1}` (the caller then packs the panel with the scalar code, which
/// reports it).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL; `w.len() == n_out * n_in < i32::MAX`, `panel <
/// ceil(n_out / 64)` and `dst` holds `ceil(n_in / 4) * 64` bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_panel_avx512(
    w: &[i8],
    n_out: usize,
    n_in: usize,
    panel: usize,
    dst: &mut [u8],
) -> Option<usize> {
    let full = n_in / GROUP;
    assert!(w.len() == n_out * n_in && w.len() < i32::MAX as usize, "pack operands");
    assert!(dst.len() >= full * PACKED_GROUP_BYTES, "pack destination");
    let (one, two) = (_mm512_set1_epi8(1), _mm512_set1_epi8(2));
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let mut offsets = [_mm512_setzero_si512(); 4];
    let mut masks = [0u16; 4];
    for v in 0..4 {
        let row0 = panel * 64 + 16 * v;
        let valid = n_out.saturating_sub(row0).min(16);
        masks[v] = if valid == 16 { 0xFFFF } else { (1u16 << valid) - 1 };
        // Lanes past n_out may wrap; they are masked off and never read.
        let rows = _mm512_add_epi32(_mm512_set1_epi32(row0 as i32), lanes);
        offsets[v] = _mm512_mullo_epi32(rows, _mm512_set1_epi32(n_in as i32));
    }
    let mut bad: u64 = 0;
    for g in 0..full {
        let at_g = _mm512_set1_epi32((GROUP * g) as i32);
        for v in 0..4 {
            // SAFETY: each unmasked lane reads the 4 bytes w[row][4 g .. 4 g + 4] with row <
            // n_out and 4 g + 4 <= n_in, inside `w`; offsets fit i32 (asserted).
            let raw = unsafe {
                _mm512_mask_i32gather_epi32::<1>(
                    _mm512_setzero_si512(),
                    masks[v],
                    _mm512_add_epi32(offsets[v], at_g),
                    w.as_ptr().cast(),
                )
            };
            let codes = _mm512_add_epi8(raw, one);
            bad |= _mm512_cmpgt_epu8_mask(codes, two);
            let packed = squeeze(
                _mm512_castsi512_si128(codes),
                _mm512_extracti32x4_epi32::<1>(codes),
                _mm512_extracti32x4_epi32::<2>(codes),
                _mm512_extracti32x4_epi32::<3>(codes),
            );
            // SAFETY: bytes 64 g + 16 v .. + 16 < full * 64 <= dst.len() (asserted).
            unsafe {
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(g * PACKED_GROUP_BYTES + 16 * v).cast(),
                    packed,
                )
            };
        }
    }
    if bad == 0 { Some(full) } else { None }
}

/// [`pack_panel_avx512`] for the transposed packing: `w` is row-major `n_in x n_out` (the matrix
/// being packed has element `(n, k) = w[k][n]`). Only panels whose 64 columns all exist take the
/// fast path (others return `Some(0)`: nothing packed).
///
/// # Safety
/// As for [`pack_panel_avx512`], with `w.len() == n_in * n_out`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn pack_panel_transposed_avx512(
    w: &[i8],
    n_out: usize,
    n_in: usize,
    panel: usize,
    dst: &mut [u8],
) -> Option<usize> {
    let full = n_in / GROUP;
    let col0 = panel * 64;
    assert!(w.len() == n_out * n_in, "pack operands");
    assert!(dst.len() >= full * PACKED_GROUP_BYTES, "pack destination");
    if col0 + 64 > n_out {
        return Some(0);
    }
    let (one, two) = (_mm_set1_epi8(1), _mm_set1_epi8(2));
    let mut bad: u16 = 0;
    for g in 0..full {
        for v in 0..4 {
            let c0 = col0 + 16 * v;
            // SAFETY: rows 4 g .. 4 g + 4 < n_in and columns c0 .. c0 + 16 <= n_out of the
            // row-major n_in x n_out `w` are in bounds.
            let [r0, r1, r2, r3] = std::array::from_fn(|kk| unsafe {
                _mm_loadu_si128(w.as_ptr().add((GROUP * g + kk) * n_out + c0).cast())
            });
            // Byte transpose: dword c of the result holds (r0[c], r1[c], r2[c], r3[c]).
            let (a, b) = (_mm_unpacklo_epi8(r0, r1), _mm_unpackhi_epi8(r0, r1));
            let (c, d) = (_mm_unpacklo_epi8(r2, r3), _mm_unpackhi_epi8(r2, r3));
            let q = [
                _mm_unpacklo_epi16(a, c),
                _mm_unpackhi_epi16(a, c),
                _mm_unpacklo_epi16(b, d),
                _mm_unpackhi_epi16(b, d),
            ]
            .map(|q| _mm_add_epi8(q, one));
            for &qi in &q {
                bad |= _mm_cmpgt_epu8_mask(qi, two);
            }
            let packed = squeeze(q[0], q[1], q[2], q[3]);
            // SAFETY: bytes 64 g + 16 v .. + 16 < full * 64 <= dst.len() (asserted).
            unsafe {
                _mm_storeu_si128(
                    dst.as_mut_ptr().add(g * PACKED_GROUP_BYTES + 16 * v).cast(),
                    packed,
                )
            };
        }
    }
    if bad == 0 { Some(full) } else { None }
}

/// The sum of a row of int8 codes, 64 bytes per step: `vpsadbw` sums the codes + 128 (a
/// sign-bit flip) in eight 64-bit lanes, and the offset is subtracted once at the end (lanes
/// past the row load as 0, i.e. 128 after the flip, and are counted in that offset).
///
/// # Safety
/// The CPU must support AVX-512 F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn row_sum_avx512(row: &[i8]) -> i32 {
    let flip = _mm512_set1_epi8(i8::MIN);
    let mut acc = _mm512_setzero_si512();
    let chunks = row.len().div_ceil(64);
    for c in 0..chunks {
        let rest = row.len() - 64 * c;
        let mask: __mmask64 = if rest >= 64 { !0 } else { (1u64 << rest) - 1 };
        // SAFETY: the first byte 64 c is in bounds (c < chunks) and the mask covers only the
        // row's bytes; masked lanes are not read.
        let v = unsafe { _mm512_maskz_loadu_epi8(mask, row.as_ptr().add(64 * c)) };
        let sad = _mm512_sad_epu8(_mm512_xor_si512(v, flip), _mm512_setzero_si512());
        acc = _mm512_add_epi64(acc, sad);
    }
    // |sum| <= 128 * len fits an i32 for any row the kernels accept (k is an i32-sized depth).
    (_mm512_reduce_add_epi64(acc) - 128 * 64 * chunks as i64) as i32
}
