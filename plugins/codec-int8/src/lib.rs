//! Gradient codecs "int8" and "int8-ef".
//!
//! Each tensor is sent as one f32 scale `s = max|g| / 127` followed by `round(g / s)` as int8
//! (values in -127..=127, round half to even): about a quarter of fp32's bytes, with an error of
//! at most `s / 2` per value. "int8-ef" wraps the same codec in
//! [`ErrorFeedback`](bitnet_framework::codec::ErrorFeedback), so what each worker loses to
//! rounding is carried into its next update; both read and write the same payloads.

use bitnet_framework::codec::{CodecError, ErrorFeedback, GradientCodec, check_update, wire};
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::{BuildContext, register_plugin};
use serde::{Deserialize, Serialize};

/// Wire id of both codecs (error feedback does not change the payload).
pub const WIRE_ID: &str = "int8";
/// Version of this codec's section format.
pub const WIRE_VERSION: u16 = 1;
/// One-step tolerance: `|decoded - g| <= TOLERANCE * max|g|` per tensor.
pub const TOLERANCE: f32 = 0.5 / 127.0;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer,
/// ties to even, in two vectorisable additions (`round_ties_even` is a libm call without
/// SSE4.1).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// The per-tensor absmax int8 codec, without error feedback. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Int8Codec;

fn encode_tensor(values: &[f32], out: &mut [u8]) {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = max / 127.0;
    let (head, body) = out.split_at_mut(4);
    head.copy_from_slice(&scale.to_le_bytes());
    if max == 0.0 {
        // All zeros: the zeroed section already says so.
        return;
    }
    let inv = 127.0 / max;
    for (o, v) in body.iter_mut().zip(values) {
        let q = ((v * inv + ROUND_MAGIC) - ROUND_MAGIC).clamp(-127.0, 127.0);
        *o = (q as i8) as u8;
    }
}

/// [`encode_tensor`], then replaces each value with `value - decoded`, computed exactly as the
/// decoder computes `decoded` (`f32::from(q) * scale`), so the result is bit-identical to
/// encoding, decoding and subtracting.
fn encode_tensor_keep_error(values: &mut [f32], out: &mut [u8]) {
    encode_tensor(values, out);
    let scale = f32::from_le_bytes([out[0], out[1], out[2], out[3]]);
    for (v, &b) in values.iter_mut().zip(&out[4..]) {
        *v -= f32::from(b as i8) * scale;
    }
}

/// A payload of one section per tensor (a scale and `numel` int8 values), each written by
/// `fill(tensor index, section)`.
fn seal_sections(
    layout: &ParamLayout,
    mut fill: impl FnMut(usize, &mut [u8]),
) -> Result<Vec<u8>, CodecError> {
    let lens: Vec<usize> = layout.tensors().iter().map(|t| 4 + t.numel()).collect();
    wire::seal(WIRE_ID, WIRE_VERSION, layout, &lens, |i, out| {
        fill(i, out);
        Ok(())
    })
}

impl GradientCodec for Int8Codec {
    fn wire_id(&self) -> &str {
        WIRE_ID
    }

    fn wire_version(&self) -> u16 {
        WIRE_VERSION
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        check_update(layout, update)?;
        seal_sections(layout, |i, out| encode_tensor(&update[layout.range(i)], out))
    }

    fn encode_keep_error(
        &mut self,
        layout: &ParamLayout,
        values: &mut [f32],
    ) -> Result<Vec<u8>, CodecError> {
        check_update(layout, values)?;
        seal_sections(layout, |i, out| encode_tensor_keep_error(&mut values[layout.range(i)], out))
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        let sections = wire::open(bytes, WIRE_ID, WIRE_VERSION, layout)?;
        let mut out = vec![0.0f32; layout.total_params()];
        for ((spec, range), section) in layout.iter().zip(sections) {
            if section.len() != 4 + spec.numel() {
                return Err(CodecError::Malformed(format!(
                    "tensor `{}`: {} bytes for a scale and {} int8 values",
                    spec.name,
                    section.len(),
                    spec.numel()
                )));
            }
            let scale = f32::from_le_bytes([section[0], section[1], section[2], section[3]]);
            if !(scale * 127.0).is_finite() {
                return Err(CodecError::NonFinite(spec.name.clone()));
            }
            if scale < 0.0 {
                return Err(CodecError::Malformed(format!(
                    "tensor `{}` has a negative scale {scale}",
                    spec.name
                )));
            }
            let values = &section[4..];
            if values.contains(&0x80) {
                return Err(CodecError::Malformed(format!(
                    "tensor `{}` holds -128, outside the codec's -127..=127",
                    spec.name
                )));
            }
            for (o, &b) in out[range].iter_mut().zip(values) {
                *o = f32::from(b as i8) * scale;
            }
        }
        Ok(out)
    }
}

/// Options of "int8" (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Int8Config {}

impl PluginConfig for Int8Config {
    type Component = dyn GradientCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(Int8Codec))
    }
}

/// Options of "int8-ef" (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Int8EfConfig {}

impl PluginConfig for Int8EfConfig {
    type Component = dyn GradientCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(ErrorFeedback::new(Int8Codec)))
    }
}

register_plugin!(Int8Config, "int8", "Per-tensor absmax int8 updates, no error feedback.");
register_plugin!(
    Int8EfConfig,
    "int8-ef",
    "Per-tensor absmax int8 updates with a per-worker error-feedback residual."
);

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tensor::{TensorRole, TensorSpec};

    fn layout(n: usize) -> ParamLayout {
        ParamLayout::new(vec![TensorSpec {
            name: "w".into(),
            shape: vec![n],
            role: TensorRole::BitLinear,
        }])
        .expect("layout")
    }

    #[test]
    fn scale_is_absmax_over_127_and_values_round_half_even() {
        // max = 127 so the scale is 1 and values are rounded as they are.
        let update = [127.0f32, -0.5, 0.5, 1.5, 2.5, -127.0, 0.0];
        let l = layout(update.len());
        let bytes = Int8Codec.encode(&l, &update).expect("encode");
        let decoded = Int8Codec.decode(&l, &bytes).expect("decode");
        assert_eq!(decoded, vec![127.0, -0.0, 0.0, 2.0, 2.0, -127.0, 0.0]);
        assert_eq!(bytes.len(), wire::payload_len(WIRE_ID, &[4 + update.len()]));
    }

    #[test]
    fn all_zero_tensor_round_trips() {
        let l = layout(5);
        let bytes = Int8Codec.encode(&l, &[0.0; 5]).expect("encode");
        assert_eq!(Int8Codec.decode(&l, &bytes), Ok(vec![0.0; 5]));
    }

    #[test]
    fn crafted_scales_and_values_are_refused() {
        let l = layout(3);
        let good = Int8Codec.encode(&l, &[1.0, 2.0, 3.0]).expect("encode");
        let scale_at = wire::payload_len(WIRE_ID, &[7]) - 4 - 7;
        for (bad_scale, want_nonfinite) in
            [(f32::NAN, true), (f32::INFINITY, true), (f32::MAX, true), (-1.0, false)]
        {
            let mut bytes = good.clone();
            bytes[scale_at..scale_at + 4].copy_from_slice(&bad_scale.to_le_bytes());
            wire::reseal(&mut bytes);
            let err = Int8Codec.decode(&l, &bytes).expect_err("bad scale");
            assert_eq!(matches!(err, CodecError::NonFinite(_)), want_nonfinite, "{err}");
        }
        let mut bytes = good;
        bytes[scale_at + 4] = 0x80;
        wire::reseal(&mut bytes);
        assert!(matches!(Int8Codec.decode(&l, &bytes), Err(CodecError::Malformed(_))));
    }

    #[test]
    fn plain_and_error_feedback_share_the_wire_format() {
        let l = layout(4);
        let update = [0.1f32, -0.2, 0.3, 0.001];
        let mut ef = ErrorFeedback::new(Int8Codec);
        let bytes = ef.encode(&l, &update).expect("encode");
        assert_eq!(Int8Codec.decode(&l, &bytes), ef.decode(&l, &bytes));
    }

    #[test]
    fn error_feedback_recovers_values_below_resolution() {
        // 0.001 is far below half a step (1 / 254): plain int8 sends 0 every time, error
        // feedback sends a 1-step value every few calls.
        let l = layout(2);
        let update = [1.0f32, 0.001];
        let mut ef = ErrorFeedback::new(Int8Codec);
        let mut plain_sum = 0.0f32;
        let mut ef_sum = 0.0f32;
        for _ in 0..1000 {
            let p = Int8Codec.encode(&l, &update).expect("encode");
            plain_sum += Int8Codec.decode(&l, &p).expect("decode")[1];
            let e = ef.encode(&l, &update).expect("encode");
            ef_sum += ef.decode(&l, &e).expect("decode")[1];
        }
        assert_eq!(plain_sum, 0.0);
        assert!((ef_sum - 1.0).abs() <= 1.0 / 127.0, "{ef_sum}");
        assert!((ef.residual()[1] - (1.0 - ef_sum)).abs() < 1e-4);
    }

    /// Int8 through the trait's default `encode_keep_error` (encode, decode, subtract).
    struct ViaDecode;

    impl GradientCodec for ViaDecode {
        fn wire_id(&self) -> &str {
            WIRE_ID
        }
        fn wire_version(&self) -> u16 {
            WIRE_VERSION
        }
        fn encode(&mut self, l: &ParamLayout, u: &[f32]) -> Result<Vec<u8>, CodecError> {
            Int8Codec.encode(l, u)
        }
        fn decode(&self, l: &ParamLayout, b: &[u8]) -> Result<Vec<f32>, CodecError> {
            Int8Codec.decode(l, b)
        }
    }

    proptest::proptest! {
        #[test]
        fn one_pass_error_is_bit_identical_to_encode_decode_subtract(
            values in proptest::collection::vec(-1e3f32..1e3, 1..300),
            split in 0usize..300,
        ) {
            let split = split.min(values.len());
            let specs = [("a", split), ("b", values.len() - split)]
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(name, n)| TensorSpec { name: name.into(), shape: vec![n], role: TensorRole::BitLinear })
                .collect();
            let l = ParamLayout::new(specs).expect("layout");
            let (mut fast, mut slow) = (values.clone(), values.clone());
            let a = Int8Codec.encode_keep_error(&l, &mut fast).expect("one pass");
            let b = ViaDecode.encode_keep_error(&l, &mut slow).expect("default");
            proptest::prop_assert_eq!(a, b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(bits(&fast), bits(&slow));
        }
    }

    #[test]
    fn one_pass_error_feedback_refuses_non_finite_and_keeps_the_residual() {
        let l = layout(2);
        let mut ef = ErrorFeedback::new(Int8Codec);
        ef.encode(&l, &[1.0, 0.001]).expect("encode");
        let before = ef.residual().to_vec();
        assert!(ef.encode(&l, &[f32::NAN, 0.0]).is_err());
        assert_eq!(ef.residual(), &before[..], "a refused update carries nothing over");
    }

    mod plain {
        use super::super::*;
        use bitnet_framework::codec::conformance::Tolerance;

        bitnet_framework::codec_conformance_tests!(
            || Box::new(Int8Codec) as Box<dyn GradientCodec>,
            Tolerance::RelativeToTensorMax(TOLERANCE)
        );
    }

    mod with_error_feedback {
        use super::super::*;
        use bitnet_framework::codec::conformance::{Tolerance, error_feedback_converges};

        bitnet_framework::codec_conformance_tests!(
            || Box::new(ErrorFeedback::new(Int8Codec)) as Box<dyn GradientCodec>,
            Tolerance::RelativeToTensorMax(TOLERANCE)
        );

        #[test]
        fn conformance_error_feedback_converges() {
            error_feedback_converges(
                &|| Box::new(ErrorFeedback::new(Int8Codec)) as Box<dyn GradientCodec>,
                Tolerance::RelativeToTensorMax(TOLERANCE),
            );
        }
    }
}
