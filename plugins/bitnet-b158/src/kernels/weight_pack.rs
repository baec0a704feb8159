//! The step's weight refresh in one pass: absmean ternary quantisation of a BitLinear weight
//! fused with both packings the kernels read ([`PackedTernary`] for `y = x . W_q^T` and its
//! transpose for `dX = dY . W_q`), each weight read once and no `i8` codes in between.
//!
//! Bit-identical to the unfused path (`trit(w / (g + 1e-5))`, then `repack` and
//! `repack_transposed`), including the scale:
//!
//! - **Scale.** `g` is the chunked f64 mean the model always used: `|w|` summed in order within
//!   chunks of [`ABSMEAN_CHUNK`] (in parallel), the chunk sums added in order. The fast paths
//!   keep that result without the serial chain of additions: a block of `SUM_BLOCK` (512)
//!   values is summed in any order and the result kept only when it is provably exact (then the
//!   in-order sum is exact too, so they agree); otherwise the block is summed in order. See
//!   `accept_block`.
//! - **Codes.** `trit(w / div)` is `+1` exactly when the rounded quotient exceeds `0.5`, that is
//!   when the real quotient exceeds the midpoint `m = 0.5 + 2^-25` (a tie rounds to `0.5`, the
//!   even neighbour), that is when `w > m * div`. `m * div` is exact in f64 (24 + 25 significant
//!   bits), so `w > m * div` is `w >= u` for `u` the least f32 above it, and by symmetry `-1` is
//!   `w <= -u`. Two comparisons per weight replace the division, with the same answer for every
//!   input, NaN and infinities included (see `plus_one_threshold`).
//!
//! Paths: [`Isa::Scalar`], [`Isa::Avx2`] (the twin compiled for AVX2) and [`Isa::Avx512`] (F/BW/VL), bit-identical. Work is split over the
//! 64-output panels of the forward packing on the current rayon pool.

use super::packed::{GROUP, PACKED_GROUP_BYTES, PANEL, ZERO_CODE};
use super::{GemmError, Isa, PackedTernary, check_isa, check_len, checked_area};
use crate::quant::WEIGHT_EPS;
use rayon::prelude::*;
use std::marker::PhantomData;

/// Paths the fused quantize-and-pack and the absmean implement.
pub const WEIGHT_PACK_PATHS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

/// Values per absmean chunk: each chunk is summed in order in f64, the chunk sums in order after
/// (so the scale does not depend on the thread count).
pub const ABSMEAN_CHUNK: usize = 1 << 14;

/// Values per block of the fast absmean: summed in any order, kept only if provably exact.
pub(crate) const SUM_BLOCK: usize = 512;

/// The absmean `g = mean|W|` summed over [`ABSMEAN_CHUNK`]s, on the best path of this CPU.
pub fn absmean_chunked(w: &[f32]) -> f32 {
    absmean_chunked_on(Isa::best_among(&WEIGHT_PACK_PATHS), w)
}

/// [`absmean_chunked`] on the given path.
pub fn absmean_chunked_with(isa: Isa, w: &[f32]) -> Result<f32, GemmError> {
    check_isa("absmean_chunked", isa, &WEIGHT_PACK_PATHS)?;
    Ok(absmean_chunked_on(isa, w))
}

/// [`absmean_chunked_with`] for a path already checked.
fn absmean_chunked_on(isa: Isa, w: &[f32]) -> f32 {
    if w.is_empty() {
        return 0.0;
    }
    let partial: Vec<f64> = w.par_chunks(ABSMEAN_CHUNK).map(|c| abs_sum_on(isa, c)).collect();
    (partial.iter().sum::<f64>() / w.len() as f64) as f32
}

/// `sum |w|` in f64 in order (the definition) on a checked path.
fn abs_sum_on(isa: Isa, w: &[f32]) -> f64 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers checked that this CPU has AVX-512 F/BW/VL.
        Isa::Avx512 => unsafe { super::x86_weight_pack::abs_sum_avx512(w) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: callers checked that this CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { abs_sum_avx2(w) },
        _ => abs_sum_scalar(w),
    }
}

/// The AVX2 path of the absolute sum: the scalar twin compiled for AVX2 and FMA (the same
/// operations in the same order, so bit-identical).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn abs_sum_avx2(w: &[f32]) -> f64 {
    abs_sum_scalar(w)
}

/// The AVX2 path of the panel kernel: the scalar twin compiled for AVX2 and FMA (the same
/// operations, so the same bytes).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_panel_avx2(
    w: &[f32],
    n_out: usize,
    n_in: usize,
    u: f32,
    panel: usize,
    dst: &mut [u8],
    tr: Option<&TransposedBlocks<'_>>,
) {
    pack_panel_scalar(w, n_out, n_in, u, panel, dst, tr)
}

/// The in-order f64 sum of `|w|` the model has always used per chunk (the reference).
pub(crate) fn abs_sum_in_order(w: &[f32]) -> f64 {
    w.iter().map(|v| f64::from(v.abs())).sum::<f64>()
}

/// Continues the in-order sum from `s` over `w` (the slow path of a block).
pub(crate) fn abs_sum_from(s: f64, w: &[f32]) -> f64 {
    w.iter().fold(s, |a, v| a + f64::from(v.abs()))
}

/// Scalar twin of the fast absmean block sum: the same blocks and the same exactness test.
#[inline]
pub(crate) fn abs_sum_scalar(w: &[f32]) -> f64 {
    if w.is_empty() {
        return abs_sum_in_order(w);
    }
    // Starting from +0 instead of the fold's -0 changes nothing: the first addition gives the
    // first value either way (|w| is never -0).
    let mut s = 0.0f64;
    for block in w.chunks(SUM_BLOCK) {
        let mut lanes = [0.0f64; 8];
        let (mut min_m1, mut max_bits) = (u32::MAX, 0u32);
        for (i, v) in block.iter().enumerate() {
            let bits = v.to_bits() & 0x7FFF_FFFF;
            min_m1 = min_m1.min(bits.wrapping_sub(1));
            max_bits = max_bits.max(bits);
            lanes[i % 8] += f64::from(f32::from_bits(bits));
        }
        let total = s + lanes.iter().sum::<f64>();
        s = accept_block(s, total, min_m1, max_bits).unwrap_or_else(|| abs_sum_from(s, block));
    }
    s
}

/// The in-order sum `s + |w_0| + |w_1| + ...` of a block, if `total` (the same sum added in
/// any order) is provably equal to it; `None` means "sum the block in order".
///
/// `min_m1` is the minimum over the block of `bits(|w|) - 1` (wrapping, so zeros do not count),
/// `max_bits` the maximum of `bits(|w|)`. Every operand (`s` and each `|w|`, none negative) is
/// a multiple of `2^l`, `l` the least exponent of their lowest set bits. If an addition, in
/// whatever order, is inexact, the first inexact one has exact operands and an exact result,
/// a multiple of `2^l`, that is not representable, so at least `2^(53 + l)`; rounding is
/// monotone and later operands are non-negative, so the final result is then at least
/// `2^(53 + l)`. Hence `total < 2^(53 + l)` means every addition of that order was exact, so
/// `total` is the exact sum, below `2^(53 + l)`, and so is every partial sum of the in-order
/// chain: that chain is exact too and gives the same value.
pub(crate) fn accept_block(s: f64, total: f64, min_m1: u32, max_bits: u32) -> Option<f64> {
    if max_bits >= 0x7F80_0000 {
        return None; // an infinity or a NaN: keep the in-order semantics
    }
    if min_m1 == u32::MAX {
        return Some(s); // only zeros: s + 0 + ... + 0 is s (s is never -0)
    }
    // Lowest set bit of the smallest non-zero |w|: 2^(max(E, 1) - 150) for biased exponent E;
    // every larger f32 is a multiple of it.
    let block_lsb = ((min_m1 + 1) >> 23).max(1) as i32 - 150;
    let lsb = if s == 0.0 {
        block_lsb
    } else {
        let bits = s.to_bits();
        let e = ((bits >> 52) & 0x7FF) as i32;
        let mant = (bits & ((1 << 52) - 1)) | if e == 0 { 0 } else { 1 << 52 };
        block_lsb.min(e.max(1) - 1075 + mant.trailing_zeros() as i32)
    };
    // lsb is at most 254 - 150 = 104 and, s being a sum of f32 magnitudes, at least -149 - 52:
    // 2^(53 + lsb) is a normal f64.
    let limit = f64::from_bits(((1023 + 53 + lsb) as u64) << 52);
    (total < limit).then_some(total)
}

/// The real number just above which a rounded f32 exceeds 0.5: `0.5 + 2^-25`.
const MIDPOINT: f64 = 0.5 + 1.0 / 33_554_432.0;

/// The least `u` such that `trit(w / (g + 1e-5))` is `+1` exactly for `w >= u` and `-1`
/// exactly for `w <= -u`; NaN when the divisor is not finite (then every quotient is `±0` or
/// NaN and every trit 0, as NaN comparisons are false).
pub(crate) fn plus_one_threshold(g: f32) -> f32 {
    let div = g + WEIGHT_EPS;
    if !div.is_finite() || div <= 0.0 {
        // g is a mean of magnitudes, never negative; a NaN or infinite g lands here.
        return f32::NAN;
    }
    // m * div, exact: 24 + 25 significant bits fit f64's 53.
    let t = f64::from(div) * MIDPOINT;
    let near = t as f32;
    if f64::from(near) > t { near } else { near.next_up() }
}

/// The 2-bit code of `trit(w / div)` given `u = plus_one_threshold(g)`.
#[inline(always)]
pub(crate) fn code_of(w: f32, u: f32) -> u8 {
    1 + u8::from(w >= u) - u8::from(w <= -u)
}

/// The transposed packing's bytes, shared by the panel tasks of one tensor. The task of forward
/// panel `p` (outputs `64 p .. 64 p + 64`) writes only groups `16 p .. 16 p + 16` of each
/// transposed panel (those outputs are the transposed matrix's inputs, four per group), so no
/// two tasks write the same byte.
pub(crate) struct TransposedBlocks<'a> {
    ptr: *mut u8,
    groups: usize,
    panels: usize,
    _bytes: PhantomData<&'a mut [u8]>,
}

// SAFETY: the pointer comes from a `&mut [u8]` borrowed for 'a; tasks write disjoint blocks
// (the ownership rule above), and nothing reads the bytes while they are shared.
unsafe impl Send for TransposedBlocks<'_> {}
// SAFETY: as for Send; `&TransposedBlocks` only hands out block pointers.
unsafe impl Sync for TransposedBlocks<'_> {}

impl<'a> TransposedBlocks<'a> {
    fn new(p: &'a mut PackedTernary) -> Self {
        let (groups, panels) = (p.groups(), p.panels());
        let bytes = p.bytes_mut();
        debug_assert_eq!(bytes.len(), groups * panels * PACKED_GROUP_BYTES);
        Self { ptr: bytes.as_mut_ptr(), groups, panels, _bytes: PhantomData }
    }

    /// Groups (4 inputs each) per transposed panel.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// The 64 bytes of (`panel`, `group`); writing them is only sound from the task that owns
    /// `group` (see the type's docs).
    ///
    /// # Panics
    /// If the block is out of range.
    pub(crate) fn block(&self, panel: usize, group: usize) -> *mut u8 {
        assert!(panel < self.panels && group < self.groups, "transposed block out of range");
        // The offset is inside the borrowed buffer (asserted); wrapping_add keeps this safe.
        self.ptr.wrapping_add((panel * self.groups + group) * PACKED_GROUP_BYTES)
    }
}

/// Quantizes the row-major `out x in` latent weight `w` and packs it into `fwd` (`out x in`)
/// and, if given, `tr` (its transpose, as [`PackedTernary::pack_transposed`] builds it); returns
/// the scale `g`. On the best path of this CPU.
pub fn quantize_pack_weights(
    w: &[f32],
    fwd: &mut PackedTernary,
    tr: Option<&mut PackedTernary>,
) -> Result<f32, GemmError> {
    quantize_pack_weights_with(Isa::best_among(&WEIGHT_PACK_PATHS), w, fwd, tr)
}

/// [`quantize_pack_weights`] on the given path.
pub fn quantize_pack_weights_with(
    isa: Isa,
    w: &[f32],
    fwd: &mut PackedTernary,
    tr: Option<&mut PackedTernary>,
) -> Result<f32, GemmError> {
    check_isa("quantize_pack_weights", isa, &WEIGHT_PACK_PATHS)?;
    check_shapes(w, fwd, tr.as_deref())?;
    let g = absmean_chunked_on(isa, w);
    pack_scaled(isa, w, g, fwd, tr);
    Ok(g)
}

fn check_shapes(
    w: &[f32],
    fwd: &PackedTernary,
    tr: Option<&PackedTernary>,
) -> Result<(), GemmError> {
    let (n, k) = (fwd.out_features(), fwd.in_features());
    check_len("latent weights", checked_area("weights", n, k)?, w.len())?;
    match tr {
        Some(t) if (t.out_features(), t.in_features()) != (k, n) => Err(GemmError::Shape(format!(
            "transposed packing is {} x {}, expected {k} x {n}",
            t.out_features(),
            t.in_features()
        ))),
        _ => Ok(()),
    }
}

/// Packs `w` quantized with the scale `g` (shapes checked, path available).
pub(crate) fn pack_scaled(
    isa: Isa,
    w: &[f32],
    g: f32,
    fwd: &mut PackedTernary,
    tr: Option<&mut PackedTernary>,
) {
    let (n_out, n_in, groups) = (fwd.out_features(), fwd.in_features(), fwd.groups());
    let panel_len = groups * PACKED_GROUP_BYTES;
    if panel_len == 0 || n_out == 0 {
        return; // nothing to pack in either layout
    }
    let u = plus_one_threshold(g);
    let tr = tr.map(TransposedBlocks::new);
    let tr = tr.as_ref();
    fwd.bytes_mut().par_chunks_mut(panel_len).enumerate().for_each(|(panel, dst)| match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: the caller checked AVX-512 F/BW/VL and `w.len() == n_out * n_in`; `dst` is
            // forward panel `panel` (`groups * 64` bytes) and this task owns that panel's groups
            // of `tr`.
            unsafe { super::x86_weight_pack::pack_panel_avx512(w, n_out, n_in, u, panel, dst, tr) }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked AVX2 and FMA; the slices are those of the scalar twin.
        Isa::Avx2 => unsafe { pack_panel_avx2(w, n_out, n_in, u, panel, dst, tr) },
        _ => pack_panel_scalar(w, n_out, n_in, u, panel, dst, tr),
    });
}

/// Columns per tile of the panel kernels (one vector of 64 codes per row).
pub(crate) const TILE_COLS: usize = 64;
/// Rows per tile (a quarter of a forward panel).
pub(crate) const TILE_ROWS: usize = 16;

/// Scalar twin of the panel kernel, tile for tile: forward panel `panel` into `dst`, and the
/// transposed groups this panel owns into `tr`. A tile is 16 rows (outputs `16 v .. 16 v + 16`
/// of the panel) by 64 columns; in the layout of packed.rs, its row `4 t + r`, column
/// `4 gi + kk` is bit `2 t` of forward byte `16 v + 4 r + kk` of group `16 tile + gi`, and its
/// row `4 q + kk`, column `16 v' + 4 t + r` is bit `2 t` of byte `16 v' + 4 r + kk` of the
/// transposed block (panel `tile`, group `(64 panel + 16 v) / 4 + q`).
#[inline(always)]
fn pack_panel_scalar(
    w: &[f32],
    n_out: usize,
    n_in: usize,
    u: f32,
    panel: usize,
    dst: &mut [u8],
    tr: Option<&TransposedBlocks<'_>>,
) {
    let groups = n_in.div_ceil(GROUP);
    let fold = |code: &dyn Fn(usize) -> u8| (0..4).fold(0u8, |b, t| b | code(t) << (2 * t));
    for v in 0..PANEL / TILE_ROWS {
        let n0 = panel * PANEL + TILE_ROWS * v;
        let rows = n_out.saturating_sub(n0).min(TILE_ROWS);
        for tile in 0..n_in.div_ceil(TILE_COLS) {
            let k0 = tile * TILE_COLS;
            let cols = (n_in - k0).min(TILE_COLS);
            // Rows and columns past the matrix keep the zero code (padding).
            let mut codes = [[ZERO_CODE; TILE_COLS]; TILE_ROWS];
            for (i, row) in codes.iter_mut().enumerate().take(rows) {
                let src = &w[(n0 + i) * n_in + k0..][..cols];
                for (c, &x) in row.iter_mut().zip(src) {
                    *c = code_of(x, u);
                }
            }
            let first = tile * (TILE_COLS / GROUP);
            for (gi, g) in (first..groups.min(first + TILE_COLS / GROUP)).enumerate() {
                let out = &mut dst[g * PACKED_GROUP_BYTES + 16 * v..][..16];
                for (b, byte) in out.iter_mut().enumerate() {
                    let (r, kk) = (b / GROUP, b % GROUP);
                    *byte = fold(&|t| codes[4 * t + r][GROUP * gi + kk]);
                }
            }
            let Some(tr) = tr else { continue };
            for q in 0..TILE_ROWS / GROUP {
                let group = n0 / GROUP + q;
                if group >= tr.groups() {
                    break; // rows past the last input of the transposed matrix
                }
                let block: [u8; PACKED_GROUP_BYTES] = std::array::from_fn(|b| {
                    let (vv, r, kk) = (b / 16, b % 16 / GROUP, b % GROUP);
                    fold(&|t| codes[GROUP * q + kk][16 * vv + 4 * t + r])
                });
                let at = tr.block(tile, group);
                // SAFETY: `at` is the in-range block (tile, group) (checked by `block`), which
                // only this panel's task writes; `block` is a separate local array.
                unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), at, PACKED_GROUP_BYTES) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::trit;
    use proptest::prelude::*;

    /// The unfused path the model used: chunked absmean, `trit(w / div)`, then both packings.
    fn reference(w: &[f32], n: usize, k: usize) -> (f32, PackedTernary, PackedTernary) {
        let g = reference_absmean(w);
        let (fwd, tr) = reference_packs(w, g, n, k);
        (g, fwd, tr)
    }

    /// `absmean_parallel` as the model had it: in-order chunk sums, added in order.
    fn reference_absmean(w: &[f32]) -> f32 {
        if w.is_empty() {
            return 0.0;
        }
        let partial: Vec<f64> = w
            .chunks(ABSMEAN_CHUNK)
            .map(|c| c.iter().map(|v| f64::from(v.abs())).sum::<f64>())
            .collect();
        (partial.iter().sum::<f64>() / w.len() as f64) as f32
    }

    fn reference_packs(w: &[f32], g: f32, n: usize, k: usize) -> (PackedTernary, PackedTernary) {
        let div = g + WEIGHT_EPS;
        let codes: Vec<i8> = w.iter().map(|&v| trit(v / div)).collect();
        let fwd = PackedTernary::pack(&codes, n, k).expect("pack");
        let tr = PackedTernary::pack_transposed(&codes, n, k).expect("pack");
        (fwd, tr)
    }

    /// Packings of the right shapes full of non-zero codes (so stale bytes would show).
    fn stale(n: usize, k: usize) -> (PackedTernary, PackedTernary) {
        let ones = vec![1i8; n * k];
        let fwd = PackedTernary::pack(&ones, n, k).expect("pack");
        let tr = PackedTernary::pack_transposed(&ones, n, k).expect("pack");
        (fwd, tr)
    }

    /// Equal bits, or both NaN: Rust leaves NaN payloads unspecified (an addition may return
    /// either operand's), so only NaN-ness is comparable.
    fn same_bits(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Checks every path against the reference; `g` forces a scale (boundary tests).
    fn check_all_paths(w: &[f32], n: usize, k: usize, g: Option<f32>) -> Result<(), String> {
        let (g_want, fwd_want, tr_want) = match g {
            Some(g) => {
                let (f, t) = reference_packs(w, g, n, k);
                (g, f, t)
            }
            None => reference(w, n, k),
        };
        for isa in Isa::available_among(&WEIGHT_PACK_PATHS) {
            let (mut fwd, mut tr) = stale(n, k);
            let got = match g {
                Some(g) => {
                    pack_scaled(isa, w, g, &mut fwd, Some(&mut tr));
                    g
                }
                None => quantize_pack_weights_with(isa, w, &mut fwd, Some(&mut tr))
                    .map_err(|e| e.to_string())?,
            };
            if got.to_bits() != g_want.to_bits() && !(got.is_nan() && g_want.is_nan()) {
                return Err(format!("{isa:?}: g {got} vs {g_want}"));
            }
            if fwd.as_bytes() != fwd_want.as_bytes() {
                return Err(format!("{isa:?}: forward bytes differ ({n} x {k})"));
            }
            if tr.as_bytes() != tr_want.as_bytes() {
                return Err(format!("{isa:?}: transposed bytes differ ({n} x {k})"));
            }
            let (mut alone, _) = stale(n, k);
            match g {
                Some(g) => pack_scaled(isa, w, g, &mut alone, None),
                None => {
                    quantize_pack_weights_with(isa, w, &mut alone, None)
                        .map_err(|e| e.to_string())?;
                }
            }
            if alone.as_bytes() != fwd_want.as_bytes() {
                return Err(format!("{isa:?}: forward-only bytes differ ({n} x {k})"));
            }
        }
        Ok(())
    }

    /// Values at and next to the rounding boundaries of the divisor `g + eps`.
    fn boundary_values(g: f32) -> Vec<f32> {
        let div = g + WEIGHT_EPS;
        let u = plus_one_threshold(g);
        let mut out = Vec::new();
        for base in [0.5 * div, 1.5 * div, u, (f64::from(div) * MIDPOINT) as f32] {
            for v in [base.next_down(), base, base.next_up()] {
                out.extend([v, -v]);
            }
        }
        out
    }

    #[test]
    fn threshold_agrees_with_division() {
        let mut gs = vec![0.0f32, 1e-30, 1e-7, 1e-5, 2e-5, 0.01, 0.02, 0.5, 1.0, 3.0, 1e30];
        gs.extend((1..2000).map(|i| (i as f32 * 0.618_034).fract() * 0.05));
        gs.extend([f32::MAX, f32::INFINITY, f32::NAN, f32::MIN_POSITIVE]);
        for g in gs {
            let div = g + WEIGHT_EPS;
            let u = plus_one_threshold(g);
            let mut values = boundary_values(g);
            values.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MAX]);
            values.extend([f32::MIN, 1e-45, -1e-45, 0.25 * div, 2.0 * div, -2.0 * div]);
            for w in values {
                let want = (trit(w / div) + 1) as u8;
                assert_eq!(code_of(w, u), want, "g {g:e} w {w:e} u {u:e}");
            }
        }
    }

    #[test]
    fn ragged_and_degenerate_shapes() {
        for (n, k) in [(1, 1), (1, 70), (70, 1), (63, 5), (65, 67), (130, 3), (3, 130), (64, 64)] {
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 997.0).collect();
            check_all_paths(&w, n, k, None).expect("paths agree");
        }
        for (n, k) in [(0, 5), (5, 0), (0, 0)] {
            let mut fwd = PackedTernary::pack(&[], n, k).expect("pack");
            let mut tr = PackedTernary::pack_transposed(&[], n, k).expect("pack");
            let g = quantize_pack_weights(&[], &mut fwd, Some(&mut tr)).expect("empty");
            assert_eq!(g, 0.0);
        }
    }

    #[test]
    fn model_shapes_match_reference() {
        for (n, k) in [(256, 1024), (1024, 256), (512, 512)] {
            let w: Vec<f32> = (0..n * k)
                .map(|i| {
                    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                    (h as f32 / (1u64 << 24) as f32 - 0.5) * 0.07
                })
                .collect();
            check_all_paths(&w, n, k, None).expect("paths agree");
        }
    }

    #[test]
    fn block_sums_are_kept_only_when_exact() {
        let normal: Vec<f32> = (0..SUM_BLOCK).map(|i| (i as f32 - 200.0) / 7919.0).collect();
        let sum_any_order = |s: f64, w: &[f32]| -> f64 {
            s + w.iter().rev().map(|v| f64::from(v.abs())).sum::<f64>()
        };
        let stats = |w: &[f32]| {
            let bits = w.iter().map(|v| v.to_bits() & 0x7FFF_FFFF);
            (
                bits.clone().map(|b| b.wrapping_sub(1)).min().expect("block"),
                bits.max().expect("block"),
            )
        };
        for s in [0.0, 0.125, 3.0e3] {
            let (lo, hi) = stats(&normal);
            let kept = accept_block(s, sum_any_order(s, &normal), lo, hi);
            assert_eq!(kept, Some(abs_sum_from(s, &normal)), "ordinary weights take the fast path");
        }
        let mut tiny = normal.clone();
        tiny[7] = 1e-30;
        let (lo, hi) = stats(&tiny);
        assert_eq!(accept_block(1.0, sum_any_order(1.0, &tiny), lo, hi), None);
        let zeros = vec![0.0f32; 16];
        let (lo, hi) = stats(&zeros);
        assert_eq!(accept_block(2.5, 2.5, lo, hi), Some(2.5));
    }

    #[test]
    fn shapes_are_checked() {
        let (mut fwd, mut tr) = stale(3, 5);
        assert!(quantize_pack_weights(&[0.0; 14], &mut fwd, Some(&mut tr)).is_err());
        let (_, mut wrong) = stale(5, 3);
        assert!(quantize_pack_weights(&[0.0; 15], &mut fwd, Some(&mut wrong)).is_err());
        assert!(quantize_pack_weights(&[0.0; 15], &mut fwd, Some(&mut tr)).is_ok());
    }

    #[test]
    fn non_finite_weights_follow_the_division() {
        let (n, k) = (17, 9);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX] {
            let mut w: Vec<f32> = (0..n * k).map(|i| (i as f32 - 70.0) / 300.0).collect();
            w[40] = bad;
            check_all_paths(&w, n, k, None).expect("paths agree");
            check_all_paths(&w, n, k, Some(0.1)).expect("paths agree");
        }
    }

    /// Magnitudes that exercise the exactness test: ordinary weights, tiny and subnormal ones
    /// (their low bits force the in-order fallback), zeros, huge values and non-finite ones.
    fn weight_value() -> impl Strategy<Value = f32> {
        prop_oneof![
            20 => -0.08f32..0.08,
            2 => -1e-6f32..1e-6,
            1 => -1e-38f32..1e-38,
            1 => Just(0.0f32),
            1 => -1e30f32..1e30,
            1 => prop::num::f32::ANY,
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn abs_sum_paths_match_in_order(w in prop::collection::vec(weight_value(), 0..3000)) {
            let want = abs_sum_in_order(&w);
            prop_assert!(same_bits(abs_sum_scalar(&w), want), "scalar");
            for isa in Isa::available_among(&WEIGHT_PACK_PATHS) {
                prop_assert!(same_bits(abs_sum_on(isa, &w), want), "{:?}", isa);
            }
        }

        #[test]
        fn absmean_matches_the_chunked_reference(
            len in 0usize..50_000,
            seed in prop::collection::vec(-0.1f32..0.1, 97),
            tiny in prop::collection::vec((0usize..50_000, -1e-9f32..1e-9), 0..4),
        ) {
            let mut w: Vec<f32> =
                (0..len).map(|i| seed[i % 97] * (1.0 + i as f32 * 1e-6)).collect();
            for (at, v) in tiny {
                if at < len {
                    w[at] = v;
                }
            }
            let want = reference_absmean(&w);
            for isa in Isa::available_among(&WEIGHT_PACK_PATHS) {
                let g = absmean_chunked_with(isa, &w).expect("absmean");
                prop_assert_eq!(g.to_bits(), want.to_bits(), "{:?}", isa);
            }
        }

        #[test]
        fn fused_pack_matches_reference(
            n in 1usize..150,
            k in 1usize..150,
            vals in prop::collection::vec(-0.05f32..0.05, 150 * 150),
            picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..24), 0..40),
        ) {
            let mut w = vals[..n * k].to_vec();
            // Put weights on the rounding boundaries of the scale they produce: g moves a
            // little when they change, so settle it a few times.
            for _ in 0..4 {
                let (g, _, _) = reference(&w, n, k);
                let edges = boundary_values(g);
                let len = w.len();
                for (at, which) in &picks {
                    w[at.index(len)] = edges[which % edges.len()];
                }
            }
            prop_assert_eq!(check_all_paths(&w, n, k, None), Ok(()));
        }

        #[test]
        fn pack_at_a_given_scale_matches_reference(
            n in 1usize..140,
            k in 1usize..140,
            g in 0.001f32..0.1,
            picks in prop::collection::vec(0usize..32, 140 * 140),
            noise in prop::collection::vec(-0.2f32..0.2, 140 * 140),
        ) {
            let edges = boundary_values(g);
            let w: Vec<f32> = (0..n * k)
                .map(|i| if picks[i] < edges.len() { edges[picks[i]] } else { noise[i] })
                .collect();
            prop_assert_eq!(check_all_paths(&w, n, k, Some(g)), Ok(()));
        }
    }
}
