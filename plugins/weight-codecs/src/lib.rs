//! Weight download codecs "fp32" and "ternary".
//!
//! - "fp32": the weights blob itself ([`bitnet_container::write_blob`]), lossless.
//! - "ternary", for async-sgd workers, whose forward pass and straight-through backward only see
//!   the quantized BitLinear weights: each BitLinear tensor is sent as its trits packed five to
//!   a byte plus its absmean scale (about 1.6 bits per weight); every other tensor as f32. The
//!   decoder rebuilds latent weights that the kernel's quantizer maps back to the same trits and
//!   scale ([`ternary::dequantize_latent`]), so a worker computes the same forward and gradient
//!   as with the fp32 download.

use bitnet_container::Dtype;
use bitnet_container::{
    ContainerTensor, open_container, read_blob, read_f32_into, tensor, write_blob, write_container,
};
use bitnet_framework::registry::{BuildError, PluginConfig};
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use bitnet_framework::weights::{
    FP32, WeightCodec, Weights, WeightsError, check_params, f32_bytes, ternary,
};
use bitnet_framework::{BuildContext, register_plugin};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Codec id of the ternary download.
pub const TERNARY: &str = "ternary";
/// Suffix of the tensor holding a BitLinear tensor's absmean scale.
pub const SCALE_SUFFIX: &str = "::absmean";

/// The lossless "fp32" download.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fp32Weights;

impl WeightCodec for Fp32Weights {
    fn wire_id(&self) -> &str {
        FP32
    }

    fn is_lossless(&self) -> bool {
        true
    }

    fn encode(
        &self,
        layout: &ParamLayout,
        version: u64,
        params: &[f32],
    ) -> Result<Vec<u8>, WeightsError> {
        write_blob(layout, version, params)
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Weights, WeightsError> {
        read_blob(layout, bytes)
    }
}

/// The "ternary" download.
#[derive(Debug, Clone, Copy, Default)]
pub struct TernaryWeights;

fn check_names(layout: &ParamLayout) -> Result<(), WeightsError> {
    match layout.tensors().iter().find(|t| t.name.ends_with(SCALE_SUFFIX)) {
        Some(t) => Err(WeightsError::Layout(format!(
            "tensor name `{}` collides with the ternary codec's scale tensors",
            t.name
        ))),
        None => Ok(()),
    }
}

impl WeightCodec for TernaryWeights {
    fn wire_id(&self) -> &str {
        TERNARY
    }

    fn is_lossless(&self) -> bool {
        false
    }

    fn encode(
        &self,
        layout: &ParamLayout,
        version: u64,
        params: &[f32],
    ) -> Result<Vec<u8>, WeightsError> {
        check_params(layout, params)?;
        check_names(layout)?;
        // Tensors quantize independently: on the current rayon pool (a coordinator encodes each
        // version while its workers wait for it), then in layout order.
        let specs: Vec<_> = layout.iter().collect();
        let parts: Vec<Vec<ContainerTensor<'_>>> = specs
            .par_iter()
            .map(|(spec, range)| {
                let values = &params[range.clone()];
                if spec.role == TensorRole::BitLinear {
                    let mut packed = Vec::new();
                    let g = ternary::quantize_packed(values, &mut packed);
                    vec![
                        ContainerTensor {
                            name: spec.name.clone(),
                            dtype: Dtype::U8,
                            shape: vec![packed.len()],
                            data: Cow::Owned(packed),
                        },
                        ContainerTensor {
                            name: format!("{}{SCALE_SUFFIX}", spec.name),
                            dtype: Dtype::F32,
                            shape: vec![1],
                            data: Cow::Owned(g.to_le_bytes().to_vec()),
                        },
                    ]
                } else {
                    vec![ContainerTensor {
                        name: spec.name.clone(),
                        dtype: Dtype::F32,
                        shape: spec.shape.clone(),
                        data: Cow::Owned(f32_bytes(values)),
                    }]
                }
            })
            .collect();
        write_container(TERNARY, layout, version, parts.into_iter().flatten().collect())
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Weights, WeightsError> {
        let mut params = Vec::new();
        let version = self.decode_into(layout, bytes, &mut params)?;
        Ok(Weights { version, params })
    }

    fn decode_into(
        &self,
        layout: &ParamLayout,
        bytes: &[u8],
        params: &mut Vec<f32>,
    ) -> Result<u64, WeightsError> {
        check_names(layout)?;
        let bitlinear = layout.tensors().iter().filter(|t| t.role == TensorRole::BitLinear);
        let expected = layout.tensors().len() + bitlinear.count();
        let (info, st) = open_container(bytes, TERNARY, layout, expected)?;
        // Every element is written below (the layout's ranges tile the arena).
        params.resize(layout.total_params(), 0.0);
        let mut trits = Vec::new();
        for (spec, range) in layout.iter() {
            let out = &mut params[range];
            if spec.role != TensorRole::BitLinear {
                let view = tensor(&st, &spec.name, Dtype::F32, &spec.shape)?;
                read_f32_into(&spec.name, view.data(), out)?;
                continue;
            }
            let packed_len = ternary::packed_len(out.len());
            let packed = tensor(&st, &spec.name, Dtype::U8, &[packed_len])?;
            trits.resize(out.len(), 0i8);
            ternary::unpack(packed.data(), &mut trits)
                .map_err(|e| WeightsError::Malformed(format!("tensor `{}`: {e}", spec.name)))?;
            let scale_name = format!("{}{SCALE_SUFFIX}", spec.name);
            let scale_view = tensor(&st, &scale_name, Dtype::F32, &[1])?;
            let mut g = [0.0f32];
            read_f32_into(&scale_name, scale_view.data(), &mut g)?;
            if !ternary::dequantize_latent(&trits, g[0], out) {
                return Err(WeightsError::Malformed(format!(
                    "tensor `{}`: scale {} is not the absmean of any weights with these trits",
                    spec.name, g[0]
                )));
            }
        }
        Ok(info.version)
    }
}

/// Options of "fp32" (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fp32WeightsConfig {}

impl PluginConfig for Fp32WeightsConfig {
    type Component = dyn WeightCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn WeightCodec>, BuildError> {
        Ok(Box::new(Fp32Weights))
    }
}

/// Options of "ternary" (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TernaryWeightsConfig {}

impl PluginConfig for TernaryWeightsConfig {
    type Component = dyn WeightCodec;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn WeightCodec>, BuildError> {
        Ok(Box::new(TernaryWeights))
    }
}

register_plugin!(Fp32WeightsConfig, "fp32", "Full f32 weights (the snapshot blob), lossless.");
register_plugin!(
    TernaryWeightsConfig,
    "ternary",
    "BitLinear weights as packed trits plus absmean scale, the rest f32 (async-sgd)."
);

/// Bytes of a download of `layout` with each codec, without encoding anything: `(fp32,
/// ternary)` payload sizes excluding the small safetensors header.
pub fn tensor_bytes(layout: &ParamLayout) -> (usize, usize) {
    let fp32 = layout.total_params() * 4;
    let ternary = layout
        .tensors()
        .iter()
        .map(|t| {
            if t.role == TensorRole::BitLinear {
                ternary::packed_len(t.numel()) + 4
            } else {
                t.numel() * 4
            }
        })
        .sum();
    (fp32, ternary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tensor::TensorSpec;

    mod fp32 {
        use super::super::*;
        use bitnet_container::conformance::Fidelity;
        bitnet_container::weight_codec_conformance_tests!(
            || Box::new(Fp32Weights) as Box<dyn WeightCodec>,
            Fidelity::Exact
        );
    }

    mod ternary_codec {
        use super::super::*;
        use bitnet_container::conformance::Fidelity;
        bitnet_container::weight_codec_conformance_tests!(
            || Box::new(TernaryWeights) as Box<dyn WeightCodec>,
            Fidelity::TernaryEquivalent
        );
    }

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            TensorSpec { name: "emb".into(), shape: vec![4, 8], role: TensorRole::Embedding },
            TensorSpec { name: "q".into(), shape: vec![8, 8], role: TensorRole::BitLinear },
            TensorSpec { name: "n".into(), shape: vec![8], role: TensorRole::Norm },
        ])
        .expect("layout")
    }

    #[test]
    fn ternary_is_much_smaller_and_keeps_other_tensors_exact() {
        let l = layout();
        let params: Vec<f32> =
            (0..l.total_params()).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let t = TernaryWeights.encode(&l, 3, &params).expect("encode");
        let f = Fp32Weights.encode(&l, 3, &params).expect("encode");
        let (fp32_bytes, ternary_bytes) = tensor_bytes(&l);
        assert!(t.len() < f.len() && ternary_bytes < fp32_bytes);
        let w = TernaryWeights.decode(&l, &t).expect("decode");
        assert_eq!(w.version, 3);
        assert_eq!(&w.params[..32], &params[..32]);
        assert_eq!(&w.params[96..], &params[96..]);
    }

    /// Found by fuzzing: a blob whose scale (here subnormal) no weights with its trits could
    /// have is refused with a message naming the tensor, not decoded to weights that encode to
    /// different trits.
    #[test]
    fn a_scale_that_contradicts_its_trits_is_refused() {
        let l = layout();
        let params: Vec<f32> = (0..l.total_params()).map(|i| (i % 3) as f32 - 1.0).collect();
        let mut blob = TernaryWeights.encode(&l, 2, &params).expect("encode");
        let g = ternary::absmean(&params[32..96]).to_le_bytes();
        let at = blob.windows(4).position(|w| w == g).expect("the scale is in the blob");
        blob[at..at + 4].copy_from_slice(&3.9e-39f32.to_le_bytes());
        match TernaryWeights.decode(&l, &blob) {
            Err(WeightsError::Malformed(m)) => {
                assert!(m.contains("`q`") && m.contains("scale"), "{m}")
            }
            other => panic!("expected a malformed-blob error, got {other:?}"),
        }
    }

    #[test]
    fn an_fp32_download_is_not_read_as_ternary() {
        let l = layout();
        let f = Fp32Weights.encode(&l, 1, &vec![0.5; l.total_params()]).expect("encode");
        assert!(matches!(TernaryWeights.decode(&l, &f), Err(WeightsError::WrongCodec { .. })));
        let t = TernaryWeights.encode(&l, 1, &vec![0.5; l.total_params()]).expect("encode");
        assert!(matches!(Fp32Weights.decode(&l, &t), Err(WeightsError::WrongCodec { .. })));
    }
}
