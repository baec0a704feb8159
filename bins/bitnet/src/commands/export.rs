//! `bitnet export`: inference weights from a training checkpoint.

use super::registry_for;
use anyhow::Context;
use bitnet_runtime::checkpoint::{CheckpointFile, write_atomic};
use bitnet_runtime::config::RunConfig;
use bitnet_runtime::run;
use std::path::PathBuf;

/// Write the inference weights of a checkpoint (for the BitNet kernel: BitLinear weights as
/// packed trits plus scale, the rest fp32), as the checkpoint's kernel exports them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training checkpoint (`step-*.safetensors`).
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let file = CheckpointFile::open(&args.checkpoint)?;
    let meta = file.meta();
    let mut config: RunConfig = toml::from_str(&meta.run_config).with_context(|| {
        format!("the run config stored in {} does not parse", args.checkpoint.display())
    })?;
    // Exporting is light work; do not start a thread per core for it.
    config.train.threads = 1;
    let registry = registry_for(&config)?;
    let kernel = run::build_kernel(&config, &registry).context("building the model kernel")?;
    let params = file.params(kernel.layout())?;
    let bytes = kernel.export_inference(&params)?;
    write_atomic(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "exported step {} of `{}` ({} kernel): {} parameters -> {} ({:.2} MiB; checkpoint {:.2} MiB)",
        meta.step,
        config.name,
        meta.kernel,
        params.len(),
        args.out.display(),
        bytes.len() as f64 / (1 << 20) as f64,
        std::fs::metadata(&args.checkpoint).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(())
}
