//! The conformance suite every weight codec runs (feature `conformance`).
//!
//! ```ignore
//! bitnet_container::weight_codec_conformance_tests!(
//!     || Box::new(TernaryWeights) as Box<dyn WeightCodec>, Fidelity::TernaryEquivalent);
//! ```

use crate::write_container;
use bitnet_framework::codec::conformance::layout_and_update;
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use bitnet_framework::weights::{WeightCodec, WeightsError, ternary};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Builds a codec.
pub type MakeWeightCodec<'a> = &'a dyn Fn() -> Box<dyn WeightCodec>;

/// What a decode must give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fidelity {
    /// The exact parameters.
    Exact,
    /// Non-BitLinear tensors exact; BitLinear tensors quantize to the same trits and scale.
    TernaryEquivalent,
}

fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner =
        TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("weight codec conformance `{name}` failed: {e}");
    }
}

fn encode_ok(
    codec: &dyn WeightCodec,
    layout: &ParamLayout,
    version: u64,
    params: &[f32],
) -> Result<Vec<u8>, TestCaseError> {
    codec.encode(layout, version, params).map_err(|e| TestCaseError::fail(format!("encode: {e}")))
}

/// Decoding gives back the version and the parameters at the codec's fidelity.
pub fn round_trip(make: MakeWeightCodec<'_>, fidelity: Fidelity) {
    check("round_trip", (layout_and_update(), any::<u64>()), |((layout, params), version)| {
        let codec = make();
        let bytes = encode_ok(codec.as_ref(), &layout, version, &params)?;
        let w = codec.decode(&layout, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(w.version, version);
        prop_assert_eq!(w.params.len(), params.len());
        for (spec, range) in layout.iter() {
            let (a, b) = (&params[range.clone()], &w.params[range]);
            if fidelity == Fidelity::TernaryEquivalent && spec.role == TensorRole::BitLinear {
                let (mut ta, mut tb) = (vec![0i8; a.len()], vec![0i8; b.len()]);
                let ga = ternary::quantize(a, &mut ta);
                let gb = ternary::quantize(b, &mut tb);
                prop_assert_eq!(&ta, &tb, "trits of `{}` changed", spec.name);
                if ta.iter().any(|&t| t != 0) {
                    prop_assert_eq!(ga, gb, "scale of `{}` changed", spec.name);
                }
            } else {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                prop_assert!(same, "tensor `{}` changed", spec.name);
            }
        }
        Ok(())
    });
}

/// Every strict prefix is refused.
pub fn refuses_truncation(make: MakeWeightCodec<'_>) {
    check("refuses_truncation", layout_and_update(), |(layout, params)| {
        let codec = make();
        let bytes = encode_ok(codec.as_ref(), &layout, 7, &params)?;
        for len in 0..bytes.len() {
            prop_assert!(codec.decode(&layout, &bytes[..len]).is_err(), "prefix {len} accepted");
        }
        Ok(())
    });
}

/// Corrupted bytes (the store and transport catch them by SHA-256; this is the last line)
/// decode to an error or to finite parameters of the right size, never a panic.
pub fn corruption_is_refused_or_finite(make: MakeWeightCodec<'_>) {
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..=4);
    check("corruption_is_refused_or_finite", (layout_and_update(), edits), |((l, p), edits)| {
        let codec = make();
        let mut bytes = encode_ok(codec.as_ref(), &l, 7, &p)?;
        for (at, b) in &edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
        if let Ok(w) = codec.decode(&l, &bytes) {
            prop_assert_eq!(w.params.len(), l.total_params());
            prop_assert!(w.params.iter().all(|v| v.is_finite()));
        }
        Ok(())
    });
}

/// Weights for another layout are refused with [`WeightsError::LayoutMismatch`].
pub fn refuses_other_layout(make: MakeWeightCodec<'_>) {
    check("refuses_other_layout", layout_and_update(), |(layout, params)| {
        let codec = make();
        let bytes = encode_ok(codec.as_ref(), &layout, 7, &params)?;
        let mut tensors = layout.tensors().to_vec();
        tensors[0].shape.push(2);
        let other = ParamLayout::new(tensors).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = codec.decode(&other, &bytes);
        prop_assert!(matches!(result, Err(WeightsError::LayoutMismatch { .. })), "{result:?}");
        Ok(())
    });
}

/// A container naming another codec is refused with [`WeightsError::WrongCodec`].
pub fn refuses_other_codec(make: MakeWeightCodec<'_>) {
    check("refuses_other_codec", layout_and_update(), |(layout, _)| {
        let codec = make();
        let other = format!("{}-other", codec.wire_id());
        let bytes = write_container(&other, &layout, 1, Vec::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let result = codec.decode(&layout, &bytes);
        prop_assert!(matches!(result, Err(WeightsError::WrongCodec { .. })), "{result:?}");
        Ok(())
    });
}

/// Non-finite or wrongly sized parameters are refused by the encoder.
pub fn refuses_non_finite_params(make: MakeWeightCodec<'_>) {
    check(
        "refuses_non_finite_params",
        (layout_and_update(), any::<prop::sample::Index>()),
        |((layout, mut params), at)| {
            let codec = make();
            let result = codec.encode(&layout, 1, &params[1..]);
            prop_assert!(matches!(result, Err(WeightsError::Size { .. })), "{result:?}");
            let i = at.index(params.len());
            params[i] = f32::NAN;
            let result = codec.encode(&layout, 1, &params);
            prop_assert!(matches!(result, Err(WeightsError::NonFinite(_))), "{result:?}");
            Ok(())
        },
    );
}

/// Arbitrary bytes are refused without a panic.
pub fn arbitrary_bytes_are_refused(make: MakeWeightCodec<'_>) {
    let junk = prop::collection::vec(any::<u8>(), 0..256);
    check("arbitrary_bytes_are_refused", (layout_and_update(), junk), |((layout, _), junk)| {
        prop_assert!(make().decode(&layout, &junk).is_err());
        Ok(())
    });
}

/// Generates one `#[test]` per weight codec conformance check. Invoke once per test module.
#[macro_export]
macro_rules! weight_codec_conformance_tests {
    ($make:expr, $fidelity:expr) => {
        #[test]
        fn weights_conformance_round_trip() {
            $crate::conformance::round_trip(&$make, $fidelity);
        }
        #[test]
        fn weights_conformance_refuses_truncation() {
            $crate::conformance::refuses_truncation(&$make);
        }
        #[test]
        fn weights_conformance_corruption_is_refused_or_finite() {
            $crate::conformance::corruption_is_refused_or_finite(&$make);
        }
        #[test]
        fn weights_conformance_refuses_other_layout() {
            $crate::conformance::refuses_other_layout(&$make);
        }
        #[test]
        fn weights_conformance_refuses_other_codec() {
            $crate::conformance::refuses_other_codec(&$make);
        }
        #[test]
        fn weights_conformance_refuses_non_finite_params() {
            $crate::conformance::refuses_non_finite_params(&$make);
        }
        #[test]
        fn weights_conformance_arbitrary_bytes_are_refused() {
            $crate::conformance::arbitrary_bytes_are_refused(&$make);
        }
    };
}
