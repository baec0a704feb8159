//! The packed-ternary inference model of a checkpoint or of a `bitnet export` file, with its
//! tokenizer: what `bitnet classify` and `bitnet serve` decode with.

use super::eval::{LoadedModel, load_model};
use super::registry_for;
use anyhow::Context;
use bitnet_framework::model::{InferenceModel, ModelKernel};
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_runtime::config::ConfigSources;
use bitnet_runtime::run;
use bitnet_runtime::run::service::load_tokenizer;
use bitnet_runtime::trainer::latest_checkpoint;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the model comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Training checkpoint, or a coordinator's weight snapshot (`RUN/weights/v*.weights`, with
    /// the run's `run.toml` in RUN) [default: the newest checkpoint in the run config's
    /// `run.dir/checkpoints`].
    #[arg(long, value_name = "CKPT", conflicts_with = "export")]
    pub checkpoint: Option<PathBuf>,
    /// Inference weights written by `bitnet export` (needs --config: the run config it was
    /// trained with names the kernel, the tokenizer and the data dir).
    #[arg(long, value_name = "FILE", requires = "config")]
    pub export: Option<PathBuf>,
    /// Run config: finds the newest checkpoint (without --checkpoint), or describes an --export.
    #[arg(long, value_name = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory holding the tokenizer [default: the run config's data.dir].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// Inference weights, the kernel that loads them and the tokenizer.
pub struct InferenceSource {
    /// The kernel the weights belong to.
    pub kernel: Box<dyn ModelKernel>,
    /// Packed-ternary inference weights ([`ModelKernel::export_inference`]).
    pub weights: Vec<u8>,
    /// The tokenizer of the model's data dir.
    pub tokenizer: Arc<dyn Tokenizer>,
    /// The model's context length.
    pub seq_len: usize,
    /// Where the weights came from, for the console.
    pub origin: String,
}

impl InferenceSource {
    /// Exports the inference weights of a training checkpoint.
    pub fn from_checkpoint(checkpoint: &Path, data_dir: Option<&Path>) -> anyhow::Result<Self> {
        let LoadedModel { config, kernel, params, tokenizer, step, .. } =
            load_model(checkpoint, data_dir)?;
        let weights = kernel.export_inference(&params)?;
        Ok(Self {
            kernel,
            weights,
            tokenizer: Arc::from(tokenizer),
            seq_len: config.model.seq_len,
            origin: format!("{} (step {step})", checkpoint.display()),
        })
    }

    /// Reads a `bitnet export` file; `config` is the run config it was trained with (its model,
    /// kernel, tokenizer and data dir). The model's vocabulary is the tokenizer's, as in
    /// training; the kernel refuses weights written for other dimensions.
    pub fn from_export(
        export: &Path,
        config: &Path,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let sources =
            ConfigSources { file: Some(config.to_path_buf()), env: true, overrides: vec![] };
        let mut config = bitnet_runtime::config::load(&sources)
            .with_context(|| format!("loading {}", config.display()))?
            .config;
        if let Some(d) = data_dir {
            config.data.dir = d.to_path_buf();
        }
        config.train.threads = 1;
        let registry = registry_for(&config)?;
        let tokenizer = load_tokenizer(&config, &registry)?;
        config.model.vocab_size = tokenizer.vocab_size();
        let kernel = run::build_kernel(&config, &registry).context("building the model kernel")?;
        let weights =
            std::fs::read(export).with_context(|| format!("reading {}", export.display()))?;
        // Parse once now, so a wrong file fails at start-up with the kernel's reason.
        kernel.load_inference(&weights).with_context(|| {
            format!("loading {} as `{}` weights", export.display(), config.name)
        })?;
        Ok(Self {
            kernel,
            weights,
            tokenizer: Arc::from(tokenizer),
            seq_len: config.model.seq_len,
            origin: export.display().to_string(),
        })
    }

    /// `n` independent inference models (each with its own key/value cache).
    pub fn models(&self, n: usize) -> anyhow::Result<Vec<Box<dyn InferenceModel>>> {
        (0..n)
            .map(|_| self.kernel.load_inference(&self.weights).context("loading inference weights"))
            .collect()
    }
}

impl ModelArgs {
    /// Loads the model the arguments name.
    pub fn load(&self) -> anyhow::Result<InferenceSource> {
        if let (Some(export), Some(config)) = (&self.export, &self.config) {
            return InferenceSource::from_export(export, config, self.data_dir.as_deref());
        }
        let checkpoint = match &self.checkpoint {
            Some(c) => c.clone(),
            None => {
                let sources =
                    ConfigSources { file: self.config.clone(), env: true, overrides: vec![] };
                let config = bitnet_runtime::config::load(&sources)?.config;
                let dir = config.run.dir.join("checkpoints");
                latest_checkpoint(&dir).with_context(|| {
                    format!("no checkpoint in {}: pass --checkpoint or train first", dir.display())
                })?
            }
        };
        InferenceSource::from_checkpoint(&checkpoint, self.data_dir.as_deref())
    }
}
