//! Fast BitNet b1.58 quantizers (AVX-512 and AVX2 with a bit-identical scalar twin).
//!
//! - Weights, per tensor (absmean): `g = mean|W|` accumulated in f64,
//!   `W_q = clamp(round_half_even(W / (g + 1e-5)), -1, 1)`; dequantised `W_q * g`.
//! - Activations, per token (absmax): `s = 127 / max(max|x|, 1e-5)`,
//!   `x_q = clamp(round_half_even(x * s), -128, 127)`; dequantised `x_q / s`.
//!
//! Paths: [`Isa::Scalar`], [`Isa::Avx2`], [`Isa::Avx512`] and, on
//! aarch64, [`Isa::Neon`]. All give bit-identical results, including the
//! scale: the absmean sum is split over 16 f64 lanes (element `i` of each full block of 16 goes
//! to lane `i % 16`) and reduced in one fixed order, with the tail summed last, on both paths.
//! NaN inputs are handled as the SIMD `max`/`min` instructions do: a NaN never wins the absmax and
//! quantises to the lower clamp bound.

use super::{GemmError, Isa, check_isa, check_len, checked_area, clamp_like_simd};

/// Floor of the activation absmax (avoids dividing by zero on an all-zero row).
pub const ACT_ABSMAX_FLOOR: f32 = 1e-5;
/// Added to the weight absmean before dividing (the weight codec's, so both quantize alike).
pub use bitnet_framework::weights::ternary::WEIGHT_EPS;

/// Paths the quantizers implement.
pub const QUANT_PATHS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

/// Lanes of the absmean partial sums (one AVX-512 register of f32, as two of f64) and their
/// fixed reduction: the weight codec's, which every path here matches to the bit.
pub(crate) use bitnet_framework::weights::ternary::{ABSMEAN_LANES, finish_absmean};

/// Quantizes a weight tensor to ternary; returns `(W_q, g)` with `W ~ W_q * g`. An empty tensor
/// gives `g = 0`.
pub fn quantize_weights_absmean(w: &[f32]) -> (Vec<i8>, f32) {
    let mut q = vec![0i8; w.len()];
    let g = quantize_weights_absmean_with(Isa::best_among(&QUANT_PATHS), w, &mut q)
        .unwrap_or_else(|_| quantize_weights_scalar(w, &mut q));
    (q, g)
}

/// [`quantize_weights_absmean`] into a caller buffer (no allocation) on the best path.
pub fn quantize_weights_absmean_into(w: &[f32], q: &mut [i8]) -> Result<f32, GemmError> {
    quantize_weights_absmean_with(Isa::best_among(&QUANT_PATHS), w, q)
}

/// [`quantize_weights_absmean_into`] on the given path.
pub fn quantize_weights_absmean_with(isa: Isa, w: &[f32], q: &mut [i8]) -> Result<f32, GemmError> {
    check_isa("quantize_weights_absmean", isa, &QUANT_PATHS)?;
    check_len("ternary weights", w.len(), q.len())?;
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            // SAFETY: check_isa verified this CPU has AVX-512 F/BW/VL; lengths are equal.
            Ok(unsafe { super::x86_quant::quantize_weights_avx512(w, q) })
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: check_isa verified this CPU has AVX2; lengths are equal.
        Isa::Avx2 => Ok(unsafe { super::x86_quant::quantize_weights_avx2(w, q) }),
        #[cfg(target_arch = "aarch64")]
        // SAFETY: check_isa verified NEON; lengths are equal.
        Isa::Neon => Ok(unsafe { super::neon_quant::quantize_weights_neon(w, q) }),
        _ => Ok(quantize_weights_scalar(w, q)),
    }
}

/// Per-token absmax int8 quantisation of a row-major `rows x cols` matrix `x` (`rows` is
/// `x.len() / cols`): writes `x_q` to `q` and each row's scale `s` to `scales`.
pub fn quantize_activations_absmax(
    x: &[f32],
    cols: usize,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), GemmError> {
    quantize_activations_absmax_with(Isa::best_among(&QUANT_PATHS), x, cols, q, scales)
}

/// [`quantize_activations_absmax`] on the given path.
pub fn quantize_activations_absmax_with(
    isa: Isa,
    x: &[f32],
    cols: usize,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), GemmError> {
    check_isa("quantize_activations_absmax", isa, &QUANT_PATHS)?;
    if cols == 0 {
        return Err(GemmError::Shape("activation rows must have at least one column".into()));
    }
    if !x.len().is_multiple_of(cols) {
        return Err(GemmError::Shape(format!(
            "activations of length {} are not rows of {cols}",
            x.len()
        )));
    }
    let rows = x.len() / cols;
    check_len("quantized activations", checked_area("activations", rows, cols)?, q.len())?;
    check_len("activation scales", rows, scales.len())?;
    for ((xr, qr), s) in x.chunks_exact(cols).zip(q.chunks_exact_mut(cols)).zip(scales.iter_mut()) {
        *s = match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: check_isa verified AVX-512 F/BW/VL; `xr` and `qr` both have `cols` elements.
            Isa::Avx512 => unsafe { super::x86_quant::quantize_row_avx512(xr, qr) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: check_isa verified AVX2; `xr` and `qr` both have `cols` elements.
            Isa::Avx2 => unsafe { super::x86_quant::quantize_row_avx2(xr, qr) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: check_isa verified NEON; `xr` and `qr` both have `cols` elements.
            Isa::Neon => unsafe { super::neon_quant::quantize_row_neon(xr, qr) },
            _ => quantize_row_scalar(xr, qr),
        };
    }
    Ok(())
}

/// One activation row on the best path of this CPU (the two paths are bit-identical); returns
/// the row's scale. For callers whose lengths agree by construction.
///
/// # Panics
/// If `q` and `x` differ in length.
pub(crate) fn quantize_row_best(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "activation row lengths");
    match Isa::best_among(&QUANT_PATHS) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `best_among` only returns AVX-512 when this CPU has F/BW/VL; lengths checked.
        Isa::Avx512 => unsafe { super::x86_quant::quantize_row_avx512(x, q) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `best_among` only returns AVX2 when this CPU has AVX2; lengths checked.
        Isa::Avx2 => unsafe { super::x86_quant::quantize_row_avx2(x, q) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `best_among` only returns NEON when this CPU has it; lengths checked.
        Isa::Neon => unsafe { super::neon_quant::quantize_row_neon(x, q) },
        _ => quantize_row_scalar(x, q),
    }
}

/// Scalar twin of the weight quantizer (the AVX-512 path's exact semantics).
#[inline]
pub(crate) fn quantize_weights_scalar(w: &[f32], q: &mut [i8]) -> f32 {
    let g = absmean_scalar(w);
    let div = g + WEIGHT_EPS;
    for (qi, &wi) in q.iter_mut().zip(w) {
        *qi = clamp_like_simd(wi / div, -1.0, 1.0).round_ties_even() as i8;
    }
    g
}

/// `mean|w|` with the lane-split f64 summation every path shares (the weight codec's).
#[inline]
pub(crate) fn absmean_scalar(w: &[f32]) -> f32 {
    bitnet_framework::weights::ternary::absmean(w)
}

/// The activation scale of a row whose absmax is `absmax`.
#[inline]
pub(crate) fn act_scale(absmax: f32) -> f32 {
    127.0 / if absmax > ACT_ABSMAX_FLOOR { absmax } else { ACT_ABSMAX_FLOOR }
}

/// Scalar twin of the activation row quantizer; returns the row's scale.
#[inline]
pub(crate) fn quantize_row_scalar(x: &[f32], q: &mut [i8]) -> f32 {
    let mut absmax = 0.0f32;
    for &v in x {
        let a = v.abs();
        absmax = if a > absmax { a } else { absmax };
    }
    let s = act_scale(absmax);
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = clamp_like_simd(xi * s, -128.0, 127.0).round_ties_even() as i8;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn activation_rounds_half_to_even_and_clamps() {
        for isa in Isa::available_among(&QUANT_PATHS) {
            let x = [0.5, 1.5, 2.5, -0.5, -1.5, 127.0, -127.0, 3.49];
            let mut q = [0i8; 8];
            let mut s = [0.0f32];
            quantize_activations_absmax_with(isa, &x, 8, &mut q, &mut s).expect("quantize");
            assert_eq!(s[0], 1.0, "{isa:?}");
            assert_eq!(q, [0, 2, 2, 0, -2, 127, -127, 3], "{isa:?}");
        }
    }

    #[test]
    fn zero_row_uses_the_floor() {
        let mut q = [1i8; 3];
        let mut s = [0.0f32];
        quantize_activations_absmax(&[0.0; 3], 3, &mut q, &mut s).expect("quantize");
        assert_eq!(q, [0; 3]);
        assert_eq!(s[0], 127.0 / 1e-5);
    }

    #[test]
    fn weights_ternary_with_absmean_scale() {
        for isa in Isa::available_among(&QUANT_PATHS) {
            // mean |w| = 1; w / (1 + 1e-5) rounds to 0 for 0.4, +-1 beyond 0.5, clamps at 1.
            let w = [0.4f32, -0.6, 2.0, -1.0];
            let mut q = [0i8; 4];
            let g = quantize_weights_absmean_with(isa, &w, &mut q).expect("quantize");
            assert_eq!(g, 1.0, "{isa:?}");
            assert_eq!(q, [0, -1, 1, -1], "{isa:?}");
        }
        assert_eq!(quantize_weights_absmean(&[]), (vec![], 0.0));
    }

    #[test]
    fn shape_errors_are_reported() {
        let mut q = [0i8; 4];
        let mut s = [0.0f32; 2];
        assert!(quantize_activations_absmax(&[0.0; 5], 2, &mut q, &mut s).is_err());
        assert!(quantize_activations_absmax(&[0.0; 4], 0, &mut q, &mut s).is_err());
        assert!(quantize_activations_absmax(&[0.0; 4], 2, &mut q, &mut s[..1]).is_err());
        assert!(quantize_weights_absmean_into(&[0.0; 3], &mut q).is_err());
    }

    fn f32_any() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -4.0f32..4.0,
            1 => prop::num::f32::ANY,
            1 => Just(0.0f32),
        ]
    }

    proptest! {
        /// The weight codec (which sends trits and scales to async-sgd workers) quantizes like
        /// the kernel, to the bit: same scale, same trits.
        #[test]
        fn the_weight_codec_quantizes_like_the_kernel(
            w in prop::collection::vec(-4.0f32..4.0, 0..300),
        ) {
            use bitnet_framework::weights::ternary;
            let mut want = vec![0i8; w.len()];
            let g = quantize_weights_absmean(&w).1;
            quantize_weights_absmean_into(&w, &mut want).expect("quantize");
            let mut got = vec![0i8; w.len()];
            prop_assert_eq!(ternary::quantize(&w, &mut got).to_bits(), g.to_bits());
            prop_assert_eq!(got, want);
        }

        #[test]
        fn weight_paths_bit_identical(w in prop::collection::vec(f32_any(), 0..300)) {
            let mut want = vec![0i8; w.len()];
            let g_want = quantize_weights_scalar(&w, &mut want);
            for isa in Isa::available_among(&QUANT_PATHS) {
                let mut got = vec![0i8; w.len()];
                let g = quantize_weights_absmean_with(isa, &w, &mut got).expect("quantize");
                // A NaN input makes g NaN on both paths; the payload may differ.
                prop_assert!(g.to_bits() == g_want.to_bits() || (g.is_nan() && g_want.is_nan()),
                    "{:?}: {} vs {}", isa, g, g_want);
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }

        #[test]
        fn activation_paths_bit_identical(
            cols in 1usize..70,
            rows in 1usize..4,
            vals in prop::collection::vec(f32_any(), 280),
        ) {
            let x: Vec<f32> = vals.iter().copied().cycle().take(rows * cols).collect();
            let mut want = vec![0i8; x.len()];
            let mut s_want = vec![0.0f32; rows];
            quantize_activations_absmax_with(Isa::Scalar, &x, cols, &mut want, &mut s_want)
                .expect("scalar");
            for isa in Isa::available_among(&QUANT_PATHS) {
                let mut got = vec![0i8; x.len()];
                let mut s = vec![0.0f32; rows];
                quantize_activations_absmax_with(isa, &x, cols, &mut got, &mut s).expect("quantize");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&s), bits(&s_want), "{:?}", isa);
                prop_assert_eq!(&got, &want, "{:?}", isa);
            }
        }

        #[test]
        fn activation_matches_definition(x in prop::collection::vec(-100.0f32..100.0, 1..40)) {
            let mut q = vec![0i8; x.len()];
            let mut s = [0.0f32];
            quantize_activations_absmax(&x, x.len(), &mut q, &mut s).expect("quantize");
            let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s_def = 127.0 / absmax.max(ACT_ABSMAX_FLOOR);
            prop_assert_eq!(s[0], s_def);
            for (qi, xi) in q.iter().zip(&x) {
                prop_assert_eq!(f32::from(*qi), (xi * s_def).round_ties_even().clamp(-128.0, 127.0));
            }
        }
    }
}
