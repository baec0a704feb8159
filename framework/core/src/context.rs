//! What a plugin factory may know about the run it is built for.

use crate::model::ModelConfig;
use crate::tensor::ParamLayout;
use std::path::PathBuf;

/// Context handed to every plugin factory. A struct (not arguments) so it can grow without
/// breaking plugins; construct it with [`BuildContext::new`] and the `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BuildContext {
    /// Model dimensions (vocabulary size already resolved).
    pub model: ModelConfig,
    /// Parameter layout, once the model kernel is built (optimizers and codecs need it).
    pub layout: Option<ParamLayout>,
    /// Directory of the run's outputs (checkpoints, stores, logs).
    pub run_dir: PathBuf,
    /// Base seed of the run.
    pub seed: u64,
    /// Total optimizer steps planned (drives schedules); 0 when unknown.
    pub total_steps: u64,
    /// Compute threads a component may use (0 = all cores).
    pub threads: usize,
}

impl BuildContext {
    /// A context for `model`, everything else at its default.
    pub fn new(model: ModelConfig) -> Self {
        Self {
            model,
            layout: None,
            run_dir: PathBuf::from("runs/default"),
            seed: 0,
            total_steps: 0,
            threads: 0,
        }
    }

    /// Sets the parameter layout.
    pub fn with_layout(mut self, layout: ParamLayout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Sets the run directory.
    pub fn with_run_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.run_dir = dir.into();
        self
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Sets the planned number of optimizer steps.
    pub fn with_total_steps(mut self, steps: u64) -> Self {
        self.total_steps = steps;
        self
    }

    /// Sets the thread count (0 = all cores).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// The layout, or an error message for factories that need it.
    pub fn require_layout(&self) -> Result<&ParamLayout, String> {
        self.layout.as_ref().ok_or_else(|| "needs the model's parameter layout".to_string())
    }

    /// Threads to use: the configured count, or every core when 0.
    pub fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        }
    }
}
