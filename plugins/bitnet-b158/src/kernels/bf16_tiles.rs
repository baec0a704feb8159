//! The blocked driver of the bf16 micro-kernel, shared by the BitLinear weight gradient
//! ([`super::bf16`]) and the strided product of the LM head ([`super::bf16_gemm`]).
//!
//! `C[j][l] (+)= sum_p A[j][p] . B[p][l]` over depth pairs `p` (each lane two bf16, one
//! `vdpbf16ps` step), GotoBLAS style: `B` comes packed once per call as 64-column panels
//! (`[panel][pair][64]`); each task owns a band of output rows and walks it in blocks of at most
//! [`MC`] rows by [`KC`] pairs, packing that `A` block (`[tile][pair][6]`, the layout the
//! micro-kernel streams) right before using it. The `KC x 64` slice of a `B` panel (24 KiB) is
//! then reused from L1 by every 6-row tile of the block, and the `A` block (at most 144 KiB)
//! from L2, where a full-depth panel (up to 660 KiB for the LM head) used to be streamed from L2
//! or beyond for every tile.
//!
//! Depth blocks after the first add into `C`: on every path the sum is the fp32 sum of the
//! blocks' fp32 partial sums, so the scalar twin (which runs through this same driver) still
//! matches the AVX-512 BF16 path, and the rounding bound (`depth * 2^-23` of the magnitude
//! sum) is unchanged.

use super::bf16::{Bf16Tile, MR, NR, f32_to_bf16, micro_kernel};
use super::{Isa, for_each_row_band};
use std::cell::RefCell;

/// Depth pairs per block: a `KC x 64` slice of a `B` panel is `256 * KC` bytes (24 KiB), which
/// stays in the 32 KiB L1 next to the streamed `A` tile. Measured on Zen 4 (LM head and BitLinear
/// `dW` shapes, `kernel -- bf16-summary`), see ROOFLINE.md.
pub(crate) const KC: usize = 96;
/// Output rows per block (a multiple of [`MR`]): the packed `A` block is `MC x KC` lanes
/// (144 KiB), kept in L2 while every panel of `B` passes over it.
pub(crate) const MC: usize = 384;

/// A task's reused buffers.
#[derive(Default)]
struct Scratch {
    /// The packed `A` block, `[tile][pair][MR]`.
    a: Vec<u32>,
    /// The AVX2 path's `A` block widened to fp32, `[tile][pair][hi MR, lo MR]`.
    a_wide: Vec<f32>,
    /// The AVX2 path's `B` block widened to fp32, `[pair][hi 64, lo 64]`.
    b_wide: Vec<f32>,
}

thread_local! {
    /// The running task's buffers.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Index of lane `(r, p)` of an `A` block packed `[tile][pair][MR]` with `pc` pairs.
#[inline(always)]
pub(crate) fn a_lane(r: usize, p: usize, pc: usize) -> usize {
    (r / MR) * pc * MR + p * MR + r % MR
}

/// An element the packers round to bf16: an fp32 value (to nearest even) or the bit pattern of
/// a value already in bf16 (as it is). Public only inside this private module: the bound of
/// [`super::bf16_gemm::LeftOperand`]'s one implementation, which it seals.
pub trait Bf16Lane: Copy + Sync {
    /// The bf16 bit pattern of this element.
    fn bf16(self) -> u16;

    /// [`pack_a_output_rows`] on the path `isa` (the same lanes on every path).
    #[inline(always)]
    fn pack_output_rows<'a>(
        _isa: Isa,
        dst: &mut [u32],
        dims: (usize, usize, usize, usize),
        row: impl Fn(usize) -> &'a [Self],
    ) where
        Self: 'a,
    {
        pack_a_output_rows(dst, dims, row)
    }
}

impl Bf16Lane for f32 {
    #[inline(always)]
    fn bf16(self) -> u16 {
        f32_to_bf16(self)
    }

    #[inline(always)]
    fn pack_output_rows<'a>(
        isa: Isa,
        dst: &mut [u32],
        dims: (usize, usize, usize, usize),
        row: impl Fn(usize) -> &'a [Self],
    ) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the driver only runs a path check_isa accepted (AVX-512 BF16 with F/BW/VL);
            // `dst` holds the block's `rn.div_ceil(MR) * pc * MR` lanes.
            Isa::Avx512Bf16 | Isa::Avx512Amx => unsafe {
                super::x86_bf16::pack_a_output_rows_f32(dst, dims, row)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the driver only runs a path check_isa accepted (AVX2 and FMA).
            Isa::Avx2 => unsafe { pack_a_output_rows_avx2(dst, dims, row) },
            _ => pack_a_output_rows(dst, dims, row),
        }
    }
}

/// [`pack_a_output_rows`] of fp32 compiled for AVX2 (the same operations per element, so the
/// same lanes; the baseline x86-64 build only gets 4-lane SSE vectors for the conversion).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_a_output_rows_avx2<'a>(
    dst: &mut [u32],
    dims: (usize, usize, usize, usize),
    row: impl Fn(usize) -> &'a [f32],
) {
    pack_a_output_rows(dst, dims, row)
}

impl Bf16Lane for u16 {
    #[inline(always)]
    fn bf16(self) -> u16 {
        self
    }
}

/// Two bf16 as one 32-bit lane: `lo` (the even depth index) in the low half.
#[inline(always)]
pub(crate) fn pair(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Runs the product over the row-major `rows x cols` output `c`, with `b` packed as
/// `[panel][pair][64]` (`pairs` pairs per panel). `pack_a(j0, rn, p0, pc, dst)` fills `dst`
/// (`rn.div_ceil(MR) * pc * MR` lanes) with output rows `j0 .. j0 + rn`, pairs `p0 .. p0 + pc`,
/// at [`a_lane`] positions. Rows are split into `tasks_per_thread` tasks per thread of the
/// current rayon pool.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_blocked(
    isa: Isa,
    c: &mut [f32],
    (rows, cols, pairs): (usize, usize, usize),
    b: &[u32],
    accumulate: bool,
    tasks_per_thread: usize,
    pack_a: impl Fn(usize, usize, usize, usize, &mut [u32]) + Sync,
) {
    debug_assert_eq!(c.len(), rows * cols);
    debug_assert_eq!(b.len(), cols.div_ceil(NR) * pairs * NR);
    if rows == 0 || cols == 0 || pairs == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Amx {
        let dims = (rows, cols, pairs);
        return super::x86_amx::run_blocked_amx(c, dims, b, accumulate, tasks_per_thread, pack_a);
    }
    let panels = cols.div_ceil(NR);
    // The AVX2 path multiplies fp32 operands: each block widened once (see x86_avx2_bf16.rs).
    let wide = cfg!(target_arch = "x86_64") && isa == Isa::Avx2;
    let task = |out: &mut [f32], j0: usize| {
        let rn = out.len() / cols;
        SCRATCH.with(|cell| {
            let s = &mut *cell.borrow_mut();
            s.a.resize(MC * KC, 0);
            if wide {
                s.a_wide.resize(2 * MC * KC, 0.0);
                s.b_wide.resize(2 * KC * NR, 0.0);
            }
            for m0 in (0..rn).step_by(MC) {
                let mn = (rn - m0).min(MC);
                let tiles = mn.div_ceil(MR);
                for p0 in (0..pairs).step_by(KC) {
                    let pc = (pairs - p0).min(KC);
                    let ablock = &mut s.a[..tiles * pc * MR];
                    pack_a(j0 + m0, mn, p0, pc, ablock);
                    if wide {
                        widen_a(ablock, &mut s.a_wide[..2 * ablock.len()]);
                    }
                    for panel in 0..panels {
                        let start = panel * pairs * NR + p0 * NR;
                        let bblock = &b[start..start + pc * NR];
                        let l0 = panel * NR;
                        let width = (cols - l0).min(NR);
                        if wide {
                            widen_b(bblock, &mut s.b_wide[..2 * bblock.len()]);
                        }
                        for tile in 0..tiles {
                            let r = m0 + tile * MR;
                            let take = (mn - tile * MR).min(MR);
                            let out = &mut out[r * cols..(r + take) * cols];
                            let accumulate = accumulate || p0 > 0;
                            let (k, rows, pairs) = (cols, take, pc);
                            // One tile over `a` and `b`, whose lanes are bf16 pairs or, widened,
                            // fp32 (two element types, so a macro rather than a closure).
                            macro_rules! bf16_tile {
                                ($a:expr, $b:expr) => {
                                    Bf16Tile {
                                        a: $a,
                                        b: $b,
                                        pairs,
                                        rows,
                                        out,
                                        k,
                                        l0,
                                        cols: width,
                                        accumulate,
                                    }
                                };
                            }
                            if wide {
                                let a = &s.a_wide[tile * pc * 2 * MR..(tile + 1) * pc * 2 * MR];
                                wide_kernel(bf16_tile!(a, &s.b_wide[..2 * pc * NR]));
                                continue;
                            }
                            let a = &ablock[tile * pc * MR..(tile + 1) * pc * MR];
                            micro_kernel(isa, bf16_tile!(a, bblock));
                        }
                    }
                }
            }
        });
    };
    for_each_row_band(c, cols, MR, tasks_per_thread, task);
}

/// Widens an `A` block for the AVX2 path (elsewhere never called).
#[inline(always)]
fn widen_a(a: &[u32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    super::x86_avx2_bf16::widen_a(a, dst);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (a, dst);
}

/// Widens a `B` block for the AVX2 path (elsewhere never called).
#[inline(always)]
fn widen_b(b: &[u32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only the AVX2 path widens, and check_isa verified AVX2 and FMA for it.
    unsafe {
        super::x86_avx2_bf16::widen_b(b, dst)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (b, dst);
}

/// The AVX2 micro-kernel on a tile of widened operands (only the AVX2 path calls it).
#[inline(always)]
fn wide_kernel(t: Bf16Tile<'_, f32>) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only the AVX2 path (AVX2 and FMA verified by check_isa) gets here; the driver
    // passes at most KC pairs and MR rows, `a` and `b` hold the widened block's lanes, and
    // `out` the tile's rows.
    unsafe {
        super::x86_avx2_bf16::kernel_bf16_avx2(t)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = t;
}

/// Packs an `A` block from an operand whose depth rows run along the output rows:
/// `A(i, j0 + r) = row(i).0[r] * row(i).1` (`row(i).0` holds the block's `rn` values of depth
/// row `i`; the factor is applied in fp32 before rounding). Each pair reads two contiguous
/// rows, converts them in one vectorizable pass, then copies 6-lane runs into the tiles.
pub(crate) fn pack_a_depth_rows<'a>(
    dst: &mut [u32],
    (rn, p0, pc, depth): (usize, usize, usize, usize),
    row: impl Fn(usize) -> (&'a [f32], f32),
) {
    let mut buf = [0u32; MC];
    for p in 0..pc {
        let i = 2 * (p0 + p);
        let (even, fe) = row(i);
        let lanes = &mut buf[..rn];
        if i + 1 < depth {
            let (odd, fo) = row(i + 1);
            for ((d, &e), &o) in lanes.iter_mut().zip(&even[..rn]).zip(&odd[..rn]) {
                *d = pair(f32_to_bf16(e * fe), f32_to_bf16(o * fo));
            }
        } else {
            for (d, &e) in lanes.iter_mut().zip(&even[..rn]) {
                *d = pair(f32_to_bf16(e * fe), 0);
            }
        }
        scatter_pair_lanes(dst, lanes, p, pc);
    }
}

/// [`pack_a_depth_rows`] without a factor, for fp32 or already-bf16 elements ([`Bf16Lane`]):
/// `row(i)` holds the block's `rn` values of depth row `i`.
pub(crate) fn pack_a_depth_rows_unscaled<'a, T: Bf16Lane + 'a>(
    dst: &mut [u32],
    (rn, p0, pc, depth): (usize, usize, usize, usize),
    row: impl Fn(usize) -> &'a [T],
) {
    let mut buf = [0u32; MC];
    for p in 0..pc {
        let i = 2 * (p0 + p);
        let even = &row(i)[..rn];
        let lanes = &mut buf[..rn];
        if i + 1 < depth {
            for ((d, &e), &o) in lanes.iter_mut().zip(even).zip(&row(i + 1)[..rn]) {
                *d = pair(e.bf16(), o.bf16());
            }
        } else {
            for (d, &e) in lanes.iter_mut().zip(even) {
                *d = pair(e.bf16(), 0);
            }
        }
        scatter_pair_lanes(dst, lanes, p, pc);
    }
}

/// Copies pair `p` of a block's rows (`lanes[r]` for row `r`) to their tile positions.
#[inline(always)]
fn scatter_pair_lanes(dst: &mut [u32], lanes: &[u32], p: usize, pc: usize) {
    // Whole tiles as fixed 6-lane copies (a call to `memmove` per run was 2.5% of a step),
    // then the ragged last tile.
    let rn = lanes.len();
    let full = rn / MR;
    for t in 0..full {
        let at = t * pc * MR + p * MR;
        dst[at..at + MR].copy_from_slice(&lanes[t * MR..t * MR + MR]);
    }
    for r in full * MR..rn {
        dst[a_lane(r, p, pc)] = lanes[r];
    }
}

/// Packs an `A` block from an operand whose output rows run along the depth:
/// `A(i, j0 + r) = row(r)[i]` (`row(r)` holds the whole depth of output row `j0 + r`), for fp32
/// or already-bf16 elements ([`Bf16Lane`]).
#[inline(always)]
pub(crate) fn pack_a_output_rows<'a, T: Bf16Lane + 'a>(
    dst: &mut [u32],
    (rn, p0, pc, depth): (usize, usize, usize, usize),
    row: impl Fn(usize) -> &'a [T],
) {
    let (i0, i1) = (2 * p0, (2 * (p0 + pc)).min(depth));
    let mut buf = [0u16; 2 * KC];
    for r in 0..rn {
        let src = &row(r)[i0..i1];
        // Convert the row in one vectorizable pass (a copy for bf16), then pair adjacent values.
        let half = &mut buf[..src.len()];
        for (h, &v) in half.iter_mut().zip(src) {
            *h = v.bf16();
        }
        let base = (r / MR) * pc * MR + r % MR;
        let mut two = half.chunks_exact(2);
        for (p, v) in two.by_ref().enumerate() {
            dst[base + p * MR] = pair(v[0], v[1]);
        }
        if let [last] = two.remainder() {
            dst[base + (pc - 1) * MR] = pair(*last, 0);
        }
    }
}

/// Packs an `A` block lane by lane from `lane(i, r)` (the bf16 of `A(i, j0 + r)`, only called
/// for `i < depth`): the fallback for operands strided both ways.
pub(crate) fn pack_a_lanes(
    dst: &mut [u32],
    (rn, p0, pc, depth): (usize, usize, usize, usize),
    lane: impl Fn(usize, usize) -> u16,
) {
    let get = |i: usize, r: usize| if i < depth { lane(i, r) } else { 0 };
    for r in 0..rn {
        for p in 0..pc {
            let i = 2 * (p0 + p);
            dst[a_lane(r, p, pc)] = pair(get(i, r), get(i + 1, r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packer writes exactly the lanes the elementwise definition gives, at the positions
    /// the micro-kernel reads, for ragged row counts and odd depths.
    #[test]
    fn packers_match_the_elementwise_definition() {
        for (depth, width, j0, rn, p0, pc) in [
            (67usize, 50usize, 3usize, 40usize, 0usize, 34usize),
            (67, 50, 3, 40, 10, 24),
            (64, 32, 0, 32, 16, 16),
            (5, 13, 1, 7, 1, 2),
            (200, 400, 0, MC, 96, 4),
        ] {
            let data: Vec<f32> =
                (0..depth * width).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let s: Vec<f32> = (0..depth).map(|i| 0.5 + i as f32 * 0.7).collect();
            let want_lane = |i: usize, r: usize, scaled: bool| {
                if i >= depth {
                    0
                } else if scaled {
                    f32_to_bf16(data[i * width + j0 + r] * s[i])
                } else {
                    f32_to_bf16(data[i * width + j0 + r])
                }
            };
            let len = rn.div_ceil(MR) * pc * MR;
            let mut want = vec![0u32; len];
            let mut want_plain = vec![0u32; len];
            for r in 0..rn {
                for p in 0..pc {
                    let i = 2 * (p0 + p);
                    want[a_lane(r, p, pc)] = pair(want_lane(i, r, true), want_lane(i + 1, r, true));
                    want_plain[a_lane(r, p, pc)] =
                        pair(want_lane(i, r, false), want_lane(i + 1, r, false));
                }
            }
            let dims = (rn, p0, pc, depth);
            let mut got = vec![0u32; len];
            pack_a_depth_rows(&mut got, dims, |i| {
                (&data[i * width + j0..i * width + j0 + rn], s[i])
            });
            assert_eq!(got, want, "depth rows {dims:?}");
            // The same operand transposed: output rows along the depth.
            let t: Vec<f32> =
                (0..width * depth).map(|x| data[(x % depth) * width + x / depth]).collect();
            let mut got = vec![0u32; len];
            pack_a_output_rows(&mut got, dims, |r| &t[(j0 + r) * depth..(j0 + r + 1) * depth]);
            assert_eq!(got, want_plain, "output rows {dims:?}");
            for isa in Isa::available_among(&super::super::bf16::BF16_PATHS) {
                let mut got = vec![0u32; len];
                f32::pack_output_rows(isa, &mut got, dims, |r| {
                    &t[(j0 + r) * depth..(j0 + r + 1) * depth]
                });
                assert_eq!(got, want_plain, "output rows on {isa:?}, {dims:?}");
            }
            let mut got = vec![0u32; len];
            pack_a_lanes(&mut got, dims, |i, r| f32_to_bf16(data[i * width + j0 + r]));
            assert_eq!(got, want_plain, "lanes {dims:?}");
            // The bf16 packers on the rounded operand, both layouts.
            let data16: Vec<u16> = data.iter().map(|&v| f32_to_bf16(v)).collect();
            let mut got = vec![0u32; len];
            pack_a_depth_rows_unscaled(&mut got, dims, |i| {
                &data16[i * width + j0..i * width + j0 + rn]
            });
            assert_eq!(got, want_plain, "bf16 depth rows {dims:?}");
            let t16: Vec<u16> = t.iter().map(|&v| f32_to_bf16(v)).collect();
            let mut got = vec![0u32; len];
            pack_a_output_rows(&mut got, dims, |r| &t16[(j0 + r) * depth..(j0 + r + 1) * depth]);
            assert_eq!(got, want_plain, "bf16 output rows {dims:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        /// Every path rounds any fp32 bit pattern (NaNs, infinities, denormals, ties) as
        /// `f32_to_bf16` does, at the lanes the micro-kernel reads.
        fn output_row_packs_round_every_bit_pattern_alike(
            bits in proptest::collection::vec(proptest::prelude::any::<u32>(), 7 * 37),
            special in proptest::collection::vec(0usize..7, 7 * 37),
        ) {
            let (rn, depth) = (7usize, 37usize);
            let table = [0x0000_0001u32, 0x8000_0003, 0x7F80_0000, 0xFF80_0001, 0x7FC0_0000, 0x3F80_8000, 0x3F81_8000];
            let data: Vec<f32> = bits
                .iter()
                .zip(&special)
                .enumerate()
                .map(|(i, (&b, &s))| f32::from_bits(if i % 3 == 0 { table[s] } else { b }))
                .collect();
            let dims = (rn, 0, depth.div_ceil(2), depth);
            let row = |r: usize| &data[r * depth..(r + 1) * depth];
            let len = rn.div_ceil(MR) * dims.2 * MR;
            let mut want = vec![0u32; len];
            pack_a_output_rows(&mut want, dims, row);
            for isa in Isa::available_among(&super::super::bf16::BF16_PATHS) {
                let mut got = vec![0u32; len];
                f32::pack_output_rows(isa, &mut got, dims, row);
                proptest::prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }
    }
}
