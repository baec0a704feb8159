//! `bitnet classify`: one utterance in, the model's intent JSON out.

use super::eval::{LoadedModel, load_model};
use anyhow::Context;
use bitnet_runtime::config::ConfigSources;
use bitnet_runtime::trainer::latest_checkpoint;
use bitnet_truckmate::eval::{clean_utterance, greedy_decode};
use std::path::PathBuf;

/// Decode the intent and slots of an utterance with the packed-ternary inference model of a
/// checkpoint, and print the JSON.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What the driver said.
    utterance: String,
    /// Training checkpoint [default: the newest in the run config's `run.dir/checkpoints`].
    #[arg(long, value_name = "CKPT")]
    checkpoint: Option<PathBuf>,
    /// Run config used to find the newest checkpoint (without `--checkpoint`).
    #[arg(long, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// Data directory [default: the checkpoint's data.dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let checkpoint = match args.checkpoint {
        Some(c) => c,
        None => {
            let sources = ConfigSources { file: args.config.clone(), env: true, overrides: vec![] };
            let config = bitnet_runtime::config::load(&sources)?.config;
            let dir = config.run.dir.join("checkpoints");
            latest_checkpoint(&dir).with_context(|| {
                format!("no checkpoint in {}: pass --checkpoint or train first", dir.display())
            })?
        }
    };
    let LoadedModel { config, kernel, params, tokenizer, .. } =
        load_model(&checkpoint, args.data_dir.as_deref())?;
    let weights = kernel.export_inference(&params)?;
    let mut model = kernel.load_inference(&weights)?;
    let utterance = clean_utterance(&args.utterance);
    let answer =
        greedy_decode(model.as_mut(), tokenizer.as_ref(), &utterance, config.model.seq_len)?;
    match serde_json::from_str::<serde_json::Value>(&answer) {
        Ok(v) => println!("{v}"),
        Err(_) => {
            println!("{answer}");
            anyhow::bail!("the model's answer is not valid JSON");
        }
    }
    Ok(())
}
