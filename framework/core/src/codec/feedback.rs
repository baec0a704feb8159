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
        sum_into(&mut self.scratch, update, &self.residual);
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

crate::vectorized_fn!(
    /// `out = a + b`, element by element (the update plus the carried residual).
    fn sum_into(out: &mut Vec<f32>, a: &[f32], b: &[f32]) = sum_into_body, test sum_into_at
);

#[inline(always)]
fn sum_into_body(out: &mut Vec<f32>, a: &[f32], b: &[f32]) {
    out.clear();
    out.extend(a.iter().zip(b).map(|(u, r)| u + r));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The AVX2 and AVX-512 copies (where this CPU has them) give the baseline's sums.
        #[test]
        fn vectorized_copies_equal_the_baseline(
            ab in prop::collection::vec((any::<f32>(), any::<f32>()), 0..300),
        ) {
            let (a, b): (Vec<f32>, Vec<f32>) = ab.into_iter().unzip();
            let mut want = Vec::new();
            sum_into_body(&mut want, &a, &b);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for level in crate::isa::IsaLevel::ALL {
                let mut got = vec![1.0; 3];
                if sum_into_at(level, &mut got, &a, &b).is_some() {
                    prop_assert_eq!(bits(&got), bits(&want), "{}", level);
                }
            }
        }
    }
}
