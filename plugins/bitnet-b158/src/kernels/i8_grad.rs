//! The BitLinear weight gradient on the int8 dot-product units, with block scales:
//! `dW[j][l] = sum_i (dY[i][j] / s_i) * X_q[i][l]`.
//!
//! `X_q` is already int8 (the saved activation codes). The other operand `A[i][j] = dY[i][j] / s_i`
//! is quantized to int8 by absmax over each run of [`BLOCK`] consecutive tokens of one output row
//! `j`: `c[j][b] = max_{i in b} |A[i][j]| / 127`, `A_q = round_half_even(A / c)`. The depth
//! (tokens) is where the scales must live: `1 / s_i` and `dY` both vary from token to token, and
//! one scale per output row over the whole batch (what a per-row int8 GEMM allows) rounds the
//! tokens with small gradients to zero. With a scale per 32 tokens, every element's rounding
//! error is at most `c[j][b] / 2`, i.e. 1/254 of the largest magnitude in its own 32-token run.
//!
//! Each block's sum `sum_{i in b} A_q[i][j] * X_q[i][l]` is an exact int32 (`vpdpbusd`, four
//! products per lane per step); the blocks are combined in fp32 by one fused multiply-add each:
//! `acc = fma(c[j][b], float(block sum), acc)` (the block sum is below 2^24 in magnitude, so its
//! conversion is exact). `vpdpbusd` multiplies unsigned by signed bytes, so `X_q` enters as
//! `X_q + 128` (a sign-bit flip) and each block's int32 accumulator starts at
//! `-128 * sum_{i in b} A_q[i][j]`, which removes the offset exactly.
//!
//! Precision (what the tests hold): each element is within
//! `sum_b (c[j][b] / 2) * sum_{i in b} |X_q[i][l]| + blocks * 2^-23 * sum_i |A[i][j] * X_q[i][l]|`
//! of the exact sum, and the AVX-512 VNNI path is bit-identical to the scalar twin (exact
//! integers, the same fused multiply-adds in the same order).
//!
//! Against the bf16 path ([`super::bf16`]): half the instructions per multiply-add (64 int8
//! products per `vpdpbusd` against 32 bf16 per `vdpbf16ps`), plus one conversion and one fma per
//! 32 tokens and output vector, and a quarter of the bytes of the packed `X_q`.
//!
//! Paths: [`Isa::Avx512Vnni`] (6 x 32 register tile), [`Isa::Avx2Vnni`] (the 256-bit
//! `vpdpbusd` of AVX-VNNI, 6 x 8 register tile), [`Isa::Avx2`] (`vpmaddwd` on bytes widened to
//! 16 bits, 6 x 8 register tile; bit-identical too), on aarch64 [`Isa::NeonDot`]
//! (`sdot`) and [`Isa::Neon`] (`smull` + `sadalp`), 6 x 8 tiles, bit-identical, and
//! [`Isa::Scalar`]. Work is split over rows
//! of `dW` on the current rayon pool and blocked GotoBLAS style: an `A` block of at most [`MC`]
//! rows by [`KB`] token blocks is quantized and laid out right before use, while the matching
//! `KB * 32 x 32` slice of a packed `X_q` panel (16 KiB) stays in L1 across its tiles.

use super::{
    GemmError, Isa, check_grad_weight, check_isa, checked_area, clamp_like_simd, for_each_row_band,
};
use crate::quant::round_half_even_small_i32;
use rayon::prelude::*;
use std::cell::RefCell;

/// Paths of the int8 weight gradient.
pub const I8_GRAD_PATHS: [Isa; 6] =
    [Isa::Scalar, Isa::Avx2, Isa::Avx2Vnni, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDot];

/// Tokens per scale of the quantized `dY / s`.
pub const BLOCK: usize = 32;
/// Four-token groups per block (one `vpdpbusd` step each).
pub(crate) const QUADS: usize = BLOCK / 4;
/// Rows of `dW` per micro-kernel tile.
pub(crate) const MR: usize = 6;
/// Columns of `dW` per panel (two vectors of 16 lanes).
pub(crate) const NR: usize = 32;
/// Token blocks per depth pass: the pass's slice of a packed panel is `KB * 32 * 32` bytes.
pub(crate) const KB: usize = 16;
/// Output rows per `A` block (a multiple of [`MR`]): `MC * KB * 32` bytes of codes (192 KiB).
pub(crate) const MC: usize = 384;

/// One micro-kernel call: `rows` rows of `dW` x the columns `l0 .. l0 + cols` of one panel,
/// over `blocks` token blocks.
pub(crate) struct I8Tile<'a> {
    /// Codes of the tile's rows, `[quad][MR]` per block, blocks `a_stride` lanes apart: four
    /// tokens' int8 codes per lane.
    pub a: &'a [u32],
    /// The scale `c` of each (block, row), `[MR]` per block, blocks `s_stride` apart.
    pub scales: &'a [f32],
    /// The starting int32 of each (block, row), `-128 * sum of the row's codes in the block`,
    /// laid out as `scales`.
    pub inits: &'a [i32],
    /// Lanes from one block's codes of the tile to the next block's.
    pub a_stride: usize,
    /// Entries from one block's scales (and starting sums) of the tile to the next block's.
    pub s_stride: usize,
    /// The pass's slice of one packed panel of `X_q + 128`, `[block][quad][NR]`.
    pub b: &'a [u32],
    pub blocks: usize,
    pub rows: usize,
    /// The `rows` output rows, `k` each.
    pub out: &'a mut [f32],
    pub k: usize,
    pub l0: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// `dw[j][l] (+)= sum_i (dy[i][j] / x_scales[i]) * x_q[i][l]` for the row-major `m x n` output
/// gradient `dy`, the `m x k` int8 activations `x_q` with their row scales, and the `n x k`
/// weight gradient `dw` (overwritten, or added to when `accumulate`), with `dy / s` quantized
/// per 32-token block (see the module docs). Best path of this CPU.
#[allow(clippy::too_many_arguments)]
pub fn grad_weight_i8(
    dy: &[f32],
    m: usize,
    n: usize,
    x_q: &[i8],
    x_scales: &[f32],
    k: usize,
    dw: &mut [f32],
    accumulate: bool,
) -> Result<(), GemmError> {
    let isa = Isa::best_among(&I8_GRAD_PATHS);
    grad_weight_i8_with(isa, dy, m, n, x_q, x_scales, k, dw, accumulate)
}

/// How the fp32 operand `A` (`m` deep, `n` output rows) is laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ALayout {
    /// `a[i * n + j]`: an output gradient `dY` (`m x n`, one row per token), as in a weight
    /// gradient.
    DepthMajor,
    /// `a[j * m + i]`: one contiguous row of depth per output row, e.g. the logit gradient
    /// (`tokens x vocab`) for the LM head's input gradient `dX = dlogits . W` with `W`
    /// quantized per vocabulary row (measured in the kernel bench; the model keeps that product
    /// on bf16, which was as fast at `d = 256`). The same blocks, codes and sums as
    /// [`ALayout::DepthMajor`] on the transposed operand, so the same result bit for bit.
    RowMajor,
}

/// The whole quantized `A` of one product, block-major so each token block is one contiguous
/// piece written by one task: `[block][tile][quad][MR]` codes, `[block][tile][MR]` scales and
/// starting sums (tiles of [`MR`] output rows).
#[derive(Default)]
struct APacked {
    codes: Vec<u32>,
    scales: Vec<f32>,
    inits: Vec<i32>,
}

/// The output slices one packer call fills: `[tile][block][quad][MR]` codes and
/// `[tile][block][MR]` scales and starting sums for its rows and blocks.
pub(crate) struct ASlices<'a> {
    pub codes: &'a mut [u32],
    pub scales: &'a mut [f32],
    pub inits: &'a mut [i32],
}

thread_local! {
    /// `X_q + 128` packed `[panel][quad][NR]` (four tokens' bytes per lane).
    static B_PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// The quantized `A` of the running product.
    static A_PACK: RefCell<APacked> = RefCell::new(APacked::default());
}

/// [`grad_weight_i8`] on the given path.
#[allow(clippy::too_many_arguments)]
pub fn grad_weight_i8_with(
    isa: Isa,
    dy: &[f32],
    m: usize,
    n: usize,
    x_q: &[i8],
    x_scales: &[f32],
    k: usize,
    dw: &mut [f32],
    accumulate: bool,
) -> Result<(), GemmError> {
    product_i8_with(isa, ALayout::DepthMajor, dy, m, n, x_q, x_scales, k, dw, accumulate)
}

/// The product of [`grad_weight_i8`] on the given path, with `A` (`dy`, `m x n` logically,
/// `m` deep) in either layout: `out[j][l] (+)= sum_i (A[i][j] / x_scales[i]) * x_q[i][l]`.
#[allow(clippy::too_many_arguments)]
pub fn product_i8_with(
    isa: Isa,
    layout: ALayout,
    dy: &[f32],
    m: usize,
    n: usize,
    x_q: &[i8],
    x_scales: &[f32],
    k: usize,
    dw: &mut [f32],
    accumulate: bool,
) -> Result<(), GemmError> {
    check_isa("grad_weight_i8", isa, &I8_GRAD_PATHS)?;
    check_grad_weight(dy, m, n, x_q, x_scales, k, dw)?;
    if n == 0 || k == 0 {
        return Ok(());
    }
    if m == 0 {
        if !accumulate {
            dw.fill(0.0);
        }
        return Ok(());
    }
    let blocks = m.div_ceil(BLOCK);
    let panels = k.div_ceil(NR);
    let b_len = checked_area("int8 pack", checked_area("int8 pack", panels, blocks)?, QUADS * NR)?;
    // Take the buffer out of the thread-local so tasks on this thread never see it borrowed.
    let mut b = B_PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    // Every lane is written by the packer: grow only (no clearing, no shrinking, so products of
    // alternating sizes do not rewrite the buffer each call).
    grow(&mut b, b_len);
    pack_b(isa, x_q, m, k, &mut b[..b_len]);
    let inv_s: Vec<f32> = x_scales.iter().map(|&s| 1.0 / s).collect();
    let mut a = A_PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    let tiles = n.div_ceil(MR);
    let per_block = checked_area("int8 pack", tiles, MR)?;
    let a_len = checked_area("int8 pack", checked_area("int8 pack", blocks, per_block)?, QUADS)?;
    // Grown only, as `b`; lanes of rows past `n` in the last tile are never read, so stale
    // values may stay there.
    grow(&mut a.codes, a_len);
    grow(&mut a.scales, blocks * per_block);
    grow(&mut a.inits, blocks * per_block);
    pack_all((isa, layout), &mut a, dy, &inv_s, (m, n));
    for_each_row_band(dw, k, MR, 2, |out, j0| {
        run_task(isa, out, j0, (m, n, k), &a, &b[..b_len], accumulate);
    });
    A_PACK.with(|p| *p.borrow_mut() = a);
    B_PACK.with(|p| *p.borrow_mut() = b);
    Ok(())
}

/// Quantizes all of `A` into `a`, one token block per task: each block's rows are read along
/// memory (a token's whole row of `dy` at a time) and coded while in cache.
fn pack_all(
    (isa, layout): (Isa, ALayout),
    a: &mut APacked,
    dy: &[f32],
    inv_s: &[f32],
    (m, n): (usize, usize),
) {
    let tiles = n.div_ceil(MR);
    let (code_len, scale_len) = (tiles * QUADS * MR, tiles * MR);
    // Rows per packer call: what its per-row scratch holds.
    let chunk = match isa {
        Isa::Avx512Vnni => PACK_ROWS_AVX512,
        _ => MC,
    };
    let blocks = m.div_ceil(BLOCK);
    let APacked { codes, scales, inits } = a;
    codes[..blocks * code_len]
        .par_chunks_mut(code_len)
        .zip(scales[..blocks * scale_len].par_chunks_mut(scale_len))
        .zip(inits[..blocks * scale_len].par_chunks_mut(scale_len))
        .enumerate()
        .for_each(|(block, ((codes, scales), inits))| {
            for j0 in (0..n).step_by(chunk) {
                let rn = (n - j0).min(chunk);
                let t0 = j0 / MR;
                let out = ASlices {
                    codes: &mut codes[t0 * QUADS * MR..],
                    scales: &mut scales[t0 * MR..],
                    inits: &mut inits[t0 * MR..],
                };
                pack_a_best((isa, layout), out, dy, inv_s, (m, n), (j0, rn), (block, 1));
            }
        });
}

/// Grows `v` to at least `len` elements (new ones zero); never shrinks it.
fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Rows per call of the AVX-512 packer (a multiple of [`MR`] and 16).
pub(crate) const PACK_ROWS_AVX512: usize = 1536;

/// One task's band of output rows `j0 .. j0 + out.len() / k`, by blocks of [`MC`] rows and
/// [`KB`] token blocks, on the packed `A`.
fn run_task(
    isa: Isa,
    out: &mut [f32],
    j0: usize,
    (m, n, k): (usize, usize, usize),
    a: &APacked,
    b: &[u32],
    accumulate: bool,
) {
    let rn = out.len() / k;
    let blocks = m.div_ceil(BLOCK);
    let panels = k.div_ceil(NR);
    let all_tiles = n.div_ceil(MR);
    let (a_stride, s_stride) = (all_tiles * QUADS * MR, all_tiles * MR);
    debug_assert_eq!(j0 % MR, 0);
    for m0 in (0..rn).step_by(MC) {
        let mn = (rn - m0).min(MC);
        let tiles = mn.div_ceil(MR);
        for b0 in (0..blocks).step_by(KB) {
            let bc = (blocks - b0).min(KB);
            for panel in 0..panels {
                let start = (panel * blocks + b0) * QUADS * NR;
                let bslice = &b[start..start + bc * QUADS * NR];
                let l0 = panel * NR;
                let width = (k - l0).min(NR);
                for tile in 0..tiles {
                    let r = m0 + tile * MR;
                    let take = (mn - tile * MR).min(MR);
                    // The tile's lanes in the first block; later blocks follow at the strides.
                    let at = b0 * all_tiles + (j0 + r) / MR;
                    let (ca, cs) = (at * QUADS * MR, at * MR);
                    let (a_end, s_end) =
                        (ca + (bc - 1) * a_stride + QUADS * MR, cs + (bc - 1) * s_stride + MR);
                    micro_kernel(
                        isa,
                        I8Tile {
                            a: &a.codes[ca..a_end],
                            scales: &a.scales[cs..s_end],
                            inits: &a.inits[cs..s_end],
                            a_stride,
                            s_stride,
                            b: bslice,
                            blocks: bc,
                            rows: take,
                            out: &mut out[r * k..(r + take) * k],
                            k,
                            l0,
                            cols: width,
                            accumulate: accumulate || b0 > 0,
                        },
                    );
                }
            }
        }
    }
}

/// [`pack_a`] or [`pack_a_rows`]; on the AVX-512 path the hand-vectorized `pack_a_avx512`
/// (the same operations per element, so the same codes, scales and sums) and `pack_a_rows`
/// compiled for AVX-512 (the baseline x86-64 build only gets 4-lane SSE vectors).
fn pack_a_best(
    (isa, layout): (Isa, ALayout),
    ab: ASlices<'_>,
    dy: &[f32],
    inv_s: &[f32],
    dims: (usize, usize),
    rows: (usize, usize),
    blocks: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    unsafe fn pack_a_avx512(
        layout: ALayout,
        ab: ASlices<'_>,
        dy: &[f32],
        inv_s: &[f32],
        dims: (usize, usize),
        rows: (usize, usize),
        blocks: (usize, usize),
    ) {
        match layout {
            ALayout::DepthMajor => {
                // SAFETY: this function's own features; the caller sized the slices.
                unsafe { super::x86_i8_grad::pack_a_avx512(ab, dy, inv_s, dims, rows, blocks) }
            }
            ALayout::RowMajor => pack_a_rows(ab, dy, inv_s, dims, rows, blocks),
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pack_a_avx2(
        layout: ALayout,
        ab: ASlices<'_>,
        dy: &[f32],
        inv_s: &[f32],
        dims: (usize, usize),
        rows: (usize, usize),
        blocks: (usize, usize),
    ) {
        match layout {
            ALayout::DepthMajor => {
                let (n, j0) = (dims.1, rows.0);
                pack_a_with(ab, dims, rows, blocks, dy, inv_s, |amax, i0, i1| {
                    // SAFETY: this function's own features; the block's tokens and rows are
                    // inside `dy` (checked by the caller).
                    unsafe {
                        super::x86_avx2_i8_grad::block_amax_avx2(amax, dy, inv_s, (n, j0), (i0, i1))
                    }
                })
            }
            ALayout::RowMajor => pack_a_rows(ab, dy, inv_s, dims, rows, blocks),
        }
    }
    match (isa, layout) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked available (AVX-512 F/BW/VL are part of it).
        (Isa::Avx512Vnni, _) => unsafe { pack_a_avx512(layout, ab, dy, inv_s, dims, rows, blocks) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path was checked available (AVX2 and FMA); the scalar packers compiled
        // for them (the same operations per element, so the same codes, scales and sums).
        (Isa::Avx2 | Isa::Avx2Vnni, _) => unsafe {
            pack_a_avx2(layout, ab, dy, inv_s, dims, rows, blocks)
        },
        (_, ALayout::DepthMajor) => pack_a(ab, dy, inv_s, dims, rows, blocks),
        (_, ALayout::RowMajor) => pack_a_rows(ab, dy, inv_s, dims, rows, blocks),
    }
}

/// Checks that `ab` holds the lanes of `rn` rows and `bc` token blocks.
#[inline(always)]
fn check_a_slices(ab: &ASlices<'_>, rn: usize, bc: usize) {
    let tiles = rn.div_ceil(MR);
    assert!(
        ab.codes.len() >= tiles * bc * QUADS * MR
            && ab.scales.len() >= tiles * bc * MR
            && ab.inits.len() >= tiles * bc * MR,
        "int8 A slices too short"
    );
}

/// [`pack_a`] for `A` stored [`ALayout::RowMajor`] (`dy[j * m + i]`): each row's block is 32
/// contiguous values, scaled, reduced and coded in one pass (the same operations per element,
/// so the same codes, scales and starting sums).
#[inline(always)]
fn pack_a_rows(
    ab: ASlices<'_>,
    dy: &[f32],
    inv_s: &[f32],
    (m, _n): (usize, usize),
    (j0, rn): (usize, usize),
    (b0, bc): (usize, usize),
) {
    check_a_slices(&ab, rn, bc);
    let mut vals = [0f32; BLOCK];
    for r in 0..rn {
        let row = &dy[(j0 + r) * m..(j0 + r + 1) * m];
        let (tile, lane) = (r / MR, r % MR);
        for bl in 0..bc {
            let i0 = (b0 + bl) * BLOCK;
            let i1 = (i0 + BLOCK).min(m);
            let live = i1 - i0;
            let mut amax = 0f32;
            for (v, (&x, &f)) in vals.iter_mut().zip(row[i0..i1].iter().zip(&inv_s[i0..i1])) {
                *v = x * f;
                amax = amax_step(amax, v.abs());
            }
            let (scale, inverse) = block_scale(amax);
            let at = (tile * bc + bl) * MR + lane;
            ab.scales[at] = scale;
            let mut sum = 0i32;
            for (quad, four) in vals.chunks_exact(4).enumerate() {
                let mut bytes = [0u8; 4];
                for (t, (byte, &v)) in bytes.iter_mut().zip(four).enumerate() {
                    if 4 * quad + t < live {
                        let c = code(v, inverse);
                        sum += i32::from(c);
                        *byte = c as u8;
                    }
                }
                ab.codes[(tile * bc + bl) * QUADS * MR + quad * MR + lane] =
                    u32::from_le_bytes(bytes);
            }
            ab.inits[at] = -128 * sum;
        }
    }
}

/// Quantizes `A[i][j] = dy[i][j] / s_i` for rows `j0 .. j0 + rn` and token blocks
/// `b0 .. b0 + bc` into `ab` (`[tile][block][quad][MR]` codes, `[tile][block][MR]` scales and
/// starting sums). Tokens past `m` get code 0; the lanes of rows past `rn` are not written.
#[inline(always)]
fn pack_a(
    ab: ASlices<'_>,
    dy: &[f32],
    inv_s: &[f32],
    dims: (usize, usize),
    rows: (usize, usize),
    blocks: (usize, usize),
) {
    let (n, j0) = (dims.1, rows.0);
    pack_a_with(ab, dims, rows, blocks, dy, inv_s, |amax, i0, i1| {
        block_amax(amax, dy, inv_s, (n, j0), (i0, i1))
    })
}

/// Pass 1 of [`pack_a`]: `amax[r]` becomes the absmax of `dy[i][j0 + r] * inv_s[i]` over the
/// tokens `i0 .. i1` (vectorises along `r`).
#[inline(always)]
fn block_amax(
    amax: &mut [f32],
    dy: &[f32],
    inv_s: &[f32],
    (n, j0): (usize, usize),
    (i0, i1): (usize, usize),
) {
    let rn = amax.len();
    amax.fill(0.0);
    for i in i0..i1 {
        let (row, f) = (&dy[i * n + j0..i * n + j0 + rn], inv_s[i]);
        for (a, &v) in amax.iter_mut().zip(row) {
            *a = amax_step(*a, (v * f).abs());
        }
    }
}

/// [`pack_a`] with its first pass (each row's absmax over a block's tokens) given as
/// `amax_pass(amax, i0, i1)`, which the AVX2 path hand-vectorises.
#[inline(always)]
fn pack_a_with(
    ab: ASlices<'_>,
    (m, n): (usize, usize),
    (j0, rn): (usize, usize),
    (b0, bc): (usize, usize),
    dy: &[f32],
    inv_s: &[f32],
    amax_pass: impl Fn(&mut [f32], usize, usize),
) {
    check_a_slices(&ab, rn, bc);
    let mut amax = [0f32; MC];
    let mut inv = [0f32; MC];
    let mut sums = [0i32; MC];
    let mut lanes = [0u32; MC];
    let mut qrows = [[0u8; MC]; 4];
    let (amax, inv, sums, lanes) =
        (&mut amax[..rn], &mut inv[..rn], &mut sums[..rn], &mut lanes[..rn]);
    for bl in 0..bc {
        let i0 = (b0 + bl) * BLOCK;
        let i1 = (i0 + BLOCK).min(m);
        // Pass 1: the block's absmax of each row.
        amax_pass(amax, i0, i1);
        for ((a, iv), r) in amax.iter().zip(inv.iter_mut()).zip(0..rn) {
            let (scale, inverse) = block_scale(*a);
            *iv = inverse;
            ab.scales[(r / MR) * bc * MR + bl * MR + r % MR] = scale;
        }
        // Pass 2: codes, four tokens per lane, and the block sums of each row. Each token row is
        // coded in one pass and the four rows are then interleaved (both loops vectorise).
        sums.fill(0);
        for quad in 0..QUADS {
            for (t, qr) in qrows.iter_mut().enumerate() {
                let qr = &mut qr[..rn];
                let i = i0 + 4 * quad + t;
                if i >= i1 {
                    qr.fill(0);
                    continue;
                }
                let (row, f) = (&dy[i * n + j0..i * n + j0 + rn], inv_s[i]);
                for ((q, &v), &iv) in qr.iter_mut().zip(row).zip(&*inv) {
                    *q = code(v * f, iv) as u8;
                }
            }
            let [q0, q1, q2, q3] = &qrows;
            for (j, (l, s)) in lanes.iter_mut().zip(sums.iter_mut()).enumerate() {
                let b = [q0[j], q1[j], q2[j], q3[j]];
                *l = u32::from_le_bytes(b);
                *s += b.iter().map(|&v| i32::from(v as i8)).sum::<i32>();
            }
            let full = rn / MR;
            for tile in 0..full {
                let at = (tile * bc + bl) * QUADS * MR + quad * MR;
                ab.codes[at..at + MR].copy_from_slice(&lanes[tile * MR..tile * MR + MR]);
            }
            for (r, &lane) in lanes.iter().enumerate().skip(full * MR) {
                ab.codes[((r / MR) * bc + bl) * QUADS * MR + quad * MR + r % MR] = lane;
            }
        }
        for (r, &s) in sums.iter().enumerate() {
            ab.inits[(r / MR) * bc * MR + bl * MR + r % MR] = -128 * s;
        }
    }
}

/// One step of a block's absmax over `x = |A|`: the larger value, or the canonical NaN once a
/// NaN was seen (a NaN gradient stays visible downstream, with the same bits on every path).
#[inline(always)]
pub(crate) fn amax_step(amax: f32, x: f32) -> f32 {
    if x.is_nan() || amax.is_nan() {
        f32::NAN
    } else if x > amax {
        x
    } else {
        amax
    }
}

/// The scale `c = amax / 127` of a block and the factor `127 / amax` its codes use (both 0 for
/// an all-zero block, both NaN for a block holding a NaN, so the NaN reaches `dW`).
#[inline(always)]
pub(crate) fn block_scale(amax: f32) -> (f32, f32) {
    if amax > 0.0 || amax.is_nan() { (amax / 127.0, 127.0 / amax) } else { (0.0, 0.0) }
}

/// The int8 code of `a` for a block with factor `inv`: `clamp(round_half_even(a * inv), -127,
/// 127)`, NaN giving -127 (its block's scale is NaN, which carries it into `dW`).
#[inline(always)]
pub(crate) fn code(a: f32, inv: f32) -> i8 {
    // `a * inv` is within [-127, 127] up to rounding; the comparison clamp keeps the rounding
    // in range for any input.
    round_half_even_small_i32(clamp_like_simd(a * inv, -127.0, 127.0)) as i8
}

/// Packs `X_q + 128` as `[panel][quad][NR]` lanes of four tokens' bytes (tokens past `m` and
/// columns past `k` are 128, i.e. zero), one panel per task, on the given path.
fn pack_b(isa: Isa, x_q: &[i8], m: usize, k: usize, b: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_avx2(x_q: &[i8], m: usize, k: usize, l0: usize, dst: &mut [u32]) {
        pack_b_panel(x_q, m, k, l0, dst)
    }
    let quads = m.div_ceil(BLOCK) * QUADS;
    b.par_chunks_mut(quads * NR).enumerate().for_each(|(panel, dst)| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX-512 VNNI (with F/BW/VL); `dst` is one whole panel of
        // `quads >= m / 4` lane rows and `panel * NR < k`.
        Isa::Avx512Vnni => unsafe {
            super::x86_i8_grad::pack_b_panel_avx512(x_q, m, k, panel * NR, dst)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2 and FMA (the scalar panel, compiled for them).
        Isa::Avx2 | Isa::Avx2Vnni => unsafe { panel_avx2(x_q, m, k, panel * NR, dst) },
        _ => pack_b_panel(x_q, m, k, panel * NR, dst),
    });
}

/// One panel of [`pack_b`] (columns `l0 .. l0 + NR`), element by element: the scalar twin.
#[inline(always)]
pub(crate) fn pack_b_panel(x_q: &[i8], m: usize, k: usize, l0: usize, dst: &mut [u32]) {
    let cols = (k - l0).min(NR);
    for (q, lane_row) in dst.chunks_exact_mut(NR).enumerate() {
        lane_row.fill(0x8080_8080);
        for t in 0..4 {
            let i = 4 * q + t;
            if i >= m {
                break;
            }
            let src = &x_q[i * k + l0..i * k + l0 + cols];
            let clear = !(0xFFu32 << (8 * t));
            for (d, &x) in lane_row.iter_mut().zip(src) {
                *d = (*d & clear) | (u32::from((x as u8) ^ 0x80) << (8 * t));
            }
        }
    }
}

pub(crate) fn micro_kernel(isa: Isa, t: I8Tile<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX-512 VNNI (with F/BW/VL); the tile's slices are in
        // bounds by construction (rows <= MR, cols <= NR, sizes from the block count).
        Isa::Avx512Vnni => unsafe { super::x86_i8_grad::kernel_i8_grad(t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2 and FMA; the driver passes at most KB blocks, and the
        // tile's slices are in bounds as above.
        Isa::Avx2 => unsafe { super::x86_avx2_i8_grad::kernel_i8_grad_avx2(t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2, FMA and AVX-VNNI; the tile is in bounds as above.
        Isa::Avx2Vnni => unsafe { super::x86_avx2_i8_grad::kernel_i8_grad_avx_vnni(t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON and dotprod; the tile is in bounds as above.
        Isa::NeonDot => unsafe { super::neon_i8_grad::kernel_i8_grad_neon_dot(t) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON; the tile is in bounds as above.
        Isa::Neon => unsafe { super::neon_i8_grad::kernel_i8_grad_neon(t) },
        _ => kernel_scalar(t),
    }
}

/// The exact int32 of one block of one lane: the starting sum plus four-token dot products of
/// unsigned `b` bytes and signed `a` bytes (what `vpdpbusd` adds).
#[inline(always)]
fn block_sum(init: i32, a: impl Iterator<Item = u32>, b: impl Iterator<Item = u32>) -> i32 {
    let mut acc = init;
    for (av, bv) in a.zip(b) {
        for t in 0..4 {
            let x = i32::from((bv >> (8 * t)) as u8);
            let w = i32::from((av >> (8 * t)) as u8 as i8);
            acc += x * w;
        }
    }
    acc
}

fn kernel_scalar(t: I8Tile<'_>) {
    for r in 0..t.rows {
        for c in 0..t.cols {
            let o = &mut t.out[r * t.k + t.l0 + c];
            let mut acc = if t.accumulate { *o } else { 0.0 };
            for bl in 0..t.blocks {
                let (a0, q0, s0) = (bl * t.a_stride, bl * QUADS, bl * t.s_stride);
                let a = (0..QUADS).map(|q| t.a[a0 + q * MR + r]);
                let b = (q0..q0 + QUADS).map(|q| t.b[q * NR + c]);
                let sum = block_sum(t.inits[s0 + r], a, b);
                acc = t.scales[s0 + r].mul_add(sum as f32, acc);
            }
            *o = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::pool;
    use proptest::prelude::*;

    #[test]
    fn shape_errors() {
        let mut dw = vec![0.0; 6];
        assert!(grad_weight_i8(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw, false).is_ok());
        assert!(grad_weight_i8(&[0.0; 3], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw, false).is_err());
        assert!(grad_weight_i8(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 1], 3, &mut dw, false).is_err());
        assert!(
            grad_weight_i8(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw[..5], false).is_err()
        );
        // No tokens: the gradient is zero (or unchanged when accumulating).
        let mut dw = vec![5.0; 6];
        grad_weight_i8(&[], 0, 2, &[], &[], 3, &mut dw, true).expect("empty");
        assert_eq!(dw, vec![5.0; 6]);
        grad_weight_i8(&[], 0, 2, &[], &[], 3, &mut dw, false).expect("empty");
        assert_eq!(dw, vec![0.0; 6]);
    }

    #[test]
    fn codes_round_half_to_even_and_saturate() {
        let (c, inv) = block_scale(127.0);
        assert_eq!((c, inv), (1.0, 1.0));
        assert_eq!(code(2.5, inv), 2);
        assert_eq!(code(-3.5, inv), -4);
        assert_eq!(code(127.0, inv), 127);
        assert_eq!(code(-1e30, inv), -127);
        assert_eq!(code(f32::NAN, inv), -127);
        for v in -300..=300 {
            let a = v as f32 * 0.5;
            assert_eq!(code(a, 1.0), a.clamp(-127.0, 127.0).round_ties_even() as i8, "{a}");
        }
        assert_eq!(block_scale(0.0), (0.0, 0.0));
        assert_eq!(code(0.0, 0.0), 0);
    }

    /// Gradients spanning several orders of magnitude along the tokens, the case the block
    /// scales exist for: per-token magnitudes `10^u` with `u` in [-3, 1].
    fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, Vec<i8>, Vec<f32>)> {
        // Small shapes, and shapes past one depth pass (KB blocks) and one row block (MC rows).
        let small = (1usize..70, 1usize..20, 1usize..80);
        let blocked = (KB * BLOCK - 3..KB * BLOCK + 70, MC - 5..MC + 20, 1usize..40);
        prop_oneof![3 => small, 1 => blocked].prop_flat_map(|(m, n, k)| {
            (
                Just(m),
                Just(n),
                Just(k),
                (
                    prop::collection::vec(-1.0f32..1.0, m * n),
                    prop::collection::vec(-3.0f32..1.0, m),
                )
                    .prop_map(move |(v, mag)| {
                        v.iter().enumerate().map(|(x, &e)| e * 10f32.powf(mag[x / n])).collect()
                    }),
                prop::collection::vec(-127i8..=127, m * k),
                prop::collection::vec(0.5f32..200.0, m),
            )
        })
    }

    /// The error bound of the module docs, from the same block scales the packer computes.
    fn bound(dy: &[f32], s: &[f32], x: &[i8], (m, n, k): (usize, usize, usize)) -> Vec<f64> {
        let blocks = m.div_ceil(BLOCK);
        let mut out = vec![0.0f64; n * k];
        for j in 0..n {
            for l in 0..k {
                let mut e = 0.0f64;
                let mut mag = 0.0f64;
                for bl in 0..blocks {
                    let (i0, i1) = (bl * BLOCK, ((bl + 1) * BLOCK).min(m));
                    let amax =
                        (i0..i1).map(|i| (dy[i * n + j] * (1.0 / s[i])).abs()).fold(0f32, f32::max);
                    let c = f64::from(block_scale(amax).0);
                    for i in i0..i1 {
                        let xv = f64::from(x[i * k + l]).abs();
                        e += c / 2.0 * xv * (1.0 + 1e-6);
                        mag += f64::from(dy[i * n + j]).abs() / f64::from(s[i]) * xv;
                    }
                }
                out[j * k + l] = e + blocks as f64 * 2f64.powi(-23) * (mag + e) + 1e-30;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        /// Every path, thread count and layout of `A` gives the scalar twin's result bit for
        /// bit, and that result is within the bound.
        fn paths_agree_bitwise_and_stay_within_the_bound(
            (m, n, k, dy, x, s) in case(), threads in 1usize..4, accumulate in any::<bool>(),
        ) {
            let mut exact = vec![0.0f64; n * k];
            for j in 0..n {
                for l in 0..k {
                    for i in 0..m {
                        exact[j * k + l] += f64::from(dy[i * n + j]) / f64::from(s[i]) * f64::from(x[i * k + l]);
                    }
                }
            }
            let bound = bound(&dy, &s, &x, (m, n, k));
            let start: Vec<f32> = (0..n * k).map(|i| if accumulate { i as f32 * 0.25 } else { f32::NAN }).collect();
            let mut want = start.clone();
            grad_weight_i8_with(Isa::Scalar, &dy, m, n, &x, &s, k, &mut want, accumulate)
                .expect("scalar");
            for i in 0..n * k {
                let base = if accumulate { f64::from(start[i]) } else { 0.0 };
                let err = (f64::from(want[i]) - base - exact[i]).abs();
                prop_assert!(!want[i].is_nan());
                prop_assert!(err <= bound[i] + 1e-6 * base.abs(), "scalar at {}: err {} > {}", i, err, bound[i]);
            }
            let mut rows = vec![0.0f32; n * m];
            for i in 0..m {
                for j in 0..n {
                    rows[j * m + i] = dy[i * n + j];
                }
            }
            let layouts = [(ALayout::DepthMajor, &dy), (ALayout::RowMajor, &rows)];
            for isa in Isa::available_among(&I8_GRAD_PATHS) {
                for (layout, a) in layouts {
                    let mut got = start.clone();
                    pool(threads)
                        .install(|| product_i8_with(isa, layout, a, m, n, &x, &s, k, &mut got, accumulate))
                        .expect("int8");
                    let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    prop_assert!(same, "{:?} {:?} differs from the scalar twin", isa, layout);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        /// The AVX-512 packer of `X_q + 128` writes the scalar twin's lanes, for ragged token
        /// counts (not a multiple of 4 or 32) and ragged last panels.
        fn packed_x_matches_the_scalar_twin(
            (m, k, x) in (1usize..80, 1usize..100)
                .prop_flat_map(|(m, k)| (Just(m), Just(k), prop::collection::vec(any::<i8>(), m * k))),
        ) {
            let quads = m.div_ceil(BLOCK) * QUADS;
            let len = k.div_ceil(NR) * quads * NR;
            let mut want = vec![0u32; len];
            for (panel, dst) in want.chunks_exact_mut(quads * NR).enumerate() {
                pack_b_panel(&x, m, k, panel * NR, dst);
            }
            for isa in Isa::available_among(&I8_GRAD_PATHS) {
                let mut got = vec![7u32; len];
                pack_b(isa, &x, m, k, &mut got);
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
            // Spot-check the definition: lane (panel, quad, column) holds tokens 4q..4q+4.
            let at = |i: usize, l: usize| {
                let (panel, c) = (l / NR, l % NR);
                let lane = want[panel * quads * NR + (i / 4) * NR + c];
                (lane >> (8 * (i % 4))) as u8
            };
            for i in 0..m {
                for l in 0..k {
                    prop_assert_eq!(at(i, l), (x[i * k + l] as u8) ^ 0x80);
                }
            }
        }
    }

    /// Output rows past one call of the AVX-512 packer (several row chunks per token block, a
    /// ragged last tile) give the scalar twin's bits.
    #[test]
    fn wide_outputs_pack_in_chunks_alike() {
        let (m, n, k) = (70usize, PACK_ROWS_AVX512 + 61, 7usize);
        let dy = crate::testutil::pseudo_random(m * n, 8, 1.0);
        let x: Vec<i8> = (0..m * k).map(|i| (i * 7 % 255) as i8).collect();
        let s: Vec<f32> = (0..m).map(|i| 0.5 + i as f32).collect();
        let mut want = vec![0.0; n * k];
        grad_weight_i8_with(Isa::Scalar, &dy, m, n, &x, &s, k, &mut want, false).expect("scalar");
        for isa in Isa::available_among(&I8_GRAD_PATHS) {
            for threads in [1, 2] {
                let mut got = vec![f32::NAN; n * k];
                pool(threads)
                    .install(|| grad_weight_i8_with(isa, &dy, m, n, &x, &s, k, &mut got, false))
                    .expect("int8");
                assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?}");
            }
        }
    }

    /// A NaN in the output gradient reaches its row of `dW` on every path (the block's scale is
    /// NaN), with the same bits as the scalar twin, and the other rows stay finite.
    #[test]
    fn a_nan_gradient_reaches_its_row_on_every_path() {
        let (m, n, k) = (70usize, 20usize, 9usize);
        let mut dy = crate::testutil::pseudo_random(m * n, 5, 1.0);
        dy[40 * n + 7] = f32::NAN;
        let x: Vec<i8> = (0..m * k).map(|i| (i % 255) as i8).collect();
        let s: Vec<f32> = (0..m).map(|i| 1.0 + i as f32).collect();
        let mut want = vec![0.0; n * k];
        grad_weight_i8_with(Isa::Scalar, &dy, m, n, &x, &s, k, &mut want, false).expect("scalar");
        for j in 0..n {
            let row = &want[j * k..(j + 1) * k];
            if j == 7 {
                assert!(row.iter().all(|v| v.is_nan()), "row {j}: {row:?}");
            } else {
                assert!(row.iter().all(|v| v.is_finite()), "row {j}: {row:?}");
            }
        }
        for isa in Isa::available_among(&I8_GRAD_PATHS) {
            let mut got = vec![0.0; n * k];
            grad_weight_i8_with(isa, &dy, m, n, &x, &s, k, &mut got, false).expect("int8");
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?}");
        }
    }

    /// On a training-shaped product (1024 tokens, per-token gradient magnitudes spread over a
    /// factor 10), the int8 and bf16 weight gradients differ by under 1% of the gradient's norm.
    #[test]
    fn agrees_with_the_bf16_gradient() {
        let (m, n, k) = (1024usize, 24usize, 40usize);
        let spread = crate::testutil::pseudo_random(m, 3, 1.0);
        let dy: Vec<f32> = crate::testutil::pseudo_random(m * n, 1, 1.0)
            .iter()
            .enumerate()
            .map(|(i, v)| v * 10f32.powf(0.5 * (spread[i / n] - 1.0)))
            .collect();
        let x: Vec<i8> = crate::testutil::pseudo_random(m * k, 2, 127.0)
            .iter()
            .map(|v| v.round() as i8)
            .collect();
        let s: Vec<f32> = (0..m).map(|i| 1.0 + (i % 17) as f32).collect();
        let mut a = vec![0.0; n * k];
        let mut b = vec![0.0; n * k];
        grad_weight_i8(&dy, m, n, &x, &s, k, &mut a, false).expect("int8");
        super::super::bf16::grad_weight_bf16(&dy, m, n, &x, &s, k, &mut b, false).expect("bf16");
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let diff: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p - q).collect();
        let rel = norm(&diff) / norm(&b);
        eprintln!("int8 vs bf16 weight gradient: relative difference {rel:.2e}");
        assert!(rel < 1e-2, "relative difference {rel}");
    }
}
