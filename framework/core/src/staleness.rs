//! The `StalenessPolicy` slot: how much an update computed on old weights still counts.

/// The verdict on one update.
#[derive(Debug, Clone, PartialEq)]
pub enum StalenessDecision {
    /// Apply the update with its learning rate multiplied by `scale`.
    Accept {
        /// Learning-rate multiplier in `(0, 1]`.
        scale: f32,
    },
    /// Drop the update.
    Reject {
        /// Why, for logs and the worker.
        reason: String,
    },
}

/// Decides from the number of versions an update is behind.
pub trait StalenessPolicy: Send + Sync {
    /// `staleness` = current weight version - version the update was computed on.
    fn decide(&self, staleness: u64) -> StalenessDecision;
}

impl StalenessDecision {
    /// The learning-rate multiplier, or `None` for a rejected update.
    pub fn scale(&self) -> Option<f32> {
        match self {
            StalenessDecision::Accept { scale } => Some(*scale),
            StalenessDecision::Reject { .. } => None,
        }
    }
}
