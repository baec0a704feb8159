//! Named-tensor layout of a model's flat parameter arena.
//!
//! Every parameter of a model lives in one contiguous `f32` arena (llm.c style); the layout names
//! each tensor, gives its shape and says what role it plays. Codecs, optimizers and weight stores
//! work per tensor through this layout and never need to know the model's internals.

use serde::{Deserialize, Serialize};
use std::ops::Range;

/// What a tensor is for. Optimizers use it (weight decay on matrices only), the ternary weight
/// codec uses it (only BitLinear weights are quantized).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TensorRole {
    /// Full-precision token embedding table.
    Embedding,
    /// Latent fp32 weights of a BitLinear layer (ternary in the forward pass).
    BitLinear,
    /// Normalisation gains (vectors).
    Norm,
    /// Full-precision output projection.
    Head,
}

impl TensorRole {
    /// Whether the tensor is a matrix that receives weight decay.
    pub fn is_matrix(self) -> bool {
        !matches!(self, TensorRole::Norm)
    }
}

/// One named tensor of the layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Stable, unique name, e.g. `blocks.0.attn.q_proj.weight`.
    pub name: String,
    /// Row-major shape (for linear layers `[out_features, in_features]`).
    pub shape: Vec<usize>,
    /// Role of the tensor.
    pub role: TensorRole,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The ordered tensors of a parameter arena, with their offsets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamLayout {
    tensors: Vec<TensorSpec>,
    offsets: Vec<usize>,
    total: usize,
}

/// A layout could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Two tensors share a name.
    #[error("duplicate tensor name `{0}` in parameter layout")]
    DuplicateName(String),
    /// A tensor has no elements.
    #[error("tensor `{0}` has an empty shape")]
    Empty(String),
    /// A tensor's element count, or the arena's, does not fit in `usize`.
    #[error("tensor `{0}` has more elements than this machine can address")]
    TooLarge(String),
}

impl ParamLayout {
    /// Builds a layout from tensors in arena order. Shapes come from files too (a checkpoint's
    /// metadata), so element counts are computed with checked arithmetic: once a layout is
    /// built, [`TensorSpec::numel`] and [`Self::total_params`] of its tensors cannot overflow.
    pub fn new(tensors: Vec<TensorSpec>) -> Result<Self, LayoutError> {
        let mut seen = std::collections::HashSet::new();
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut total = 0usize;
        for t in &tensors {
            if !seen.insert(t.name.as_str()) {
                return Err(LayoutError::DuplicateName(t.name.clone()));
            }
            let too_large = || LayoutError::TooLarge(t.name.clone());
            let numel =
                t.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(too_large)?;
            if numel == 0 {
                return Err(LayoutError::Empty(t.name.clone()));
            }
            offsets.push(total);
            total = total.checked_add(numel).ok_or_else(too_large)?;
        }
        Ok(Self { tensors, offsets, total })
    }

    /// Tensors in arena order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Total number of parameters.
    pub fn total_params(&self) -> usize {
        self.total
    }

    /// Arena range of tensor `index`.
    pub fn range(&self, index: usize) -> Range<usize> {
        let start = self.offsets[index];
        start..start + self.tensors[index].numel()
    }

    /// Index of the tensor named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.tensors.iter().position(|t| t.name == name)
    }

    /// Iterates `(spec, arena range)` pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&TensorSpec, Range<usize>)> + '_ {
        self.tensors.iter().enumerate().map(move |(i, t)| (t, self.range(i)))
    }

    /// Splits an arena-sized slice into per-tensor slices.
    ///
    /// # Panics
    /// If `arena.len()` differs from [`Self::total_params`]; callers own the arena size.
    pub fn split<'a>(&self, arena: &'a [f32]) -> Vec<&'a [f32]> {
        assert_eq!(arena.len(), self.total, "arena length does not match the layout");
        self.iter().map(|(_, r)| &arena[r]).collect()
    }

    /// A stable SHA-256 fingerprint of names, shapes and roles, used to refuse weights, updates
    /// or checkpoints that were produced for a different model.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for t in &self.tensors {
            h.update(t.name.as_bytes());
            h.update([0]);
            for d in &t.shape {
                h.update((*d as u64).to_le_bytes());
            }
            h.update(format!("{:?}", t.role).as_bytes());
            h.update([0xff]);
        }
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec { name: name.into(), shape: shape.to_vec(), role: TensorRole::BitLinear }
    }

    #[test]
    fn offsets_follow_arena_order() {
        let l = ParamLayout::new(vec![spec("a", &[2, 3]), spec("b", &[4])]).expect("layout");
        assert_eq!(l.total_params(), 10);
        assert_eq!(l.range(1), 6..10);
        assert_eq!(l.index_of("b"), Some(1));
    }

    #[test]
    fn duplicate_and_empty_are_refused() {
        assert_eq!(
            ParamLayout::new(vec![spec("a", &[1]), spec("a", &[2])]),
            Err(LayoutError::DuplicateName("a".into()))
        );
        assert_eq!(ParamLayout::new(vec![spec("z", &[0, 3])]), Err(LayoutError::Empty("z".into())));
    }

    /// Found by the `checkpoint` fuzz target: a checkpoint whose `layout` metadata says
    /// `[4294967296, 4294967296]` made `numel` overflow (a panic with overflow checks, a wrapped
    /// count without).
    #[test]
    fn overflowing_shapes_are_refused() {
        let big = 1usize << (usize::BITS / 2);
        let too_large = |n: &str| Err(LayoutError::TooLarge(n.into()));
        assert_eq!(ParamLayout::new(vec![spec("x", &[big, big])]), too_large("x"));
        assert_eq!(ParamLayout::new(vec![spec("y", &[big, big, 0])]), too_large("y"));
        let half = usize::MAX / 2 + 1;
        assert_eq!(ParamLayout::new(vec![spec("a", &[half]), spec("b", &[half])]), too_large("b"));
    }

    #[test]
    fn fingerprint_depends_on_shape() {
        let a = ParamLayout::new(vec![spec("a", &[2, 3])]).expect("layout");
        let b = ParamLayout::new(vec![spec("a", &[3, 2])]).expect("layout");
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
