//! An example of a plugin shipped as a shared library: the "bf16" gradient codec.
//!
//! Build with `cargo build -p bitnet-dynamic-example` and name the library in a run config:
//!
//! ```toml
//! [plugins]
//! dynamic = ["target/debug/libbitnet_dynamic_example.so"]
//! [codec]
//! type = "bf16"
//! ```
//!
//! Values are rounded to bfloat16 (round to nearest, ties to even): half the bytes of fp32 with
//! 8 bits of mantissa, a reasonable middle ground between "fp32" and "int8-ef".
//!
//! Wire format (little-endian): magic `BF16`, u16 version, u32 tensor count, then per tensor a u64
//! element count, then all values as u16, then the SHA-256 of everything before it.

use bitnet_framework::codec::{CodecError, GradientCodec};
use bitnet_framework::registry::{BuildError, PluginConfig, PluginDecl};
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::{BuildContext, export_dynamic_plugin};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"BF16";
const VERSION: u16 = 1;
const DIGEST: usize = 32;

/// Options of the "bf16" codec (none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bf16Config {}

impl PluginConfig for Bf16Config {
    type Component = dyn GradientCodec;
    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn GradientCodec>, BuildError> {
        Ok(Box::new(Bf16Codec))
    }
}

/// The "bf16" codec.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bf16Codec;

/// f32 to bf16 bits, rounding to nearest with ties to even. NaN stays NaN.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let rounding = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// bf16 bits to f32 (exact).
pub fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

impl GradientCodec for Bf16Codec {
    fn wire_id(&self) -> &str {
        "bf16"
    }

    fn wire_version(&self) -> u16 {
        VERSION
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        if update.len() != layout.total_params() {
            return Err(CodecError::UpdateSize {
                expected: layout.total_params(),
                found: update.len(),
            });
        }
        let n = layout.tensors().len();
        let mut out = Vec::with_capacity(10 + 8 * n + 2 * update.len() + DIGEST);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(n as u32).to_le_bytes());
        for t in layout.tensors() {
            out.extend_from_slice(&(t.numel() as u64).to_le_bytes());
        }
        for &x in update {
            out.extend_from_slice(&to_bf16(x).to_le_bytes());
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        Ok(out)
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        let malformed = |m: &str| CodecError::Malformed(m.to_string());
        if bytes.len() < 10 + DIGEST {
            return Err(malformed("payload shorter than the bf16 header"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - DIGEST);
        if Sha256::digest(body).as_slice() != digest {
            return Err(malformed("checksum mismatch"));
        }
        if &body[..4] != MAGIC {
            return Err(malformed("bad magic (not a bf16 payload)"));
        }
        let version = u16::from_le_bytes([body[4], body[5]]);
        if version != VERSION {
            return Err(malformed(&format!("unsupported bf16 format version {version}")));
        }
        let count = u32::from_le_bytes([body[6], body[7], body[8], body[9]]) as usize;
        if count != layout.tensors().len() {
            return Err(CodecError::Layout(format!(
                "{count} tensors in payload, model has {}",
                layout.tensors().len()
            )));
        }
        let header = 10 + 8 * count;
        if body.len() < header {
            return Err(malformed("truncated tensor table"));
        }
        for (i, t) in layout.tensors().iter().enumerate() {
            let at = 10 + 8 * i;
            let mut len = [0u8; 8];
            len.copy_from_slice(&body[at..at + 8]);
            if u64::from_le_bytes(len) != t.numel() as u64 {
                return Err(CodecError::Layout(format!(
                    "tensor `{}` has {} values in payload, model has {}",
                    t.name,
                    u64::from_le_bytes(len),
                    t.numel()
                )));
            }
        }
        let values = &body[header..];
        if values.len() != 2 * layout.total_params() {
            return Err(malformed("value section length does not match the tensor table"));
        }
        let out: Vec<f32> =
            values.chunks_exact(2).map(|c| from_bf16(u16::from_le_bytes([c[0], c[1]]))).collect();
        for (t, range) in layout.iter() {
            if out[range].iter().any(|x| !x.is_finite()) {
                return Err(CodecError::NonFinite(t.name.clone()));
            }
        }
        Ok(out)
    }
}

fn plugins() -> Vec<PluginDecl> {
    vec![PluginDecl::of::<Bf16Config>("bf16", "bfloat16 updates (example dynamic plugin)")]
}

export_dynamic_plugin!(plugins);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }
}
