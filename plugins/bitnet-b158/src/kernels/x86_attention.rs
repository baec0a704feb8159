//! AVX-512 register tiles, transposes and copies of causal attention; the scalar twins in
//! `attention_rows.rs` define their exact semantics.

use super::attention_rows::{MR, NR, TileOperands};
use super::exp::LANES;
use super::x86_lanes::mask_of;
use std::arch::x86_64::*;

/// The lanes of `p` that `mask` selects, zeros elsewhere. A plain load when all are selected:
/// loads of data just stored are forwarded from full stores, not masked ones.
///
/// # Safety
/// AVX-512 F; the selected lanes are in bounds.
#[inline(always)]
pub(crate) unsafe fn load_masked(mask: __mmask16, p: *const f32) -> __m512 {
    // SAFETY: forwarded from the caller.
    unsafe { if mask == 0xFFFF { _mm512_loadu_ps(p) } else { _mm512_maskz_loadu_ps(mask, p) } }
}

/// Stores the lanes of `v` that `mask` selects; a plain store when all are selected.
///
/// # Safety
/// AVX-512 F; the selected lanes are in bounds.
#[inline(always)]
pub(crate) unsafe fn store_masked(p: *mut f32, mask: __mmask16, v: __m512) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if mask == 0xFFFF { _mm512_storeu_ps(p, v) } else { _mm512_mask_storeu_ps(p, mask, v) }
    }
}

/// The operands of a tile as plain scalars: `a` with strides `(rs, cs)`, `b` with row stride
/// `ldb`, and the depth. (Passed field by field: copying `TileOperands` as one block right after
/// the caller wrote it field by field defeats store-to-load forwarding.)
#[derive(Clone, Copy)]
struct RawTile {
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    ldb: usize,
    depth: usize,
}

/// A register tile of `R` rows by `V` vectors (the lanes of `masks`):
/// `c[r * ldc + j] = sum_{p < depth} a[r * a_rs + p * a_cs] * b[p * ldb + j]`, one fused
/// multiply-add per `p`, in order, from zero. Kept out of line: inlined into its dispatcher, it
/// measured a third slower.
///
/// # Safety
/// AVX-512 F; every `a` element `r * a_rs + p * a_cs` (`r < R`, `p < depth`), every `b` lane
/// `p * ldb + 16 v + l` and every `c` lane `r * ldc + 16 v + l` selected by `masks[v]` is in
/// bounds of its buffer.
#[inline(never)]
#[target_feature(enable = "avx512f")]
unsafe fn tile_rv<const R: usize, const V: usize>(
    c: *mut f32,
    ldc: usize,
    t: RawTile,
    masks: [__mmask16; V],
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..t.depth {
        // SAFETY: the caller guarantees every selected lane and every `a` element is in bounds;
        // masked-off lanes are not read.
        unsafe {
            let bp = t.b.add(p * t.ldb);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_maskz_loadu_ps(masks[v], bp.add(v * LANES));
            }
            let ap = t.a.add(p * t.a_cs);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r * t.a_rs));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_fmadd_ps(av, bv, *acc);
                }
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: the caller guarantees the selected lanes of `c` are in bounds.
            unsafe { store_masked(c.add(r * ldc + v * LANES), masks[v], acc) };
        }
    }
}

/// [`tile_rv`] for `rows` (`1..=MR`) rows of `V` vectors.
///
/// # Safety
/// As [`tile_rv`] with `R = rows`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn tile_v<const V: usize>(
    c: *mut f32,
    ldc: usize,
    rows: usize,
    t: RawTile,
    masks: [__mmask16; V],
) {
    const { assert!(MR == 8) };
    // SAFETY: forwarded from the caller.
    unsafe {
        match rows {
            8 => tile_rv::<8, V>(c, ldc, t, masks),
            7 => tile_rv::<7, V>(c, ldc, t, masks),
            6 => tile_rv::<6, V>(c, ldc, t, masks),
            5 => tile_rv::<5, V>(c, ldc, t, masks),
            4 => tile_rv::<4, V>(c, ldc, t, masks),
            3 => tile_rv::<3, V>(c, ldc, t, masks),
            2 => tile_rv::<2, V>(c, ldc, t, masks),
            _ => tile_rv::<1, V>(c, ldc, t, masks),
        }
    }
}

/// `attention_rows::tile_row`: `rows x cols` outputs (`rows` in `1..=MR`) by tiles of `NR`
/// columns.
///
/// # Safety
/// AVX-512 F; `(rows - 1) * ldc + cols <= c.len()`, and with `depth > 0`,
/// `(rows - 1) * a_rs + (depth - 1) * a_cs < a.len()` and `(depth - 1) * ldb + cols <= b.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn tile_row_avx512(
    c: &mut [f32],
    ldc: usize,
    (rows, cols): (usize, usize),
    t: &TileOperands,
) {
    let c = c.as_mut_ptr();
    let (a, a_rs, a_cs, depth) = (t.a.as_ptr(), t.a_rs, t.a_cs, t.depth);
    let (b, ldb) = (t.b.as_ptr(), t.ldb);
    for j0 in (0..cols).step_by(NR) {
        let n = (cols - j0).min(NR);
        // `b` from column `j0` (`wrapping_add`: not dereferenced when `depth == 0`).
        let raw = RawTile { a, a_rs, a_cs, b: b.wrapping_add(j0), ldb, depth };
        // SAFETY: the lanes the masks select are the columns `j0..j0 + n` of the output rows
        // `0..rows` and of the `b` rows `0..depth`, in bounds by the caller's contract.
        unsafe {
            if n > LANES {
                tile_v::<2>(c.add(j0), ldc, rows, raw, [0xFFFF, mask_of(n - LANES)]);
            } else {
                tile_v::<1>(c.add(j0), ldc, rows, raw, [mask_of(n)]);
            }
        }
    }
}

/// The 16 x 16 block at `src` (row stride `ls`) transposed to `dst` (row stride `ld`).
///
/// # Safety
/// AVX-512 F; the 16 rows of 16 floats at `src + r * ls` and at `dst + r * ld` are in bounds.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(dst: *mut f32, ld: usize, src: *const f32, ls: usize) {
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, r) in r.iter_mut().enumerate() {
        // SAFETY: row `i` of the source block is in bounds (caller).
        *r = unsafe { _mm512_loadu_ps(src.add(i * ls)) };
    }
    // Pairs of rows interleaved, then 4 x 4 blocks within each 128-bit lane: `u[4 g + j]` holds
    // in its lane `l` the column `4 l + j` of the rows `4 g .. 4 g + 4`.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let (a, b, c, d) = (r[4 * g], r[4 * g + 1], r[4 * g + 2], r[4 * g + 3]);
        let (t0, t1) = (_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let (t2, t3) = (_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t0, t2);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t0, t2);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t1, t3);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t1, t3);
    }
    // Gather the lanes: column `4 l + j` is lane `l` of `u[j]`, `u[4 + j]`, `u[8 + j]`,
    // `u[12 + j]`.
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
        let cols = [
            (j, _mm512_shuffle_f32x4::<0x88>(v0, v2)),
            (4 + j, _mm512_shuffle_f32x4::<0x88>(v1, v3)),
            (8 + j, _mm512_shuffle_f32x4::<0xDD>(v0, v2)),
            (12 + j, _mm512_shuffle_f32x4::<0xDD>(v1, v3)),
        ];
        for (c, v) in cols {
            // SAFETY: row `c < 16` of the destination block is in bounds (caller).
            unsafe { _mm512_storeu_ps(dst.add(c * ld), v) };
        }
    }
}

/// `attention_rows::transpose_into`: `dst[c * rows + r] = src[r * cols + c]`, by 16 x 16
/// blocks and the scalar loop for the rest.
///
/// # Safety
/// AVX-512 F; `dst.len() == src.len() == rows * cols`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose_avx512(dst: &mut [f32], src: &[f32], (rows, cols): (usize, usize)) {
    assert!(dst.len() == rows * cols && src.len() == rows * cols, "transpose");
    let (rb, cb) = (rows / 16 * 16, cols / 16 * 16);
    for r0 in (0..rb).step_by(16) {
        for c0 in (0..cb).step_by(16) {
            // SAFETY: rows `r0..r0 + 16 <= rows` and columns `c0..c0 + 16 <= cols` of `src`, and
            // rows `c0..c0 + 16` and columns `r0..r0 + 16` of `dst` (`cols x rows`), are in
            // bounds.
            unsafe {
                let s = src.as_ptr().add(r0 * cols + c0);
                transpose16(dst.as_mut_ptr().add(c0 * rows + r0), rows, s, cols);
            }
        }
    }
    super::attention_rows::transpose_scalar(dst, src, (rows, cols), (rb, cb));
}

/// `dst.copy_from_slice(src)` with streaming (non-temporal) stores where `dst` is 64-byte
/// aligned. The caller issues `sfence` before others may read `dst`.
///
/// # Safety
/// AVX-512 F; `dst.len() == src.len()`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn stream_copy_avx512(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "stream copy");
    let n = dst.len();
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // Up to the first 64-byte boundary, and the rest after the last, by masked moves.
    let head = dst.as_ptr().align_offset(64).min(n).min(LANES);
    let mut i = 0;
    while i < n {
        let whole = i >= head && i + LANES <= n && d.wrapping_add(i).addr() % 64 == 0;
        // SAFETY: `whole`: `i + 16 <= n` elements of both slices, `d + i` 64-byte aligned; else
        // the mask selects only elements below `min(head, n)` (first step) or `n`.
        unsafe {
            if whole {
                _mm512_stream_ps(d.add(i), _mm512_loadu_ps(s.add(i)));
                i += LANES;
            } else {
                let len = if i < head { head } else { (n - i).min(LANES) };
                let m = mask_of(len);
                _mm512_mask_storeu_ps(d.add(i), m, _mm512_maskz_loadu_ps(m, s.add(i)));
                i += len;
            }
        }
    }
}

/// Asks for `x` in L2, one prefetch per 128 bytes (measured as good as one per 64-byte line,
/// with half the instructions). A hint: nothing is read, nothing faults.
pub(crate) fn prefetch_l2(x: &[f32]) {
    for line in x.chunks(2 * LANES) {
        // SAFETY: `prefetcht1` never faults and `line` points into `x`; SSE is part of x86-64.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast()) };
    }
}
