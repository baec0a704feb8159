//! Gradient codec "fp32": every value as a little-endian f32, in the shared wire framing.
//!
//! Lossless and the baseline the compressed codecs are measured against (4 bytes per parameter
//! plus a header of 16 bytes per tensor).

use bitnet_framework::codec::{CodecError, GradientCodec, check_update, wire};
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::{BuildContext, register_plugin};
use serde::{Deserialize, Serialize};

/// Wire id of the codec.
pub const WIRE_ID: &str = "fp32";
/// Version of this codec's section format.
pub const WIRE_VERSION: u16 = 1;

/// The "fp32" codec. Stateless.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp32Codec;

impl GradientCodec for Fp32Codec {
    fn wire_id(&self) -> &str {
        WIRE_ID
    }

    fn wire_version(&self) -> u16 {
        WIRE_VERSION
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        check_update(layout, update)?;
        let lens: Vec<usize> = layout.tensors().iter().map(|t| t.numel() * 4).collect();
        wire::seal(WIRE_ID, WIRE_VERSION, layout, &lens, |i, out| {
            for (o, v) in out.chunks_exact_mut(4).zip(&update[layout.range(i)]) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        })
    }

    fn max_encoded_len(&self, layout: &ParamLayout) -> Option<usize> {
        let lens: Vec<usize> = layout.tensors().iter().map(|t| t.numel() * 4).collect();
        Some(wire::payload_len(WIRE_ID, &lens))
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        let sections = wire::open(bytes, WIRE_ID, WIRE_VERSION, layout)?;
        let mut out = vec![0.0f32; layout.total_params()];
        for ((spec, range), section) in layout.iter().zip(sections) {
            if section.len() != spec.numel() * 4 {
                return Err(CodecError::Malformed(format!(
                    "tensor `{}`: {} bytes for {} f32 values",
                    spec.name,
                    section.len(),
                    spec.numel()
                )));
            }
            let mut finite = true;
            for (o, c) in out[range].iter_mut().zip(section.chunks_exact(4)) {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                finite &= v.is_finite();
                *o = v;
            }
            if !finite {
                return Err(CodecError::NonFinite(spec.name.clone()));
            }
        }
        Ok(out)
    }
}

/// Options of "fp32" (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fp32Config {}

impl PluginConfig for Fp32Config {
    type Component = dyn GradientCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(Fp32Codec))
    }
}

register_plugin!(Fp32Config, "fp32", "Uncompressed little-endian f32 updates (lossless).");

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::codec::conformance::Tolerance;
    use bitnet_framework::tensor::{TensorRole, TensorSpec};

    bitnet_framework::codec_conformance_tests!(
        || Box::new(Fp32Codec) as Box<dyn GradientCodec>,
        Tolerance::Exact
    );

    #[test]
    fn nan_in_a_resealed_payload_is_refused_by_name() {
        let layout = ParamLayout::new(vec![TensorSpec {
            name: "blocks.0.ffn_norm.weight".into(),
            shape: vec![3],
            role: TensorRole::Norm,
        }])
        .expect("layout");
        let mut codec = Fp32Codec;
        let mut bytes = codec.encode(&layout, &[1.0, 2.0, 3.0]).expect("encode");
        let at = bytes.len() - 4 - 4; // last value, before the checksum
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        wire::reseal(&mut bytes);
        assert_eq!(
            codec.decode(&layout, &bytes),
            Err(CodecError::NonFinite("blocks.0.ffn_norm.weight".into()))
        );
    }

    #[test]
    fn payload_size_is_four_bytes_per_value_plus_framing() {
        let layout = ParamLayout::new(vec![
            TensorSpec { name: "a".into(), shape: vec![10, 10], role: TensorRole::BitLinear },
            TensorSpec { name: "b".into(), shape: vec![10], role: TensorRole::Norm },
        ])
        .expect("layout");
        let bytes = Fp32Codec.encode(&layout, &[0.5; 110]).expect("encode");
        assert_eq!(bytes.len(), wire::payload_len(WIRE_ID, &[400, 40]));
    }
}
