//! Weights on disk and on the wire.
//!
//! - The weights container: a safetensors file of the parameter arena, one `F32` tensor per
//!   layout name, with metadata naming the format ([`FORMAT`]), the weight version and the
//!   layout fingerprint. Snapshots and fp32 downloads use it; its reader and writer live in the
//!   `bitnet-container` crate, so this core needs no safetensors.
//! - The `WeightCodec` slot ([`WeightCodec`]): how a worker downloads weights. "fp32" sends the
//!   blob; "ternary" sends BitLinear tensors as packed trits plus their absmean scale
//!   ([`ternary`]).
//!
//! Integrity (SHA-256) is checked by the store and the transport over the whole blob; these
//! readers check structure, names, shapes, dtypes and finiteness, and never panic on bad bytes.

use crate::tensor::ParamLayout;

pub mod ternary;

/// `format` metadata value of every weights container.
pub const FORMAT: &str = "bitnet-weights";
/// Version of the container layout (metadata keys, tensor naming).
pub const FORMAT_VERSION: u32 = 1;
/// Codec id of the plain fp32 blob.
pub const FP32: &str = "fp32";

/// Errors reading or writing weights.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WeightsError {
    /// Not a weights container, or structurally broken.
    #[error("malformed weights: {0}")]
    Malformed(String),
    /// Made by another weight codec.
    #[error("weights are encoded with `{found}`, expected `{expected}`")]
    WrongCodec {
        /// Codec asked for.
        expected: String,
        /// Codec found in the metadata.
        found: String,
    },
    /// Made for another model.
    #[error("weights were written for layout {found}, this model's layout is {expected}")]
    LayoutMismatch {
        /// This model's fingerprint.
        expected: String,
        /// The container's fingerprint.
        found: String,
    },
    /// A tensor is missing, extra, or of the wrong shape or dtype.
    #[error("weights do not match the model layout: {0}")]
    Layout(String),
    /// A tensor holds NaN or infinite values.
    #[error("weights contain non-finite values in tensor `{0}`")]
    NonFinite(String),
    /// The parameters to encode do not fit the layout.
    #[error("{found} parameters to encode, the layout has {expected}")]
    Size {
        /// Layout size.
        expected: usize,
        /// Given size.
        found: usize,
    },
}

/// A decoded weights download or snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    /// The weight version.
    pub version: u64,
    /// An arena laid out by the model's layout.
    pub params: Vec<f32>,
}

/// What a container says about itself, read without decoding any tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Codec id (`fp32`, `ternary`, ...).
    pub codec: String,
    /// Weight version.
    pub version: u64,
    /// Fingerprint of the layout it was written for.
    pub layout_fingerprint: String,
}

/// Encodes weights for download and decodes them on the worker.
pub trait WeightCodec: Send + Sync {
    /// Codec id written into the container's metadata.
    fn wire_id(&self) -> &str;

    /// Whether [`WeightCodec::decode`] returns the exact parameters. Lossy codecs return
    /// parameters the model kernel treats the same way (e.g. the same ternary weights).
    fn is_lossless(&self) -> bool;

    /// Encodes weight version `version`, an arena laid out by `layout`.
    fn encode(
        &self,
        layout: &ParamLayout,
        version: u64,
        params: &[f32],
    ) -> Result<Vec<u8>, WeightsError>;

    /// Decodes a download for `layout`, refusing anything malformed, made by another codec or
    /// for another layout, or non-finite.
    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Weights, WeightsError>;

    /// [`WeightCodec::decode`] into `params` (resized to the layout), reusing its allocation;
    /// returns the version. A worker decodes every version into the same arena instead of
    /// faulting in a fresh one (about 4,700 page faults per download of the small preset). On
    /// an error `params` holds unspecified values.
    fn decode_into(
        &self,
        layout: &ParamLayout,
        bytes: &[u8],
        params: &mut Vec<f32>,
    ) -> Result<u64, WeightsError> {
        let weights = self.decode(layout, bytes)?;
        *params = weights.params;
        Ok(weights.version)
    }
}

/// Little-endian bytes of `values`.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; values.len() * 4];
    for (o, v) in out.chunks_exact_mut(4).zip(values) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Checks `params` fit `layout` and are finite, naming the first bad tensor.
pub fn check_params(layout: &ParamLayout, params: &[f32]) -> Result<(), WeightsError> {
    if params.len() != layout.total_params() {
        return Err(WeightsError::Size { expected: layout.total_params(), found: params.len() });
    }
    for (spec, range) in layout.iter() {
        // Branch-free per block, so the scan vectorises; a block that fails ends it.
        let finite = |block: &[f32]| block.iter().fold(true, |ok, v| ok & v.is_finite());
        if !params[range].chunks(4096).all(finite) {
            return Err(WeightsError::NonFinite(spec.name.clone()));
        }
    }
    Ok(())
}
