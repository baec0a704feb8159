//! A general fp32 matrix product with bf16 products and fp32 accumulation (`vdpbf16ps`), for the
//! mixed-precision LM head: `C[j][l] (+)= sum_i A(i, j) * B(i, l)` with `A` and `B` strided fp32
//! views, so one routine covers `x . W^T`, `dY . W` and `dY^T . x` without copies.
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
use super::bf16_tiles::{pack_a_depth_rows, pack_a_lanes, pack_a_output_rows, pair, run_blocked};
use super::{GemmError, Isa, check_isa, check_len, checked_area};
use rayon::prelude::*;
use std::cell::RefCell;

/// A strided fp32 operand of `depth x width` elements: element `(i, j)` is
/// `data[i * depth_stride + j * width_stride]`.
#[derive(Debug, Clone, Copy)]
pub struct StridedF32<'a> {
    /// The backing elements.
    pub data: &'a [f32],
    /// Distance between consecutive elements along the summed (depth) index `i`.
    pub depth_stride: usize,
    /// Distance between consecutive elements along the output index.
    pub width_stride: usize,
}

impl<'a> StridedF32<'a> {
    /// Row-major `rows x cols` matrix whose rows run along the depth index.
    pub fn depth_major(data: &'a [f32], cols: usize) -> Self {
        Self { data, depth_stride: cols, width_stride: 1 }
    }

    /// Row-major `rows x cols` matrix whose columns run along the depth index (its transpose
    /// is the operand).
    pub fn width_major(data: &'a [f32], cols: usize) -> Self {
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

    #[inline(always)]
    fn bf16(&self, i: usize, j: usize) -> u16 {
        f32_to_bf16(self.data[i * self.depth_stride + j * self.width_stride])
    }
}

thread_local! {
    /// `B` packed as bf16 pairs, panel-major `[panel][pair][64]`.
    static B_PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `c[j][l] (+)= sum_i a(i, j) * b(i, l)` for the row-major `rows x cols` output `c`, `a`
/// of `depth x rows` and `b` of `depth x cols`, with bf16 products and fp32 sums. Best path of
/// this CPU.
pub fn gemm_bf16(
    c: &mut [f32],
    (rows, cols, depth): (usize, usize, usize),
    a: StridedF32<'_>,
    b: StridedF32<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    gemm_bf16_with(Isa::best_among(&BF16_PATHS), c, (rows, cols, depth), a, b, accumulate)
}

/// [`gemm_bf16`] on the given path.
pub fn gemm_bf16_with(
    isa: Isa,
    c: &mut [f32],
    (rows, cols, depth): (usize, usize, usize),
    a: StridedF32<'_>,
    b: StridedF32<'_>,
    accumulate: bool,
) -> Result<(), GemmError> {
    check_isa("gemm_bf16", isa, &BF16_PATHS)?;
    check_len("output", checked_area("output", rows, cols)?, c.len())?;
    a.check("left operand", depth, rows)?;
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
    pack_b(b, depth, cols, &mut bp);
    run_blocked(isa, c, (rows, cols, pairs), &bp, accumulate, 4, |j0, rn, p0, pc, dst| {
        pack_a(a, depth, j0, (rn, p0, pc), dst)
    });
    B_PACK.with(|p| *p.borrow_mut() = bp);
    Ok(())
}

/// Packs `b` (`depth x cols`) into bf16 pairs along the depth, one 64-column panel per task.
fn pack_b(b: StridedF32<'_>, depth: usize, cols: usize, dst: &mut [u32]) {
    let pairs = depth.div_ceil(2);
    dst.par_chunks_mut(pairs * NR).enumerate().for_each(|(panel, dst)| {
        let l0 = panel * NR;
        let width = (cols - l0).min(NR);
        let lane = |i: usize, l: usize| if i < depth { b.bf16(i, l) } else { 0 };
        if b.depth_stride == 1 {
            // Depth runs along memory: walk each column down the depth.
            for c in 0..width {
                for p in 0..pairs {
                    dst[p * NR + c] = pair(lane(2 * p, l0 + c), lane(2 * p + 1, l0 + c));
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
    });
}

/// Packs the `A` block of output rows `j0 .. j0 + rn` and pairs `p0 .. p0 + pc` of `a`
/// (`depth x rows`) for [`run_blocked`].
fn pack_a(
    a: StridedF32<'_>,
    depth: usize,
    j0: usize,
    (rn, p0, pc): (usize, usize, usize),
    dst: &mut [u32],
) {
    let (ds, ws) = (a.depth_stride, a.width_stride);
    let dims = (rn, p0, pc, depth);
    if ds == 1 {
        // Each output row is contiguous along the depth: adjacent values are the pairs.
        pack_a_output_rows(dst, dims, |r| &a.data[(j0 + r) * ws..(j0 + r) * ws + depth]);
    } else if ws == 1 {
        // Depth rows contiguous along the output rows (scaling by 1 is exact).
        pack_a_depth_rows(dst, dims, |i| (&a.data[i * ds + j0..i * ds + j0 + rn], 1.0));
    } else {
        pack_a_lanes(dst, dims, |i, r| a.bf16(i, j0 + r));
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16_tiles::{KC, MC};
    use super::*;
    use proptest::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
    }

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
        (prop_oneof![3 => small, 1 => blocked], 0u8..4).prop_flat_map(
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
