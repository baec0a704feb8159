//! A vectorised `exp` and the elementwise passes built on it: softmax rows (attention and
//! cross-entropy) and the SwiGLU gate.
//!
//! `exp(x)` is evaluated as `2^n * e^r` with `n = round(x * log2(e))` and
//! `r = x - n * ln 2` (Cody-Waite, two constants, fused multiply-adds), `e^r` by the degree-7
//! polynomial of Cephes' `expf` on `|r| <= ln(2) / 2`, and `2^n` applied as two exact powers of
//! two so that results that fall into the denormal range are rounded once. Inputs are clamped to
//! `[-104, 88.8]` (below, `exp` rounds to 0; above, to infinity); NaN stays NaN. Relative error
//! (what the tests hold): at most `2^-22` against `f64::exp` for normal results.
//!
//! Paths: [`Isa::Avx512`] (16 lanes), [`Isa::Avx2`] (8 lanes, FMA), [`Isa::Neon`] (4 lanes, on
//! aarch64) and [`Isa::Scalar`], which
//! performs the same operations in
//! the same order (`mul_add` is the fused multiply-add of the SIMD path), so both give
//! bit-identical results; sums are accumulated in 16 lane-ordered partial sums on both paths.

use super::{GemmError, Isa, check_isa, check_len};

/// Paths of the exponential passes.
pub const EXP_PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

pub(crate) const EXP_LO: f32 = -104.0;
pub(crate) const EXP_HI: f32 = 88.8;
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2 = LN2_HI + LN2_LO`, `LN2_HI` with few enough bits that `n * LN2_HI` is exact.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes `expf` coefficients of `e^r = 1 + r + r^2 * P(r)`, highest degree first.
pub(crate) const POLY: [f32; 6] =
    [1.987_569_1e-4, 1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
/// Lanes of the partial sums.
pub(crate) const LANES: usize = 16;

/// `2^k` for `-126 <= k <= 127`.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// The scalar twin of the vectorised `exp`.
#[inline]
pub fn exp_scalar(x: f32) -> f32 {
    // The clamps in the order of `max_ps(lo, x)` / `min_ps(hi, x)`: NaN passes through.
    let x = if EXP_LO > x { EXP_LO } else { x };
    let x = if EXP_HI < x { EXP_HI } else { x };
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    let z = r * r;
    let mut p = POLY[0];
    for &c in &POLY[1..] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(z, r) + 1.0;
    // `n` is integral in [-150, 128] (0 for NaN, whose `y` is NaN anyway).
    let n = n as i32;
    let n1 = n >> 1;
    y * pow2(n1) * pow2(n - n1)
}

/// Sums 16 lane-ordered partial sums left to right (both paths finish this way).
#[inline]
pub(crate) fn finish_lanes(acc: &[f32; LANES]) -> f32 {
    acc.iter().fold(0.0, |s, &v| s + v)
}

/// `row[i] = exp(row[i] * scale - shift) * mul` in place; returns the sum of the exponentials
/// (before `mul`). Best path of this CPU.
pub fn exp_affine_in_place(row: &mut [f32], scale: f32, shift: f32, mul: f32) -> f32 {
    exp_affine_dispatch(Isa::best_among(&EXP_PATHS), row, scale, shift, mul)
}

/// [`exp_affine_in_place`] on the given path.
pub fn exp_affine_in_place_with(
    isa: Isa,
    row: &mut [f32],
    scale: f32,
    shift: f32,
    mul: f32,
) -> Result<f32, GemmError> {
    check_isa("exp_affine_in_place", isa, &EXP_PATHS)?;
    Ok(exp_affine_dispatch(isa, row, scale, shift, mul))
}

fn exp_affine_dispatch(isa: Isa, row: &mut [f32], scale: f32, shift: f32, mul: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when this CPU has AVX-512 F (checked by
        // `best_among` / `check_isa`).
        Isa::Avx512 => unsafe { super::x86_exp::exp_affine_avx512(row, scale, shift, mul) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only chosen when this CPU has AVX2 and FMA.
        Isa::Avx2 => unsafe { super::x86_avx2_exp::exp_affine_avx2(row, scale, shift, mul) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON checked by `check_isa` / `best_among`; the lengths agree (see above).
        Isa::Neon => unsafe { super::neon_exp::exp_affine_neon(row, scale, shift, mul) },
        _ => {
            let mut acc = [0.0f32; LANES];
            for (i, v) in row.iter_mut().enumerate() {
                let e = exp_scalar(*v * scale - shift);
                acc[i % LANES] += e;
                *v = e * mul;
            }
            finish_lanes(&acc)
        }
    }
}

/// `sum_i exp(row[i] - shift)`, leaving `row` untouched. Best path of this CPU.
pub fn sum_exp(row: &[f32], shift: f32) -> f32 {
    sum_exp_dispatch(Isa::best_among(&EXP_PATHS), row, shift)
}

/// [`sum_exp`] on the given path.
pub fn sum_exp_with(isa: Isa, row: &[f32], shift: f32) -> Result<f32, GemmError> {
    check_isa("sum_exp", isa, &EXP_PATHS)?;
    Ok(sum_exp_dispatch(isa, row, shift))
}

fn sum_exp_dispatch(isa: Isa, row: &[f32], shift: f32) -> f32 {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F is available (see `exp_affine_dispatch`).
        Isa::Avx512 => unsafe { super::x86_exp::sum_exp_avx512(row, shift) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA are available (see `exp_affine_dispatch`).
        Isa::Avx2 => unsafe { super::x86_avx2_exp::sum_exp_avx2(row, shift) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON checked by `check_isa` / `best_among`; the lengths agree (see above).
        Isa::Neon => unsafe { super::neon_exp::sum_exp_neon(row, shift) },
        _ => {
            let mut acc = [0.0f32; LANES];
            for (i, &v) in row.iter().enumerate() {
                acc[i % LANES] += exp_scalar(v - shift);
            }
            finish_lanes(&acc)
        }
    }
}

/// `sigmoid(g) = 1 / (1 + exp(-g))` with the vectorised `exp`.
#[inline(always)]
pub(crate) fn sigmoid_scalar(g: f32) -> f32 {
    1.0 / (1.0 + exp_scalar(-g))
}

/// SwiGLU forward `h = silu(gate) * up = (gate * sigmoid(gate)) * up`. Best path of this CPU.
pub fn swiglu_forward(h: &mut [f32], gate: &[f32], up: &[f32]) -> Result<(), GemmError> {
    swiglu_forward_with(Isa::best_among(&EXP_PATHS), h, gate, up)
}

/// [`swiglu_forward`] on the given path.
pub fn swiglu_forward_with(
    isa: Isa,
    h: &mut [f32],
    gate: &[f32],
    up: &[f32],
) -> Result<(), GemmError> {
    check_isa("swiglu_forward", isa, &EXP_PATHS)?;
    check_len("gate", h.len(), gate.len())?;
    check_len("up", h.len(), up.len())?;
    swiglu_forward_dispatch(isa, h, gate, up);
    Ok(())
}

/// [`swiglu_forward`] on the best path, for callers whose lengths agree by construction.
///
/// # Panics
/// If the three lengths differ.
pub(crate) fn swiglu_forward_best(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == h.len() && up.len() == h.len(), "swiglu lengths");
    swiglu_forward_dispatch(Isa::best_among(&EXP_PATHS), h, gate, up);
}

fn swiglu_forward_dispatch(isa: Isa, h: &mut [f32], gate: &[f32], up: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F checked by `check_isa`; the three lengths are equal.
        Isa::Avx512 => unsafe { super::x86_exp::swiglu_forward_avx512(h, gate, up) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA checked by `check_isa`; the three lengths are equal.
        Isa::Avx2 => unsafe { super::x86_avx2_exp::swiglu_forward_avx2(h, gate, up) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON checked by `check_isa` / `best_among`; the lengths agree (see above).
        Isa::Neon => unsafe { super::neon_exp::swiglu_forward_neon(h, gate, up) },
        _ => {
            for ((hi, &g), &u) in h.iter_mut().zip(gate).zip(up) {
                *hi = g * sigmoid_scalar(g) * u;
            }
        }
    }
}

/// SwiGLU backward in place: `gate` becomes `d gate = dh * up * s * (1 + gate * (1 - s))` and
/// `up` becomes `d up = dh * gate * s` (`s = sigmoid(gate)`). Best path of this CPU.
pub fn swiglu_backward(gate: &mut [f32], up: &mut [f32], dh: &[f32]) -> Result<(), GemmError> {
    swiglu_backward_with(Isa::best_among(&EXP_PATHS), gate, up, dh)
}

/// [`swiglu_backward`] on the given path.
pub fn swiglu_backward_with(
    isa: Isa,
    gate: &mut [f32],
    up: &mut [f32],
    dh: &[f32],
) -> Result<(), GemmError> {
    check_isa("swiglu_backward", isa, &EXP_PATHS)?;
    check_len("up", gate.len(), up.len())?;
    check_len("output gradient", gate.len(), dh.len())?;
    swiglu_backward_dispatch(isa, gate, up, dh);
    Ok(())
}

/// [`swiglu_backward`] on the best path, for callers whose lengths agree by construction.
///
/// # Panics
/// If the three lengths differ.
pub(crate) fn swiglu_backward_best(gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    assert!(up.len() == gate.len() && dh.len() == gate.len(), "swiglu lengths");
    swiglu_backward_dispatch(Isa::best_among(&EXP_PATHS), gate, up, dh);
}

fn swiglu_backward_dispatch(isa: Isa, gate: &mut [f32], up: &mut [f32], dh: &[f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F checked by `check_isa`; the three lengths are equal.
        Isa::Avx512 => unsafe { super::x86_exp::swiglu_backward_avx512(gate, up, dh) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA checked by `check_isa`; the three lengths are equal.
        Isa::Avx2 => unsafe { super::x86_avx2_exp::swiglu_backward_avx2(gate, up, dh) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON checked by `check_isa` / `best_among`; the lengths agree (see above).
        Isa::Neon => unsafe { super::neon_exp::swiglu_backward_neon(gate, up, dh) },
        _ => {
            for ((gi, ui), &d) in gate.iter_mut().zip(up.iter_mut()).zip(dh) {
                let (gv, uv) = (*gi, *ui);
                let s = sigmoid_scalar(gv);
                let silu = gv * s;
                *gi = d * uv * s * (1.0 + gv * (1.0 - s));
                *ui = d * silu;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    #[test]
    fn special_values() {
        assert_eq!(exp_scalar(0.0), 1.0);
        assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_scalar(-200.0), 0.0);
        assert_eq!(exp_scalar(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_scalar(89.0), f32::INFINITY);
        assert!(exp_scalar(f32::NAN).is_nan());
        // The last finite and the first denormal results.
        assert!(exp_scalar(88.72).is_finite());
        assert!(exp_scalar(-90.0) > 0.0 && exp_scalar(-90.0).is_subnormal());
    }

    #[test]
    fn relative_error_over_the_normal_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.7 {
            let got = f64::from(exp_scalar(x));
            let want = f64::from(x).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.000_37;
        }
        assert!(worst <= 2f64.powi(-22), "worst relative error {worst:e}");
    }

    fn row() -> impl Strategy<Value = Vec<f32>> {
        prop::collection::vec(
            prop_oneof![8 => -30.0f32..30.0, 1 => -120.0f32..100.0, 1 => any::<f32>()],
            0..70,
        )
    }

    proptest! {
        #[test]
        fn exp_is_within_the_bound(x in -87.0f32..88.7) {
            let (got, want) = (f64::from(exp_scalar(x)), f64::from(x).exp());
            prop_assert!(((got - want) / want).abs() <= 2f64.powi(-22), "{} -> {} vs {}", x, got, want);
        }

        #[test]
        fn exp_paths_are_bit_identical(
            x in row(), scale in 0.01f32..2.0, shift in -5.0f32..5.0, mul in 0.1f32..3.0,
        ) {
            let mut want = x.clone();
            let sum_want = exp_affine_in_place_with(Isa::Scalar, &mut want, scale, shift, mul)
                .expect("scalar");
            let plain_want = sum_exp_with(Isa::Scalar, &x, shift).expect("scalar");
            for (i, (&w, &v)) in want.iter().zip(&x).enumerate() {
                prop_assert!(same(w, exp_scalar(v * scale - shift) * mul), "lane {}", i);
            }
            for isa in Isa::available_among(&EXP_PATHS) {
                let mut got = x.clone();
                let sum = exp_affine_in_place_with(isa, &mut got, scale, shift, mul).expect("path");
                prop_assert!(same(sum, sum_want), "{:?}: sum {} vs {}", isa, sum, sum_want);
                for i in 0..x.len() {
                    prop_assert!(same(got[i], want[i]), "{:?} at {}: {} vs {}", isa, i, got[i], want[i]);
                }
                let plain = sum_exp_with(isa, &x, shift).expect("path");
                prop_assert!(same(plain, plain_want), "{:?}: {} vs {}", isa, plain, plain_want);
            }
        }

        #[test]
        fn swiglu_paths_are_bit_identical(
            gu in prop::collection::vec((-40.0f32..40.0, -3.0f32..3.0, -2.0f32..2.0), 0..70),
        ) {
            let gate: Vec<f32> = gu.iter().map(|t| t.0).collect();
            let up: Vec<f32> = gu.iter().map(|t| t.1).collect();
            let dh: Vec<f32> = gu.iter().map(|t| t.2).collect();
            let mut h_want = vec![0.0; gate.len()];
            swiglu_forward_with(Isa::Scalar, &mut h_want, &gate, &up).expect("scalar");
            let (mut g_want, mut u_want) = (gate.clone(), up.clone());
            swiglu_backward_with(Isa::Scalar, &mut g_want, &mut u_want, &dh).expect("scalar");
            for i in 0..gate.len() {
                let s = 1.0 / (1.0 + f64::from(-gate[i]).exp());
                let h = f64::from(gate[i]) * s * f64::from(up[i]);
                prop_assert!((f64::from(h_want[i]) - h).abs() <= 1e-6 * (1.0 + h.abs()));
            }
            for isa in Isa::available_among(&EXP_PATHS) {
                let mut h = vec![0.0; gate.len()];
                swiglu_forward_with(isa, &mut h, &gate, &up).expect("path");
                let (mut g, mut u) = (gate.clone(), up.clone());
                swiglu_backward_with(isa, &mut g, &mut u, &dh).expect("path");
                for i in 0..gate.len() {
                    prop_assert!(same(h[i], h_want[i]), "{:?} h at {}", isa, i);
                    prop_assert!(same(g[i], g_want[i]), "{:?} dg at {}", isa, i);
                    prop_assert!(same(u[i], u_want[i]), "{:?} du at {}", isa, i);
                }
            }
        }
    }

    #[test]
    fn length_errors() {
        let mut h = vec![0.0; 3];
        assert!(swiglu_forward(&mut h, &[0.0; 2], &[0.0; 3]).is_err());
        let (mut g, mut u) = (vec![0.0; 3], vec![0.0; 3]);
        assert!(swiglu_backward(&mut g, &mut u, &[0.0; 4]).is_err());
    }
}
