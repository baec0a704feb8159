//! The `Optimizer` slot: applies an update to a parameter arena.

/// What the caller knows about this step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Zero-based index of the step being applied (drives schedules).
    pub step: u64,
    /// Multiplier on the learning rate, e.g. from a staleness policy (1.0 for none).
    pub lr_scale: f32,
}

/// What an optimizer did on one step.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepReport {
    /// Effective learning rate (after schedule and scale).
    pub lr: f32,
    /// Global L2 norm of the update before clipping.
    pub update_norm: f32,
}

/// Saved optimizer state: named fp32 buffers plus a step counter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OptimizerState {
    /// Steps taken so far.
    pub step: u64,
    /// Named buffers (e.g. `m`, `v`), each the size of the arena.
    pub buffers: Vec<(String, Vec<f32>)>,
}

/// Errors of an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// Buffer sizes disagree.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The update has NaN or infinite values; parameters were left untouched.
    #[error("update contains non-finite values; parameters left untouched")]
    NonFinite,
    /// Saved state does not fit this optimizer.
    #[error("invalid optimizer state: {0}")]
    InvalidState(String),
}

/// An optimizer over the arena described by the build context's layout.
pub trait Optimizer: Send + Sync {
    /// Applies `update` (a gradient, or a pseudo-gradient for outer optimizers) to `params`.
    fn step(
        &mut self,
        params: &mut [f32],
        update: &[f32],
        info: StepInfo,
    ) -> Result<StepReport, OptimError>;

    /// The state to checkpoint.
    fn save_state(&self) -> OptimizerState;

    /// Restores a state produced by [`Optimizer::save_state`] of the same plugin and layout.
    fn load_state(&mut self, state: OptimizerState) -> Result<(), OptimError>;
}
