//! The `GradientCodec` slot: per-tensor update compression for the wire.
//!
//! - [`wire`]: the framing every codec's payload shares (magic, versions, layout fingerprint,
//!   tensor table, CRC32).
//! - [`ErrorFeedback`]: a decorator that adds a per-worker error-feedback residual to any codec.
//! - `conformance` (feature `conformance`): the suite every codec plugin runs in its tests.

use crate::tensor::ParamLayout;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod feedback;
pub mod wire;

pub use feedback::ErrorFeedback;

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
/// codec instance per worker), e.g. an error-feedback residual; decoding is stateless, so one
/// instance on the coordinator serves every worker.
///
/// Encoders refuse updates that do not fit the layout or hold NaN or infinite values; decoders
/// refuse anything malformed, made by another codec, made for another layout, or decoding to
/// non-finite values. Neither ever panics on bad input.
pub trait GradientCodec: Send + Sync {
    /// Identifier written into every payload.
    fn wire_id(&self) -> &str;

    /// Version of the wire format.
    fn wire_version(&self) -> u16;

    /// Encodes `update` (laid out by `layout`).
    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError>;

    /// Decodes a payload into an arena-sized update, refusing anything malformed or non-finite.
    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError>;

    /// The longest payload [`Self::decode`] accepts for `layout`, when the codec knows it. The
    /// coordinator limits upload bodies to it (plus a little slack), so a request larger than
    /// any valid update is refused before it is read. `None` (the default): unknown; only the
    /// configured `coordinator.max_upload_bytes` applies.
    fn max_encoded_len(&self, layout: &ParamLayout) -> Option<usize> {
        let _ = layout;
        None
    }

    /// Encodes `values` like [`Self::encode`] and replaces each value with what the encoding
    /// lost, `value - decode(payload)` (what [`ErrorFeedback`] carries to the next update). The
    /// default encodes, decodes and subtracts; a codec may override it to do the same in one
    /// pass, with bit-identical results. On error `values` may hold anything.
    fn encode_keep_error(
        &mut self,
        layout: &ParamLayout,
        values: &mut [f32],
    ) -> Result<Vec<u8>, CodecError> {
        let bytes = self.encode(layout, values)?;
        let sent = self.decode(layout, &bytes)?;
        for (v, s) in values.iter_mut().zip(&sent) {
            *v -= s;
        }
        Ok(bytes)
    }
}

/// Checks an update to encode has the layout's size and only finite values.
pub fn check_update(layout: &ParamLayout, update: &[f32]) -> Result<(), CodecError> {
    if update.len() != layout.total_params() {
        return Err(CodecError::UpdateSize {
            expected: layout.total_params(),
            found: update.len(),
        });
    }
    for (spec, range) in layout.iter() {
        if !update[range].iter().all(|v| v.is_finite()) {
            return Err(CodecError::NonFinite(spec.name.clone()));
        }
    }
    Ok(())
}

/// A boxed codec is a codec, so decorators such as [`ErrorFeedback`] wrap plugins built by name.
impl<C: GradientCodec + ?Sized> GradientCodec for Box<C> {
    fn wire_id(&self) -> &str {
        (**self).wire_id()
    }

    fn wire_version(&self) -> u16 {
        (**self).wire_version()
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        (**self).encode(layout, update)
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        (**self).decode(layout, bytes)
    }

    fn encode_keep_error(
        &mut self,
        layout: &ParamLayout,
        values: &mut [f32],
    ) -> Result<Vec<u8>, CodecError> {
        (**self).encode_keep_error(layout, values)
    }

    fn max_encoded_len(&self, layout: &ParamLayout) -> Option<usize> {
        (**self).max_encoded_len(layout)
    }
}
