//! A general matrix product with bf16 products and fp32 accumulation (`vdpbf16ps`), for the
//! mixed-precision LM head: `C[j][l] (+)= sum_i A(i, j) * B(i, l)` with `A` and `B` strided
//! views (`B` fp32, `A` fp32 or already bf16), so one routine covers `x . W^T`, `dY . W` and
//! `dY^T . x` without copies.
//!
//! Both operands are rounded to bf16 (round to nearest even, relative error at most 2^-8 each)
//! and the products are summed in fp32 with the micro-kernel of [`super::bf16`] (the same
//! 6 x 64 `vdpbf16ps` tile and the same scalar twin). Precision (what the tests hold): each
//! element is within `(2^-7 + 2^-16 + depth * 2^-23) * sum_i |A(i, j)| * |B(i, l)|` of the
//! exact sum, and the AVX-512 BF16 path agrees with the scalar one within
//! `depth * 2^-23` of the same sum.
//!
//! Work is split over rows of `C` on the current rayon pool and blocked along the depth by
//! [`super::bf16_tiles`]; `B` is packed once per call (in parallel over 64-column panels) into
//! a reused thread-local buffer, `A` one block at a time.

use super::bf16::{BF16_PATHS, NR, f32_to_bf16};
use super::bf16_tiles::{Bf16Lane, pack_a_depth_rows_unscaled, pack_a_lanes, pair, run_blocked};
use super::{GemmError, Isa, check_isa, check_len, checked_area};
use rayon::prelude::*;
use std::cell::RefCell;

/// A strided operand of `depth x width` elements: element `(i, j)` is
/// `data[i * depth_stride + j * width_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct Strided<'a, T> {
    /// The backing elements.
    pub data: &'a [T],
    /// Distance between consecutive elements along the summed (depth) index `i`.
    pub depth_stride: usize,
    /// Distance between consecutive elements along the output index.
    pub width_stride: usize,
}

/// An fp32 operand (rounded to bf16 as it is packed).
pub type StridedF32<'a> = Strided<'a, f32>;

/// An operand already rounded to bf16, as bit patterns (the LM head's output gradient,
/// converted once while the cross-entropy writes it). Packing it only moves 16-bit lanes: no
/// conversion, and half the bytes of the fp32 operand to read.
pub type StridedBf16<'a> = Strided<'a, u16>;

impl<'a, T> Strided<'a, T> {
    /// Row-major `rows x cols` matrix whose rows run along the depth index.
    pub fn depth_major(data: &'a [T], cols: usize) -> Self {
        Self { data, depth_stride: cols, width_stride: 1 }
    }

    /// Row-major `rows x cols` matrix whose columns run along the depth index (its transpose
    /// is the operand).
    pub fn width_major(data: &'a [T], cols: usize) -> Self {
        Self { data, depth_stride: 1, width_stride: cols }
    }

    fn check(&self, what: &'static str, depth: usize, width: usize) -> Result<(), GemmError> {
        if depth == 0 || width == 0 {
            return Ok(());
        }
        let last = checked_area(what, depth - 1, self.depth_stride)?
            .checked_add(checked_area(what, width - 1, self.width_stride)?)
            .ok_or_else(|| GemmError::TooLarge(format!("{what}: strides")))?;
        if last >= self.data.len() {
            return Err(GemmError::Shape(format!(
                "{what}: {depth} x {width} with strides ({}, {}) needs {} elements, got {}",
                self.depth_stride,
                self.width_stride,
                last + 1,
                self.data.len()
            )));
        }
        Ok(())
    }
}

impl<T: Bf16Lane> Strided<'_, T> {
    /// The bf16 of element `(i, j)`.
    #[inline(always)]
    fn bf16(&self, i: usize, j: usize) -> u16 {
        self.data[i * self.depth_stride + j * self.width_stride].bf16()
    }
}

thread_local! {
    /// `B` packed as bf16 pairs, panel-major `[panel][pair][64]`.
    static B_PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `c[j][l] (+)= sum_i a(i, j) * b(i, l)` for the row-major `rows x cols` output `c`, `a`
/// of `depth x rows` and `b` of `depth x cols`, with bf16 products and fp32 sums. `a` is fp32
/// ([`StridedF32`]) or already bf16 ([`StridedBf16`]): a bf16 operand reaches the micro-kernel
/// as the same lanes as its fp32 values would, so both give bit-identical results. Best path
/// of this CPU.
pub fn gemm_bf16<A: LeftOperand>(
    c: &mut [f32],
    dims: (usize, usize, usize),
    a: A,
    b: StridedF32<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    gemm_bf16_with(Isa::best_among(&BF16_PATHS), c, dims, a, b, accumulate)
}

/// [`gemm_bf16`] on the given path.
pub fn gemm_bf16_with<A: LeftOperand>(
    isa: Isa,
    c: &mut [f32],
    (rows, cols, depth): (usize, usize, usize),
    a: A,
    b: StridedF32<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    check_isa("gemm_bf16", isa, &BF16_PATHS)?;
    check_len("output", checked_area("output", rows, cols)?, c.len())?;
    a.check_left(depth, rows)?;
    b.check("right operand", depth, cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    if depth == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return Ok(());
    }
    let pairs = depth.div_ceil(2);
    let panels = cols.div_ceil(NR);
    let b_len = checked_area("bf16 pack", checked_area("bf16 pack", panels, pairs)?, NR)?;
    // Taken out of the thread-local so tasks running on this thread never see it borrowed.
    let mut bp = B_PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    bp.clear();
    bp.resize(b_len, 0);
    pack_b(isa, b, depth, cols, &mut bp);
    run_blocked(isa, c, (rows, cols, pairs), &bp, accumulate, 4, |j0, rn, p0, pc, dst| {
        a.pack_block(isa, depth, j0, (rn, p0, pc), dst)
    });
    B_PACK.with(|p| *p.borrow_mut() = bp);
    Ok(())
}

/// The left operand of [`gemm_bf16`]: [`StridedF32`] or [`StridedBf16`] (sealed: its one
/// implementation is bounded by a trait outside this crate's public API).
pub trait LeftOperand: Copy + Sync {
    /// Checks that the operand holds `depth x rows` elements.
    #[doc(hidden)]
    fn check_left(&self, depth: usize, rows: usize) -> Result<(), GemmError>;
    /// Packs the `A` block of output rows `j0 .. j0 + rn` and pairs `p0 .. p0 + pc` in the
    /// micro-kernel's `[tile][pair][MR]` lanes.
    #[doc(hidden)]
    fn pack_block(
        &self,
        isa: Isa,
        depth: usize,
        j0: usize,
        block: (usize, usize, usize),
        dst: &mut [u32],
    );
}

impl<T: Bf16Lane> LeftOperand for Strided<'_, T> {
    fn check_left(&self, depth: usize, rows: usize) -> Result<(), GemmError> {
        self.check("left operand", depth, rows)
    }

    fn pack_block(
        &self,
        isa: Isa,
        depth: usize,
        j0: usize,
        (rn, p0, pc): (usize, usize, usize),
        dst: &mut [u32],
    ) {
        let (ds, ws) = (self.depth_stride, self.width_stride);
        let dims = (rn, p0, pc, depth);
        let data = self.data;
        if ds == 1 {
            // Each output row is contiguous along the depth: adjacent values are the pairs.
            T::pack_output_rows(isa, dst, dims, |r| &data[(j0 + r) * ws..(j0 + r) * ws + depth]);
        } else if ws == 1 {
            // Depth rows contiguous along the output rows: two rows interleaved per pair.
            pack_a_depth_rows_unscaled(dst, dims, |i| &data[i * ds + j0..i * ds + j0 + rn]);
        } else {
            pack_a_lanes(dst, dims, |i, r| self.bf16(i, j0 + r));
        }
    }
}

/// Packs `b` (`depth x cols`) into bf16 pairs along the depth, one 64-column panel per task;
/// on the AVX-512 BF16 and AVX2 paths compiled for those (the same scalar operations, so the same lanes;
/// the baseline x86-64 build only gets 4-lane SSE vectors for the conversion).
fn pack_b(isa: Isa, b: StridedF32<'_>, depth: usize, cols: usize, dst: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn panel_avx512(
        b: StridedF32<'_>,
        depth: usize,
        cols: usize,
        panel: usize,
        dst: &mut [u32],
    ) {
        pack_b_panel(b, depth, cols, panel, dst)
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn panel_avx2(
        b: StridedF32<'_>,
        depth: usize,
        cols: usize,
        panel: usize,
        dst: &mut [u32],
    ) {
        pack_b_panel(b, depth, cols, panel, dst)
    }
    let pairs = depth.div_ceil(2);
    dst.par_chunks_mut(pairs * NR).enumerate().for_each(|(panel, dst)| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX-512 BF16 with F/BW/VL (the AMX path implies it).
        Isa::Avx512Bf16 | Isa::Avx512Amx => unsafe { panel_avx512(b, depth, cols, panel, dst) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX2 and FMA.
        Isa::Avx2 => unsafe { panel_avx2(b, depth, cols, panel, dst) },
        _ => pack_b_panel(b, depth, cols, panel, dst),
    });
}

/// One 64-column panel of [`pack_b`].
#[inline(always)]
fn pack_b_panel(b: StridedF32<'_>, depth: usize, cols: usize, panel: usize, dst: &mut [u32]) {
    let pairs = depth.div_ceil(2);
    let l0 = panel * NR;
    let width = (cols - l0).min(NR);
    let lane = |i: usize, l: usize| if i < depth { b.bf16(i, l) } else { 0 };
    if b.depth_stride == 1 {
        // Depth runs along memory (the LM head's weights in its forward): convert each
        // column's whole depth in one vectorizable pass, then scatter its pairs down the
        // panel.
        let ws = b.width_stride;
        let mut half = vec![0u16; 2 * pairs];
        for c in 0..width {
            let col = &b.data[(l0 + c) * ws..(l0 + c) * ws + depth];
            for (h, &v) in half.iter_mut().zip(col) {
                *h = f32_to_bf16(v);
            }
            for (p, v) in half.chunks_exact(2).enumerate() {
                dst[p * NR + c] = pair(v[0], v[1]);
            }
        }
    } else if b.width_stride == 1 {
        // Depth rows contiguous (the LM head's weights and inputs): two rows at a time, a
        // loop the compiler vectorizes.
        let ds = b.depth_stride;
        let row = |i: usize| &b.data[i * ds + l0..i * ds + l0 + width];
        for (p, out) in dst.chunks_exact_mut(NR).enumerate() {
            let out = &mut out[..width];
            if 2 * p + 1 < depth {
                for ((d, &e), &o) in out.iter_mut().zip(row(2 * p)).zip(row(2 * p + 1)) {
                    *d = pair(f32_to_bf16(e), f32_to_bf16(o));
                }
            } else {
                for (d, &e) in out.iter_mut().zip(row(2 * p)) {
                    *d = pair(f32_to_bf16(e), 0);
                }
            }
        }
    } else {
        for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
            for (c, d) in row[..width].iter_mut().enumerate() {
                *d = pair(lane(2 * p, l0 + c), lane(2 * p + 1, l0 + c));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16::bf16_to_f32;
    use super::super::bf16_tiles::{KC, MC};
    use super::*;
    use crate::testutil::pool;
    use proptest::prelude::*;

    #[test]
    fn shape_errors() {
        let a = [0.0f32; 6];
        let mut c = vec![0.0; 4];
        fn v(d: &[f32], cols: usize) -> StridedF32<'_> {
            StridedF32::depth_major(d, cols)
        }
        assert!(gemm_bf16(&mut c, (2, 2, 3), v(&a, 2), v(&a, 2), false).is_ok());
        assert!(gemm_bf16(&mut c, (2, 2, 4), v(&a, 2), v(&a, 2), false).is_err());
        assert!(gemm_bf16(&mut c[..3], (2, 2, 3), v(&a, 2), v(&a, 2), false).is_err());
        let t = StridedF32::width_major(&a, 3);
        assert!(gemm_bf16(&mut c, (2, 2, 3), t, t, false).is_ok());
        assert!(gemm_bf16(&mut c, (2, 2, 4), t, t, false).is_err());
    }

    /// The three layouts of the LM head (`x . W^T`, `dY . W`, `dY^T . x`), random shapes.
    fn case() -> impl Strategy<Value = (usize, usize, usize, u8, Vec<f32>, Vec<f32>)> {
        // Small shapes, and shapes past one depth block (KC pairs) and one row block (MC rows).
        let small = (1usize..20, 1usize..140, 1usize..40);
        let blocked = (MC - 5..MC + 20, 1usize..24, 2 * KC - 3..3 * KC + 9);
        // Whole and ragged 32 x 32 blocks of the AMX path, depths across its 16-pair chunks.
        let tiles = (30usize..100, 30usize..140, 20usize..200);
        (prop_oneof![3 => small, 1 => blocked, 1 => tiles], 0u8..4).prop_flat_map(
            |((rows, cols, depth), lay)| {
                (
                    Just(rows),
                    Just(cols),
                    Just(depth),
                    Just(lay),
                    prop::collection::vec(-3.0f32..3.0, rows * depth),
                    prop::collection::vec(-3.0f32..3.0, cols * depth),
                )
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// An operand given in bf16 reaches the micro-kernel as the same lanes as its fp32
        /// values do: results equal bit for bit, on every path, both layouts.
        #[test]
        fn bf16_left_operand_is_bit_identical_to_its_fp32_values(
            (rows, cols, depth, lay, ad, bd) in case(),
            threads in 1usize..3,
        ) {
            let a16: Vec<u16> = ad.iter().map(|&v| f32_to_bf16(v)).collect();
            let widened: Vec<f32> = a16.iter().map(|&h| bf16_to_f32(h)).collect();
            let (a, a_16) = if lay & 1 == 0 {
                (StridedF32::depth_major(&widened, rows), StridedBf16::depth_major(&a16, rows))
            } else {
                (StridedF32::width_major(&widened, depth), StridedBf16::width_major(&a16, depth))
            };
            let b = if lay & 2 == 0 {
                StridedF32::depth_major(&bd, cols)
            } else {
                StridedF32::width_major(&bd, depth)
            };
            for isa in Isa::available_among(&BF16_PATHS) {
                let mut want = vec![0.5f32; rows * cols];
                let mut got = want.clone();
                let run = |c: &mut [f32], sixteen: bool| {
                    pool(threads).install(|| {
                        if sixteen {
                            gemm_bf16_with(isa, c, (rows, cols, depth), a_16, b, true)
                        } else {
                            gemm_bf16_with(isa, c, (rows, cols, depth), a, b, true)
                        }
                    })
                };
                run(&mut want, false).expect("fp32 operand");
                run(&mut got, true).expect("bf16 operand");
                let same = want.iter().zip(&got).all(|(x, y)| x.to_bits() == y.to_bits());
                prop_assert!(same, "{:?}: bf16 operand differs", isa);
            }
        }
    }

    #[test]
    fn bf16_operand_shape_errors() {
        let a = [0u16; 6];
        let b = [0.0f32; 6];
        let mut c = vec![0.0; 4];
        let (a2, b2) = (StridedBf16::depth_major(&a, 2), StridedF32::depth_major(&b, 2));
        assert!(gemm_bf16(&mut c, (2, 2, 3), a2, b2, false).is_ok());
        let err = gemm_bf16(&mut c, (2, 2, 4), a2, b2, false).expect_err("too deep");
        assert!(err.to_string().contains("left operand"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn paths_agree_and_stay_within_the_bound(
            (rows, cols, depth, lay, ad, bd) in case(),
            threads in 1usize..4,
            accumulate in any::<bool>(),
        ) {
            // Bit 0: `a` stored depth-major (else transposed); bit 1: the same for `b`.
            let a = if lay & 1 == 0 {
                StridedF32::depth_major(&ad, rows)
            } else {
                StridedF32::width_major(&ad, depth)
            };
            let b = if lay & 2 == 0 {
                StridedF32::depth_major(&bd, cols)
            } else {
                StridedF32::width_major(&bd, depth)
            };
            let at = |i: usize, j: usize| f64::from(a.data[i * a.depth_stride + j * a.width_stride]);
            let bt = |i: usize, l: usize| f64::from(b.data[i * b.depth_stride + l * b.width_stride]);
            let mut exact = vec![0.0f64; rows * cols];
            let mut mag = vec![0.0f64; rows * cols];
            for j in 0..rows {
                for l in 0..cols {
                    for i in 0..depth {
                        exact[j * cols + l] += at(i, j) * bt(i, l);
                        mag[j * cols + l] += (at(i, j) * bt(i, l)).abs();
                    }
                }
            }
            let start: Vec<f32> =
                (0..rows * cols).map(|i| if accumulate { i as f32 * 0.25 } else { f32::NAN }).collect();
            let mut want = start.clone();
            gemm_bf16_with(Isa::Scalar, &mut want, (rows, cols, depth), a, b, accumulate)
                .expect("scalar");
            let fp32 = depth as f64 * 2f64.powi(-23);
            for i in 0..rows * cols {
                let base = if accumulate { f64::from(start[i]) } else { 0.0 };
                let err = (f64::from(want[i]) - base - exact[i]).abs();
                let bound = (2f64.powi(-7) + 2f64.powi(-16) + fp32) * mag[i] + 1e-6 * base.abs() + 1e-30;
                prop_assert!(!want[i].is_nan());
                prop_assert!(err <= bound, "scalar at {}: err {} > {}", i, err, bound);
            }
            for isa in Isa::available_among(&BF16_PATHS) {
                let mut got = start.clone();
                pool(threads)
                    .install(|| gemm_bf16_with(isa, &mut got, (rows, cols, depth), a, b, accumulate))
                    .expect("bf16");
                for i in 0..rows * cols {
                    let diff = (f64::from(got[i]) - f64::from(want[i])).abs();
                    let base = if accumulate { f64::from(start[i]).abs() } else { 0.0 };
                    let bound = fp32 * mag[i] + 1e-6 * base + 1e-30;
                    prop_assert!(diff <= bound, "{:?} at {}: {} vs {}", isa, i, got[i], want[i]);
                }
            }
        }
    }
}
