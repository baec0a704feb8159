//! Error feedback: a decorator that makes any lossy codec unbiased over time.

use super::{CodecError, GradientCodec};
use crate::tensor::ParamLayout;

/// Wraps a codec with a per-worker error-feedback residual (Seide et al. 2014; Karimireddy et
/// al. 2019): each call encodes `update + residual` and keeps what the encoding lost,
/// `residual = (update + residual) - decode(encoded)`, for the next call. What the coordinator
/// receives then sums to what the worker computed, up to one residual, however coarse the codec.
///
/// The residual lives in the instance, so a worker keeps one instance across its tasks. The wire
/// format is the inner codec's (same id and version): decoding needs no residual, and a
/// coordinator configured with the decorated codec reads payloads of the plain one.
///
/// The residual covers compression error only: an upload the coordinator rejects (too stale,
/// lost) takes what it carried with it.
#[derive(Debug, Clone)]
pub struct ErrorFeedback<C> {
    inner: C,
    residual: Vec<f32>,
    /// `update + residual`, then what its encoding lost: swapped with `residual` on success.
    /// Kept across calls so a worker does not fault in a fresh arena-sized buffer per task.
    scratch: Vec<f32>,
}

impl<C> ErrorFeedback<C> {
    /// Wraps `inner` with a zero residual.
    pub fn new(inner: C) -> Self {
        Self { inner, residual: Vec::new(), scratch: Vec::new() }
    }

    /// The residual carried into the next encode (empty before the first one).
    pub fn residual(&self) -> &[f32] {
        &self.residual
    }

    /// Drops the residual, e.g. when the worker starts on a different model.
    pub fn reset(&mut self) {
        self.residual.clear();
    }

    /// The wrapped codec.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: GradientCodec> GradientCodec for ErrorFeedback<C> {
    fn wire_id(&self) -> &str {
        self.inner.wire_id()
    }

    fn wire_version(&self) -> u16 {
        self.inner.wire_version()
    }

    fn encode(&mut self, layout: &ParamLayout, update: &[f32]) -> Result<Vec<u8>, CodecError> {
        // Finiteness is the inner codec's check, on `update + residual`: a non-finite update
        // makes the sum non-finite, so checking the update first would only cost a pass.
        if update.len() != layout.total_params() {
            return Err(CodecError::UpdateSize {
                expected: layout.total_params(),
                found: update.len(),
            });
        }
        if self.residual.len() != update.len() {
            // First call, or another model: nothing carried over applies.
            self.residual = vec![0.0; update.len()];
        }
        self.scratch.clear();
        self.scratch.extend(update.iter().zip(&self.residual).map(|(u, r)| u + r));
        // On any failure the residual is left as it was: a refused update carries nothing over.
        let bytes = self.inner.encode_keep_error(layout, &mut self.scratch)?;
        std::mem::swap(&mut self.residual, &mut self.scratch);
        Ok(bytes)
    }

    fn decode(&self, layout: &ParamLayout, bytes: &[u8]) -> Result<Vec<f32>, CodecError> {
        self.inner.decode(layout, bytes)
    }

    fn max_encoded_len(&self, layout: &ParamLayout) -> Option<usize> {
        self.inner.max_encoded_len(layout)
    }
}
