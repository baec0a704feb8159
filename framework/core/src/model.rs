//! The `ModelKernel` slot: a model's forward and backward passes over a flat parameter arena.

use crate::tensor::ParamLayout;
use serde::{Deserialize, Serialize};

/// Target id that is excluded from the loss (padding, prompt positions).
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Dimensions of a decoder-only transformer. Presets in `presets/` fill these in; the vocabulary
/// size comes from the tokenizer at run time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Number of attention heads (`d_model` must be a multiple).
    pub n_heads: usize,
    /// Hidden width of the SwiGLU feed-forward network.
    pub ffn_hidden: usize,
    /// Maximum (and training) sequence length.
    pub seq_len: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Rotary embedding base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Standard deviation of the normal initialisation of matrices.
    pub init_std: f32,
}

impl Default for ModelConfig {
    /// The `small` preset at the reference vocabulary of 5174.
    fn default() -> Self {
        Self {
            d_model: 256,
            n_layers: 4,
            n_heads: 8,
            ffn_hidden: 1024,
            seq_len: 128,
            vocab_size: 5174,
            rope_theta: 10_000.0,
            norm_eps: 1e-6,
            init_std: 0.02,
        }
    }
}

impl ModelConfig {
    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Checks the dimensions are consistent; returns every problem found.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, v) in [
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("ffn_hidden", self.ffn_hidden),
            ("seq_len", self.seq_len),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                problems.push(format!("model.{name} must be positive"));
            }
        }
        if self.n_heads > 0 && !self.d_model.is_multiple_of(self.n_heads) {
            problems.push(format!(
                "model.d_model ({}) must be a multiple of model.n_heads ({})",
                self.d_model, self.n_heads
            ));
        } else if self.n_heads > 0 && !self.head_dim().is_multiple_of(2) {
            problems.push(format!(
                "head dimension d_model / n_heads = {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        if self.vocab_size > (u32::MAX as usize) {
            problems.push("model.vocab_size does not fit token ids of 32 bits".into());
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            problems.push("model.norm_eps must be positive".into());
        }
        problems
    }
}

/// A batch of `batch * seq_len` token ids, row-major, with next-token targets.
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    /// Input ids, `batch * seq_len`.
    pub inputs: &'a [u32],
    /// Target ids, `batch * seq_len`; [`IGNORE_INDEX`] positions do not count in the loss.
    pub targets: &'a [u32],
    /// Number of sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
}

impl TokenBatch<'_> {
    /// Number of positions whose target counts in the loss.
    pub fn counted_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }
}

/// Errors of a model kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A buffer or batch has the wrong size.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A token id is outside the vocabulary.
    #[error("token id {id} at position {position} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// Offending id.
        id: u32,
        /// Position in the batch.
        position: usize,
        /// Vocabulary size.
        vocab: usize,
    },
    /// Exported inference weights could not be read.
    #[error("invalid inference weights: {0}")]
    InvalidWeights(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// A model implementation: owns its scratch buffers, works on arenas it is given.
///
/// The parameter and gradient arenas are laid out by [`ModelKernel::layout`]. One kernel instance
/// serves one training loop; build several for several loops.
pub trait ModelKernel: Send + Sync {
    /// The dimensions this kernel was built for.
    fn config(&self) -> &ModelConfig;

    /// The named tensors of the parameter (and gradient) arena.
    fn layout(&self) -> &ParamLayout;

    /// Fills `params` with the initial values derived deterministically from `seed`.
    fn init_params(&self, seed: u64, params: &mut [f32]) -> Result<(), KernelError>;

    /// Runs forward and backward over `batch`; overwrites `grads` with the gradient of the mean
    /// cross-entropy over counted targets and returns that loss.
    fn forward_backward(
        &mut self,
        params: &[f32],
        batch: &TokenBatch<'_>,
        grads: &mut [f32],
    ) -> Result<f32, KernelError>;

    /// Evaluation forward: the mean cross-entropy over counted targets, no gradients.
    fn forward_loss(&mut self, params: &[f32], batch: &TokenBatch<'_>) -> Result<f32, KernelError>;

    /// Serialises inference weights (what [`ModelKernel::load_inference`] needs and nothing more).
    fn export_inference(&self, params: &[f32]) -> Result<Vec<u8>, KernelError>;

    /// Builds an inference model from bytes written by [`ModelKernel::export_inference`].
    fn load_inference(&self, bytes: &[u8]) -> Result<Box<dyn InferenceModel>, KernelError>;
}

/// A model that only predicts: used by `classify` and evaluation decoding.
pub trait InferenceModel: Send {
    /// The logits over the vocabulary for the token following `tokens`.
    fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError>;

    /// How many sequences [`InferenceModel::next_token_logits_batch`] keeps cached at once
    /// (its slots `0 .. slots()`); 1 for a model with no batched form.
    fn slots(&self) -> usize {
        1
    }

    /// The logits following each of several sequences, `(slot, tokens)` with distinct slots
    /// below [`InferenceModel::slots`]: a model that keeps one cache per slot continues each
    /// sequence from its slot's cache and runs them through each layer together. Each answer
    /// equals what [`InferenceModel::next_token_logits`] gives for the same tokens. The default
    /// calls that one sequence by sequence (one cache, so alternating sequences recompute).
    fn next_token_logits_batch(
        &mut self,
        sequences: &[(usize, &[u32])],
    ) -> Result<Vec<Vec<f32>>, KernelError> {
        sequences.iter().map(|&(_, tokens)| self.next_token_logits(tokens)).collect()
    }
}
