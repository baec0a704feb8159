//! Periodic validation of a fleet run's weights: the mean loss of the current parameters on the
//! first batches of the validation split, the same batches every time, as `bitnet train`
//! measures it. The recorder runs it every `coordinator.eval_every_secs`; the console draws it.

use crate::config::RunConfig;
use crate::data::{BatchSource, DataDir, LoaderOptions, Split};
use crate::trainer::mean_loss;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::registry::Registry;
use bitnet_framework::tokenizer::Tokenizer;

/// A model kernel and the validation split of a run's data directory.
pub struct Validator {
    kernel: Box<dyn ModelKernel>,
    source: Box<dyn BatchSource>,
    shape: (usize, usize, usize),
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").field("shape", &self.shape).finish_non_exhaustive()
    }
}

impl Validator {
    /// Opens the validation shards of `config`'s data directory (written with its tokenizer) and
    /// builds the model kernel; `config.model.vocab_size` must be the tokenizer's. Fails with a
    /// message when the directory has no tokenizer or validation shards.
    pub fn open(config: &RunConfig, registry: &Registry) -> Result<Self, String> {
        let dir = DataDir::new(config.data.dir.clone());
        let kind = &config.tokenizer.kind;
        let ctx = super::build_context(config);
        let mut tokenizer = registry
            .build::<dyn Tokenizer>(kind, &config.tokenizer.options, &ctx)
            .map_err(|e| format!("building the tokenizer: {e}"))?;
        let file = dir.tokenizer_file(kind);
        tokenizer.load(&file).map_err(|e| format!("loading {}: {e}", file.display()))?;
        let options = LoaderOptions {
            seed: config.train.seed,
            stream: 0,
            shuffle: false,
            mask_prompt: false,
        };
        let source = dir
            .loader(kind, Split::Validation, tokenizer.as_ref(), options)
            .map_err(|e| e.to_string())?;
        let kernel =
            super::build_kernel(config, registry).map_err(|e| format!("the model kernel: {e}"))?;
        let shape =
            (config.coordinator.eval_batches, config.train.batch_size.max(1), config.model.seq_len);
        Ok(Self { kernel, source: Box::new(source), shape })
    }

    /// The mean validation loss of `params` (`None` if the batches count no target).
    pub fn loss(&mut self, params: &[f32]) -> Result<Option<f32>, String> {
        mean_loss(self.kernel.as_mut(), params, self.source.as_mut(), self.shape)
            .map_err(|e| e.to_string())
    }
}
