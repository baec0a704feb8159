//! The conformance suite every gradient codec runs (feature `conformance`).
//!
//! Each check is a property test over random small layouts and updates. A plugin runs the whole
//! suite with one line in its tests:
//!
//! ```ignore
//! bitnet_framework::codec_conformance_tests!(|| Box::new(Fp32Codec) as Box<dyn GradientCodec>,
//!     Tolerance::Exact);
//! ```
//!
//! Error-feedback codecs add [`error_feedback_converges`].

use super::{CodecError, GradientCodec, wire};
use crate::tensor::{ParamLayout, TensorRole, TensorSpec};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Builds a fresh codec (a fresh worker: no residual).
pub type MakeCodec<'a> = &'a dyn Fn() -> Box<dyn GradientCodec>;

/// How close a round trip must come to the original.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// Bit-exact.
    Exact,
    /// Per tensor, `|decoded - original| <= factor * max|original|` (e.g. `0.5 / 127` for
    /// absmax int8 with round-to-nearest).
    RelativeToTensorMax(f32),
}

impl Tolerance {
    fn factor(self) -> f32 {
        match self {
            Tolerance::Exact => 0.0,
            Tolerance::RelativeToTensorMax(f) => f,
        }
    }
}

const CASES: u32 = 48;

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: CASES, failure_persistence: None, ..Config::default() })
}

fn check<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    if let Err(e) = runner().run(&strategy, test) {
        panic!("codec conformance `{name}` failed: {e}");
    }
}

fn role() -> impl Strategy<Value = TensorRole> {
    prop_oneof![
        Just(TensorRole::Embedding),
        Just(TensorRole::BitLinear),
        Just(TensorRole::Norm),
        Just(TensorRole::Head)
    ]
}

/// Random small layouts: 1 to 5 tensors of 1 or 2 dimensions up to 19.
pub fn layout_strategy() -> impl Strategy<Value = ParamLayout> {
    prop::collection::vec((prop::collection::vec(1usize..20, 1..=2), role()), 1..=5).prop_map(
        |specs| {
            let tensors = specs
                .into_iter()
                .enumerate()
                .map(|(i, (shape, role))| TensorSpec { name: format!("t{i}.weight"), shape, role })
                .collect();
            match ParamLayout::new(tensors) {
                Ok(l) => l,
                // Names are unique and shapes non-empty by construction.
                Err(e) => panic!("generated layout is invalid: {e}"),
            }
        },
    )
}

/// One value: zero now and then, otherwise a mantissa in (-1, 1) times 10^-6 .. 10^3.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        1 => Just(0.0f32),
        9 => (-1.0f32..1.0, -6i32..4).prop_map(|(m, e)| m * 10f32.powi(e)),
    ]
}

/// A random layout and a finite update for it.
pub fn layout_and_update() -> impl Strategy<Value = (ParamLayout, Vec<f32>)> {
    layout_strategy().prop_flat_map(|l| {
        let n = l.total_params();
        (Just(l), prop::collection::vec(value(), n))
    })
}

fn encode_ok(
    codec: &mut dyn GradientCodec,
    layout: &ParamLayout,
    update: &[f32],
) -> Result<Vec<u8>, TestCaseError> {
    codec
        .encode(layout, update)
        .map_err(|e| TestCaseError::fail(format!("encoding a finite update failed: {e}")))
}

fn max_abs(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `decoded` is within `tolerance` of `original`, tensor by tensor.
fn assert_close(
    layout: &ParamLayout,
    original: &[f32],
    decoded: &[f32],
    tolerance: Tolerance,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(decoded.len(), original.len());
    for (spec, range) in layout.iter() {
        let o = &original[range.clone()];
        let d = &decoded[range];
        let max = max_abs(o);
        // A few ulps of slack for the codec's own arithmetic.
        let bound = tolerance.factor() * max * (1.0 + 1e-5) + 4.0 * f32::EPSILON * max;
        for (i, (a, b)) in o.iter().zip(d).enumerate() {
            if tolerance == Tolerance::Exact {
                prop_assert!(a.to_bits() == b.to_bits(), "{}[{i}]: {a} became {b}", spec.name);
            } else {
                prop_assert!((a - b).abs() <= bound, "{}[{i}]: {a} became {b}", spec.name);
            }
        }
    }
    Ok(())
}

/// Decoding what a fresh codec encoded gives the update back within `tolerance`, and the
/// payload is no longer than the codec's [`GradientCodec::max_encoded_len`].
pub fn round_trip(make: MakeCodec<'_>, tolerance: Tolerance) {
    check("round_trip", layout_and_update(), |(layout, update)| {
        let mut codec = make();
        let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        if let Some(max) = codec.max_encoded_len(&layout)
            && bytes.len() > max
        {
            return Err(TestCaseError::fail(format!(
                "a payload of {} bytes exceeds max_encoded_len {max}",
                bytes.len()
            )));
        }
        let decoded = codec
            .decode(&layout, &bytes)
            .map_err(|e| TestCaseError::fail(format!("decoding own payload failed: {e}")))?;
        assert_close(&layout, &update, &decoded, tolerance)
    });
}

/// Every strict prefix of a payload is refused.
pub fn refuses_truncation(make: MakeCodec<'_>) {
    check("refuses_truncation", layout_and_update(), |(layout, update)| {
        let mut codec = make();
        let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        for len in 0..bytes.len() {
            prop_assert!(
                codec.decode(&layout, &bytes[..len]).is_err(),
                "payload truncated to {len} of {} bytes accepted",
                bytes.len()
            );
        }
        Ok(())
    });
}

/// Flipping one to three bits anywhere is detected.
pub fn refuses_bit_flips(make: MakeCodec<'_>) {
    let flips = prop::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..=3);
    check("refuses_bit_flips", (layout_and_update(), flips), |((layout, update), flips)| {
        let mut codec = make();
        let mut bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        let original = bytes.clone();
        for (at, bit) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        // Flips that cancel out leave the payload intact.
        if bytes != original {
            let result = codec.decode(&layout, &bytes);
            prop_assert!(result.is_err(), "corrupted payload accepted (flips {flips:?})");
        }
        Ok(())
    });
}

/// A payload without the magic is refused as malformed.
pub fn refuses_wrong_magic(make: MakeCodec<'_>) {
    check("refuses_wrong_magic", (layout_and_update(), any::<[u8; 4]>()), |((l, u), magic)| {
        prop_assume!(magic != wire::MAGIC);
        let mut codec = make();
        let mut bytes = encode_ok(codec.as_mut(), &l, &u)?;
        bytes[..4].copy_from_slice(&magic);
        wire::reseal(&mut bytes);
        let result = codec.decode(&l, &bytes);
        prop_assert!(matches!(result, Err(CodecError::Malformed(_))), "{result:?}");
        Ok(())
    });
}

/// Rebuilds a payload with another header but the same sections.
fn reframe(
    bytes: &[u8],
    codec_id: &str,
    codec_version: u16,
    layout: &ParamLayout,
    extra_section: Option<Vec<u8>>,
) -> Result<Vec<u8>, TestCaseError> {
    let frame = wire::parse(bytes).map_err(|e| TestCaseError::fail(format!("own payload: {e}")))?;
    let mut sections: Vec<Vec<u8>> = frame.sections.iter().map(|s| s.to_vec()).collect();
    sections.extend(extra_section);
    let lens: Vec<usize> = sections.iter().map(Vec::len).collect();
    wire::seal(codec_id, codec_version, layout, &lens, |i, out| {
        out.copy_from_slice(&sections[i]);
        Ok(())
    })
    .map_err(|e| TestCaseError::fail(format!("reframing failed: {e}")))
}

/// A payload naming another codec id or version is refused with [`CodecError::WrongCodec`].
pub fn refuses_wrong_codec(make: MakeCodec<'_>) {
    check("refuses_wrong_codec", layout_and_update(), |(layout, update)| {
        let mut codec = make();
        let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        let id = codec.wire_id().to_string();
        let version = codec.wire_version();
        let other_id = format!("{id}-other");
        for (wrong_id, wrong_version) in
            [(other_id.as_str(), version), (id.as_str(), version.wrapping_add(1))]
        {
            let wrong = reframe(&bytes, wrong_id, wrong_version, &layout, None)?;
            let result = codec.decode(&layout, &wrong);
            prop_assert!(matches!(result, Err(CodecError::WrongCodec { .. })), "{result:?}");
        }
        Ok(())
    });
}

fn with_extra_tensor(layout: &ParamLayout) -> ParamLayout {
    let mut tensors = layout.tensors().to_vec();
    tensors.push(TensorSpec {
        name: "extra.weight".into(),
        shape: vec![3],
        role: TensorRole::Norm,
    });
    match ParamLayout::new(tensors) {
        Ok(l) => l,
        Err(e) => panic!("extended layout is invalid: {e}"),
    }
}

/// A payload with more or fewer tensors than the model is refused with [`CodecError::Layout`].
pub fn refuses_wrong_tensor_count(make: MakeCodec<'_>) {
    check("refuses_wrong_tensor_count", layout_and_update(), |(layout, update)| {
        let mut codec = make();
        let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        // The model has one tensor more than the payload.
        let bigger = with_extra_tensor(&layout);
        let result = codec.decode(&bigger, &bytes);
        prop_assert!(matches!(result, Err(CodecError::Layout(_))), "{result:?}");
        // The payload has one tensor more than the model (header and table say so honestly).
        let padded =
            reframe(&bytes, codec.wire_id(), codec.wire_version(), &bigger, Some(vec![0; 7]))?;
        let result = codec.decode(&layout, &padded);
        prop_assert!(matches!(result, Err(CodecError::Layout(_))), "{result:?}");
        Ok(())
    });
}

/// A payload for a layout of other shapes (even with equal sizes) is refused with
/// [`CodecError::Layout`].
pub fn refuses_wrong_shapes(make: MakeCodec<'_>) {
    check("refuses_wrong_shapes", layout_and_update(), |(layout, update)| {
        let mut codec = make();
        let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
        let mut grown = layout.tensors().to_vec();
        grown[0].shape.push(2);
        let mut reshaped = layout.tensors().to_vec();
        reshaped[0].shape = vec![1, reshaped[0].numel()];
        for tensors in [grown, reshaped] {
            let other = match ParamLayout::new(tensors) {
                Ok(l) => l,
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            if other == layout {
                continue;
            }
            let result = codec.decode(&other, &bytes);
            prop_assert!(matches!(result, Err(CodecError::Layout(_))), "{result:?}");
        }
        Ok(())
    });
}

/// Updates with NaN or infinite values, or of the wrong size, are refused by the encoder, and
/// the codec stays usable (an error-feedback residual is not poisoned).
pub fn refuses_non_finite_updates(make: MakeCodec<'_>) {
    let bad = prop_oneof![Just(f32::NAN), Just(f32::INFINITY), Just(f32::NEG_INFINITY)];
    check(
        "refuses_non_finite_updates",
        (layout_and_update(), any::<prop::sample::Index>(), bad),
        |((layout, update), at, bad)| {
            let mut codec = make();
            let mut poisoned = update.clone();
            let i = at.index(poisoned.len());
            poisoned[i] = bad;
            let result = codec.encode(&layout, &poisoned);
            prop_assert!(matches!(result, Err(CodecError::NonFinite(_))), "{result:?}");
            let result = codec.encode(&layout, &update[..update.len() - 1]);
            prop_assert!(matches!(result, Err(CodecError::UpdateSize { .. })), "{result:?}");
            let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
            let decoded = codec
                .decode(&layout, &bytes)
                .map_err(|e| TestCaseError::fail(format!("decode after refusal: {e}")))?;
            prop_assert!(decoded.iter().all(|v| v.is_finite()));
            Ok(())
        },
    );
}

/// Sections replaced by arbitrary bytes under a valid checksum (a crafted payload) decode to an
/// error or to finite values of the right size, and never panic. Sections of all-ones bytes
/// (NaN in IEEE floats) are checked every time.
pub fn crafted_sections_are_refused_or_finite(make: MakeCodec<'_>) {
    let noise = prop::collection::vec(any::<u8>(), 0..64);
    check(
        "crafted_sections_are_refused_or_finite",
        (layout_and_update(), noise, any::<bool>()),
        |((layout, update), noise, all_ones)| {
            let mut codec = make();
            let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
            let frame = wire::parse(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let lens: Vec<usize> = frame.sections.iter().map(|s| s.len()).collect();
            let crafted =
                wire::seal(codec.wire_id(), codec.wire_version(), &layout, &lens, |_, out| {
                    for (i, b) in out.iter_mut().enumerate() {
                        *b = if all_ones || noise.is_empty() {
                            0xff
                        } else {
                            noise[i % noise.len()]
                        };
                    }
                    Ok(())
                })
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Ok(values) = codec.decode(&layout, &crafted) {
                prop_assert_eq!(values.len(), layout.total_params());
                prop_assert!(values.iter().all(|v| v.is_finite()), "non-finite values accepted");
            }
            Ok(())
        },
    );
}

/// Arbitrary bytes, with or without the magic in front, are refused without a panic.
pub fn arbitrary_bytes_are_refused(make: MakeCodec<'_>) {
    let junk = prop::collection::vec(any::<u8>(), 0..256);
    check(
        "arbitrary_bytes_are_refused",
        (layout_strategy(), junk, any::<bool>()),
        |(l, j, magic)| {
            let codec = make();
            let mut bytes = j;
            if magic {
                let mut framed = wire::MAGIC.to_vec();
                framed.extend_from_slice(&wire::FORMAT_VERSION.to_le_bytes());
                framed.extend_from_slice(&bytes);
                bytes = framed;
            }
            prop_assert!(codec.decode(&l, &bytes).is_err());
            Ok(())
        },
    );
}

/// For error-feedback codecs: sending the same update `T` times, the decoded updates add up to
/// `T * update` within one step's quantization error, however many steps (the mean error decays
/// as `1 / T`), even for values far below the codec's resolution. `tolerance` is the
/// one-step tolerance of the wrapped codec.
pub fn error_feedback_converges(make: MakeCodec<'_>, tolerance: Tolerance) {
    const STEPS: usize = 64;
    check("error_feedback_converges", layout_and_update(), |(layout, mut update)| {
        // One large value per tensor, so the rest sits below an absmax codec's resolution.
        for (_, range) in layout.iter() {
            let max = max_abs(&update[range.clone()]).max(1e-3);
            update[range.start] = 200.0 * max;
        }
        let mut codec = make();
        let mut sum = vec![0.0f64; update.len()];
        for _ in 0..STEPS {
            let bytes = encode_ok(codec.as_mut(), &layout, &update)?;
            let decoded =
                codec.decode(&layout, &bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            for (s, d) in sum.iter_mut().zip(&decoded) {
                *s += f64::from(*d);
            }
        }
        for (spec, range) in layout.iter() {
            let max = f64::from(max_abs(&update[range.clone()]));
            // One step's error on update + residual (the residual is at most one step's error
            // itself), plus f32 rounding of the running residual.
            let bound = 3.0 * f64::from(tolerance.factor()) * max
                + STEPS as f64 * 8.0 * f64::from(f32::EPSILON) * max;
            for i in range {
                let want = STEPS as f64 * f64::from(update[i]);
                let err = (sum[i] - want).abs();
                prop_assert!(
                    err <= bound,
                    "{}: after {STEPS} steps the sum is {} for {want} (error {err} > {bound})",
                    spec.name,
                    sum[i]
                );
            }
        }
        Ok(())
    });
}

/// Generates one `#[test]` per conformance check for a codec.
///
/// `$make` is a closure returning a fresh `Box<dyn GradientCodec>`, `$tolerance` its
/// [`Tolerance`]. Invoke once per test module.
#[macro_export]
macro_rules! codec_conformance_tests {
    ($make:expr, $tolerance:expr) => {
        #[test]
        fn conformance_round_trip() {
            $crate::codec::conformance::round_trip(&$make, $tolerance);
        }
        #[test]
        fn conformance_refuses_truncation() {
            $crate::codec::conformance::refuses_truncation(&$make);
        }
        #[test]
        fn conformance_refuses_bit_flips() {
            $crate::codec::conformance::refuses_bit_flips(&$make);
        }
        #[test]
        fn conformance_refuses_wrong_magic() {
            $crate::codec::conformance::refuses_wrong_magic(&$make);
        }
        #[test]
        fn conformance_refuses_wrong_codec() {
            $crate::codec::conformance::refuses_wrong_codec(&$make);
        }
        #[test]
        fn conformance_refuses_wrong_tensor_count() {
            $crate::codec::conformance::refuses_wrong_tensor_count(&$make);
        }
        #[test]
        fn conformance_refuses_wrong_shapes() {
            $crate::codec::conformance::refuses_wrong_shapes(&$make);
        }
        #[test]
        fn conformance_refuses_non_finite_updates() {
            $crate::codec::conformance::refuses_non_finite_updates(&$make);
        }
        #[test]
        fn conformance_crafted_sections_are_refused_or_finite() {
            $crate::codec::conformance::crafted_sections_are_refused_or_finite(&$make);
        }
        #[test]
        fn conformance_arbitrary_bytes_are_refused() {
            $crate::codec::conformance::arbitrary_bytes_are_refused(&$make);
        }
    };
}
