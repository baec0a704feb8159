//! The trained weights `eval`, `export` and `classify` open: a training checkpoint
//! (`step-*.safetensors`, written by `train`, `run` and `coordinator`) or a coordinator's
//! weight snapshot (`RUN/weights/v*.weights`, magic `BNSNAPSH`), whose model comes from the
//! `run.toml` its run directory holds.

use anyhow::{Context, bail};
use bitnet_framework::tensor::ParamLayout;
use bitnet_runtime::checkpoint::CheckpointFile;
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::coordinator::blob::{SNAPSHOT_MAGIC, decode_snapshot};
use bitnet_runtime::run::directory;
use std::io::Read;
use std::path::{Path, PathBuf};

enum Weights {
    Checkpoint(Box<CheckpointFile>),
    Snapshot(Vec<u8>),
}

/// Opened trained weights with the run config they were trained with.
pub struct Trained {
    /// The run config (the checkpoint's, or the snapshot's run directory's `run.toml`).
    pub config: RunConfig,
    /// Optimizer steps (a snapshot: its weight version; known once decoded).
    pub step: u64,
    /// Tokens trained on (a snapshot: the tokens of the tasks in its ledger, once decoded).
    pub tokens: u64,
    /// Kernel plugin name.
    pub kernel: String,
    weights: Weights,
    path: PathBuf,
}

/// Whether `path` starts with the snapshot magic.
fn is_snapshot(path: &Path) -> anyhow::Result<bool> {
    let mut magic = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(f.read_exact(&mut magic).is_ok() && magic == SNAPSHOT_MAGIC)
}

/// The `run.toml` of the run directory holding a snapshot: next to it or one level up
/// (`RUN/weights/v*.weights`).
fn snapshot_run_config(path: &Path) -> anyhow::Result<RunConfig> {
    let dirs = path.ancestors().skip(1).take(2);
    for dir in dirs {
        if let Some(config) = directory::read_state(dir)? {
            return Ok(config);
        }
    }
    bail!(
        "{} is a coordinator weight snapshot (BNSNAPSH), and no {} beside it or in the directory \
         above says which model it holds. Open a checkpoint instead: `bitnet coordinator` and \
         `bitnet run` write RUN/checkpoints/step-*.safetensors every \
         coordinator.checkpoint_every_secs and at shutdown (restart the coordinator on its run \
         directory and stop it to get one), or copy the run's resolved config there as {}",
        path.display(),
        directory::STATE_FILE,
        directory::STATE_FILE
    )
}

impl Trained {
    /// Opens a checkpoint or a snapshot.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if is_snapshot(path)? {
            let config = snapshot_run_config(path)?;
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            return Ok(Self {
                kernel: config.kernel.kind.clone(),
                config,
                step: 0,
                tokens: 0,
                weights: Weights::Snapshot(bytes),
                path: path.to_path_buf(),
            });
        }
        let file = CheckpointFile::open(path)?;
        let meta = file.meta();
        let config: RunConfig = toml::from_str(&meta.run_config).with_context(|| {
            format!("the run config stored in {} does not parse", path.display())
        })?;
        Ok(Self {
            config,
            step: meta.step,
            tokens: meta.tokens,
            kernel: meta.kernel.clone(),
            weights: Weights::Checkpoint(Box::new(file)),
            path: path.to_path_buf(),
        })
    }

    /// The parameters, checked against `layout` (a snapshot's step and tokens are set here).
    pub fn params(&mut self, layout: &ParamLayout) -> anyhow::Result<Vec<f32>> {
        match &self.weights {
            Weights::Checkpoint(file) => Ok(file.params(layout)?),
            Weights::Snapshot(bytes) => {
                let snapshot = decode_snapshot(bytes, &layout.fingerprint(), layout.total_params())
                    .with_context(|| {
                        format!(
                            "{} does not hold the model of its run's {}",
                            self.path.display(),
                            directory::STATE_FILE
                        )
                    })?;
                self.step = snapshot.version;
                self.tokens = snapshot.ledger.iter().map(|e| e.tokens).sum();
                Ok(snapshot.params)
            }
        }
    }
}
