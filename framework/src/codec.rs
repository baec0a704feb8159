//! The `GradientCodec` slot: per-tensor update compression for the wire.

use crate::tensor::ParamLayout;

/// Errors of a codec. Decoding errors must name what was wrong; they are returned to the
/// uploader as a 4xx and never touch the weights.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    /// The payload is malformed (bad magic, truncated, wrong checksum, wrong sizes, ...).
    #[error("malformed update payload: {0}")]
    Malformed(String),
    /// The payload was made for another codec or version.
    #[error("payload is for codec `{found}`, this is `{expected}`")]
    WrongCodec {
        /// Codec id this decoder handles.
        expected: String,
        /// Codec id found in the payload.
        found: String,
    },
    /// Payload shapes do not match the model.
    #[error("payload does not match the model layout: {0}")]
    Layout(String),
    /// The payload decodes to NaN or infinite values.
    #[error("payload contains non-finite values in tensor `{0}`")]
    NonFinite(String),
    /// The update to encode does not fit the layout.
    #[error("update to encode has {found} values, the layout has {expected}")]
    UpdateSize {
        /// Layout size.
        expected: usize,
        /// Update size.
        found: usize,
    },
}

/// Encodes an arena-sized update to bytes and back. Encoders may keep state across calls (one
/// codec instance per worker), e.g. an error-feedback residual.
pub trait GradientCodec: Send + Sync {
    /// Identifier written into every payload.
    fn wire_id(&self) -> &str;

    /// Version of the wire format.
    fn wire_version(&self) -> u16;

    /// Encodes `update` (laid out by `layout`).
    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError>;

    /// Decodes a payload into an arena-sized update, refusing anything malformed or non-finite.
    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError>;
}
