//! `bitnet export`: inference weights from a training checkpoint or a weight snapshot.

use super::registry_for;
use super::trained::Trained;
use anyhow::Context;
use bitnet_runtime::checkpoint::write_atomic;
use bitnet_runtime::run;
use std::path::PathBuf;

/// Write the inference weights of a checkpoint (for the BitNet kernel: BitLinear weights as
/// packed trits plus scale, the rest fp32), as the checkpoint's kernel exports them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training checkpoint (`step-*.safetensors`), or a coordinator's weight snapshot
    /// (`RUN/weights/v*.weights`, with the run's `run.toml` in RUN).
    #[arg(long, value_name = "CKPT")]
    checkpoint: PathBuf,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut trained = Trained::open(&args.checkpoint)?;
    let mut config = trained.config.clone();
    // Exporting is light work; do not start a thread per core for it.
    config.train.threads = 1;
    let registry = registry_for(&config)?;
    let kernel = run::build_kernel(&config, &registry).context("building the model kernel")?;
    let params = trained.params(kernel.layout())?;
    let bytes = kernel.export_inference(&params)?;
    write_atomic(&args.out, &bytes).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "exported step {} of `{}` ({} kernel): {} parameters -> {} ({:.2} MiB; checkpoint {:.2} MiB)",
        trained.step,
        config.name,
        trained.kernel,
        params.len(),
        args.out.display(),
        bytes.len() as f64 / (1 << 20) as f64,
        std::fs::metadata(&args.checkpoint).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
    );
    Ok(())
}
