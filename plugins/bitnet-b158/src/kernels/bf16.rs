//! The BitLinear weight gradient with bf16 products and fp32 accumulation:
//! `dW[j][l] = sum_i (dY[i][j] / s_i) * X_q[i][l]`.
//!
//! Under the straight-through estimator the weight gradient of `y = x_deq . W^T` is
//! `dY^T . x_deq` with `x_deq = X_q / s` (row scales `s` of the int8 activations). Folding `1 / s`
//! into `dY` keeps `X_q` exact in bf16 (integers up to 256 are), so the only rounding of the
//! inputs is `dY * (1 / s)` to bf16 (relative error at most 2^-8, after about 2^-23 from the
//! fp32 reciprocal and product), and the sums are fp32.
//!
//! Precision (what the tests hold): each element is within
//! `(2^-8 + m * 2^-23) * sum_i |dY[i][j] / s_i| * |X_q[i][l]|` of the exact sum, and the
//! AVX-512 BF16 path agrees with its scalar twin within `m * 2^-23` of the same sum. The scalar
//! twin follows Intel's definition of `vdpbf16ps` (odd product added first, then even, each
//! addition rounded to nearest even, denormal results flushed to zero); a CPU that fuses the two
//! additions differs from it by at most that bound. (On the Zen 4 development machine the two
//! paths were bit-identical.)
//!
//! Paths: [`Isa::Avx512Amx`] (`tdpbf16ps` on AMX tiles, 32 x 32 register blocks, see
//! `x86_amx.rs`), [`Isa::Avx512Bf16`] (`vdpbf16ps`, 6 x 64 register tile), [`Isa::Avx2`] (the pairs
//! widened to fp32 and multiplied-added in the same order with FMA, 6 x 16 register tile; it
//! keeps denormal sums the twin flushes, at most `2 * m * 2^-126` apart), [`Isa::Neon`] (the
//! same widening with `fmla` on aarch64, 6 x 16 register tile; the same bound) and
//! [`Isa::Scalar`]. Work is
//! split over rows of `dW` on the current rayon pool and blocked along the depth by
//! [`super::bf16_tiles`]; `dY / s` is scaled, rounded and laid out for the micro-kernel in one
//! pass over contiguous rows of `dY` (no transposition).

use super::bf16_tiles::{pack_a_depth_rows, pair, run_blocked};
use super::{GemmError, Isa, check_grad_weight, check_isa, checked_area};
use rayon::prelude::*;
use std::cell::RefCell;

/// Paths of the bf16 weight gradient.
pub const BF16_PATHS: [Isa; 5] =
    [Isa::Scalar, Isa::Avx2, Isa::Avx512Bf16, Isa::Avx512Amx, Isa::Neon];

/// Columns of `dW` per panel (four vectors of 16 fp32 lanes).
pub(crate) const NR: usize = 64;
/// Rows of `dW` per micro-kernel tile.
pub(crate) const MR: usize = 6;

/// `f32 -> bf16` as `vcvtneps2bf16` does it: round to nearest even, NaN kept quiet, denormal
/// inputs flushed to a signed zero.
#[inline]
pub fn f32_to_bf16(v: f32) -> u16 {
    // Branch-free (every case computed, one selected) so packing loops vectorize.
    let bits = v.to_bits();
    let quiet_nan = ((bits >> 16) | 0x0040) as u16;
    let signed_zero = ((bits >> 16) & 0x8000) as u16;
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
    let is_denormal_or_zero = bits & 0x7F80_0000 == 0;
    if is_nan {
        quiet_nan
    } else if is_denormal_or_zero {
        signed_zero
    } else {
        rounded
    }
}

/// The f32 value of a bf16.
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// `dw[j][l] (+)= sum_i (dy[i][j] / x_scales[i]) * x_q[i][l]` for the row-major `m x n` output
/// gradient `dy`, the `m x k` int8 activations `x_q` with their row scales, and the `n x k`
/// weight gradient `dw` (overwritten, or added to when `accumulate`). Best path of this CPU.
#[allow(clippy::too_many_arguments)]
pub fn grad_weight_bf16(
    dy: &[f32],
    m: usize,
    n: usize,
    x_q: &[i8],
    x_scales: &[f32],
    k: usize,
    dw: &mut [f32],
    accumulate: bool,
) -> Result<(), GemmError> {
    let isa = Isa::best_among(&BF16_PATHS);
    grad_weight_bf16_with(isa, dy, m, n, x_q, x_scales, k, dw, accumulate)
}

thread_local! {
    /// `X_q` as bf16 pairs, panel-major: `[panel][pair][64]`.
    static B_PACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// [`grad_weight_bf16`] on the given path.
#[allow(clippy::too_many_arguments)]
pub fn grad_weight_bf16_with(
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
    check_isa("grad_weight_bf16", isa, &BF16_PATHS)?;
    check_grad_weight(dy, m, n, x_q, x_scales, k, dw)?;
    if n == 0 || k == 0 {
        return Ok(());
    }
    let pairs = m.div_ceil(2);
    let panels = k.div_ceil(NR);
    let b_len = checked_area("bf16 pack", checked_area("bf16 pack", panels, pairs)?, NR)?;
    // Take the buffer out of the thread-local so tasks on this thread never see it borrowed.
    let mut b = B_PACK.with(|p| std::mem::take(&mut *p.borrow_mut()));
    b.clear();
    b.resize(b_len, 0);
    pack_b(x_q, m, k, &mut b);
    // A(i, j) = dY[i][j] / s_i: depth rows of dY are contiguous along the output rows j.
    run_blocked(isa, dw, (n, k, pairs), &b, accumulate, 2, |j0, rn, p0, pc, dst| {
        let row = |i: usize| (&dy[i * n + j0..i * n + j0 + rn], 1.0 / x_scales[i]);
        pack_a_depth_rows(dst, (rn, p0, pc, m), row)
    });
    B_PACK.with(|p| *p.borrow_mut() = b);
    Ok(())
}

/// One micro-kernel call: `rows` rows of `dW` x the columns `l0 .. l0 + cols` of one panel.
/// The operands are bf16 pairs (`L = u32`), or on the AVX2 path the same pairs widened to
/// fp32 (`L = f32`, see `x86_avx2_bf16.rs`), twice the lanes in the layouts noted.
pub(crate) struct Bf16Tile<'a, L = u32> {
    /// The packed left operand (`dY / s` rows), pair-major: lane `(r, p)` at `p * MR + r`
    /// (widened: `[pair][hi MR, lo MR]`).
    pub a: &'a [L],
    /// A depth block of one panel of the packed right operand (`X_q`), `pairs * 64`
    /// (widened: `[pair][hi 64, lo 64]`).
    pub b: &'a [L],
    pub pairs: usize,
    pub rows: usize,
    /// The `rows` output rows, `k` each.
    pub out: &'a mut [f32],
    pub k: usize,
    pub l0: usize,
    pub cols: usize,
    pub accumulate: bool,
}

/// The bf16 bits of a small integer (exact: |v| <= 128 has at most 8 significant bits).
#[inline(always)]
fn int8_bf16(v: i8) -> u16 {
    (f32::from(v).to_bits() >> 16) as u16
}

fn pack_b(x_q: &[i8], m: usize, k: usize, b: &mut [u32]) {
    let pairs = m.div_ceil(2);
    let panel_len = pairs * NR;
    b.par_chunks_mut(panel_len).enumerate().for_each(|(panel, dst)| {
        let l0 = panel * NR;
        let cols = (k - l0).min(NR);
        for (p, row) in dst.chunks_exact_mut(NR).enumerate() {
            let even = &x_q[2 * p * k + l0..2 * p * k + l0 + cols];
            if 2 * p + 1 < m {
                let odd = &x_q[(2 * p + 1) * k + l0..(2 * p + 1) * k + l0 + cols];
                for ((d, &e), &o) in row.iter_mut().zip(even).zip(odd) {
                    *d = pair(int8_bf16(e), int8_bf16(o));
                }
            } else {
                for (d, &e) in row.iter_mut().zip(even) {
                    *d = pair(int8_bf16(e), 0);
                }
            }
        }
    });
}

pub(crate) fn micro_kernel(isa: Isa, t: Bf16Tile<'_>) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified AVX-512 BF16 (with F/BW/VL); the tile's slices are in
        // bounds by construction (rows <= MR, cols <= 64, b holds pairs * 64 lanes).
        Isa::Avx512Bf16 => unsafe { super::x86_bf16::kernel_bf16(t) },
        // The AVX2 path multiplies widened operands in the driver (`bf16_tiles::run_blocked`).
        Isa::Avx2 => unreachable!("the AVX2 bf16 path runs on widened operands"),
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON; the tile's slices are in bounds as above.
        Isa::Neon => unsafe { super::neon_bf16::kernel_bf16_neon(t) },
        _ => kernel_scalar(t),
    }
}

/// Flushes a denormal result to a signed zero (the FTZ of `vdpbf16ps`).
#[inline(always)]
fn ftz(v: f32) -> f32 {
    if v.is_subnormal() { f32::from_bits(v.to_bits() & 0x8000_0000) } else { v }
}

/// One `vdpbf16ps` lane step: `acc + hi_a * hi_b`, then `+ lo_a * lo_b` (products are exact).
#[inline(always)]
pub(crate) fn dot2(acc: f32, a: u32, b: u32) -> f32 {
    let hi = bf16_to_f32((a >> 16) as u16) * bf16_to_f32((b >> 16) as u16);
    let lo = bf16_to_f32(a as u16) * bf16_to_f32(b as u16);
    ftz(ftz(acc + hi) + lo)
}

fn kernel_scalar(t: Bf16Tile<'_>) {
    for r in 0..t.rows {
        for c in 0..t.cols {
            let mut acc = 0.0f32;
            for p in 0..t.pairs {
                acc = dot2(acc, t.a[p * MR + r], t.b[p * NR + c]);
            }
            let o = &mut t.out[r * t.k + t.l0 + c];
            *o = if t.accumulate { *o + acc } else { acc };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::bf16_tiles::{KC, MC};
    use super::*;
    use crate::testutil::pool;
    use proptest::prelude::*;

    #[test]
    fn bf16_conversion_rounds_to_nearest_even() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties to even (1).
        assert_eq!(f32_to_bf16(1.0 + 2f32.powi(-8)), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 * 2f32.powi(-8)), 0x3F82);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        assert_eq!(f32_to_bf16(f32::from_bits(1)), 0);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        for v in -128i8..=127 {
            assert_eq!(bf16_to_f32(int8_bf16(v)), f32::from(v));
        }
    }

    #[test]
    fn shape_errors() {
        let mut dw = vec![0.0; 6];
        assert!(grad_weight_bf16(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw, false).is_ok());
        assert!(grad_weight_bf16(&[0.0; 3], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw, false).is_err());
        assert!(grad_weight_bf16(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 1], 3, &mut dw, false).is_err());
        assert!(
            grad_weight_bf16(&[0.0; 4], 2, 2, &[0; 6], &[1.0; 2], 3, &mut dw[..5], false).is_err()
        );
    }

    fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<f32>, Vec<i8>, Vec<f32>)> {
        // Small shapes, and shapes past one depth block (KC pairs, 2 KC rows of `dY`) and one
        // row block (MC rows of `dW`).
        let small = (1usize..30, 1usize..20, 1usize..140);
        let blocked = (4 * KC - 3..6 * KC + 9, MC - 5..MC + 20, 1usize..24);
        // Whole and ragged 32 x 32 blocks of the AMX path, depths across its 16-pair chunks.
        let tiles = (20usize..200, 30usize..100, 30usize..100);
        prop_oneof![3 => small, 1 => blocked, 1 => tiles].prop_flat_map(|(m, n, k)| {
            (
                Just(m),
                Just(n),
                Just(k),
                prop::collection::vec(-2.0f32..2.0, m * n),
                prop::collection::vec(any::<i8>(), m * k),
                prop::collection::vec(0.5f32..200.0, m),
            )
        })
    }

    /// The conversion with branches, as `vcvtneps2bf16` is specified.
    fn f32_to_bf16_reference(v: f32) -> u16 {
        let bits = v.to_bits();
        if v.is_nan() {
            return ((bits >> 16) | 0x0040) as u16;
        }
        if bits & 0x7F80_0000 == 0 {
            return ((bits >> 16) & 0x8000) as u16;
        }
        let lsb = (bits >> 16) & 1;
        (bits.wrapping_add(0x7FFF + lsb) >> 16) as u16
    }

    proptest! {
        #[test]
        fn branch_free_conversion_matches_the_reference(bits in any::<u32>()) {
            let v = f32::from_bits(bits);
            prop_assert_eq!(f32_to_bf16(v), f32_to_bf16_reference(v));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn paths_agree_and_stay_within_the_bound(
            (m, n, k, dy, x, s) in case(), threads in 1usize..4, accumulate in any::<bool>(),
        ) {
            let mut exact = vec![0.0f64; n * k];
            let mut mag = vec![0.0f64; n * k];
            for j in 0..n {
                for l in 0..k {
                    for i in 0..m {
                        let t = f64::from(dy[i * n + j]) / f64::from(s[i]) * f64::from(x[i * k + l]);
                        exact[j * k + l] += t;
                        mag[j * k + l] += t.abs();
                    }
                }
            }
            let start: Vec<f32> = (0..n * k).map(|i| if accumulate { i as f32 * 0.25 } else { f32::NAN }).collect();
            let mut want = start.clone();
            grad_weight_bf16_with(Isa::Scalar, &dy, m, n, &x, &s, k, &mut want, accumulate)
                .expect("scalar");
            let fp32_bound = m as f64 * 2f64.powi(-23);
            for i in 0..n * k {
                let base = if accumulate { f64::from(start[i]) } else { 0.0 };
                let err = (f64::from(want[i]) - base - exact[i]).abs();
                let bound = (2f64.powi(-8) + fp32_bound) * mag[i] + 1e-6 * base.abs() + 1e-30;
                prop_assert!(!want[i].is_nan());
                prop_assert!(err <= bound, "scalar at {}: err {} > {}", i, err, bound);
            }
            for isa in Isa::available_among(&BF16_PATHS) {
                let mut got = start.clone();
                pool(threads)
                    .install(|| grad_weight_bf16_with(isa, &dy, m, n, &x, &s, k, &mut got, accumulate))
                    .expect("bf16");
                for i in 0..n * k {
                    let diff = (f64::from(got[i]) - f64::from(want[i])).abs();
                    let base = if accumulate { f64::from(start[i]).abs() } else { 0.0 };
                    let bound = fp32_bound * mag[i] + 1e-6 * base + 1e-30;
                    prop_assert!(diff <= bound, "{:?} at {}: {} vs {}", isa, i, got[i], want[i]);
                }
            }
        }
    }
}
