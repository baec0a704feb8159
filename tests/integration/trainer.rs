//! The single-process trainer with the real "bitnet-b158" kernel and the "adamw" optimizer,
//! built by name from a run config as `bitnet train` builds them.

use bitnet_framework::model::ModelKernel;
use bitnet_framework::optim::Optimizer;
use bitnet_framework::registry::Registry;
use bitnet_runtime::checkpoint::CheckpointFile;
use bitnet_runtime::config::{ComponentSpec, RunConfig};
use bitnet_runtime::run;
use bitnet_runtime::trainer::{
    TokenFileSource, TrainOptions, Trainer, latest_checkpoint, write_token_file,
};
use bitnet_tests::{temp_dir, tiny_model};
use std::path::Path;

const VOCAB: usize = 24;

fn config(run_dir: &Path, steps: u64, threads: usize) -> RunConfig {
    let mut c = RunConfig { model: tiny_model(VOCAB), ..RunConfig::default() };
    c.model.seq_len = 16;
    c.train.steps = steps;
    c.train.batch_size = 4;
    c.train.threads = threads;
    c.train.seed = 3;
    c.train.checkpoint_every = 0;
    let mut opt = ComponentSpec::named("adamw");
    opt.options.insert("lr".into(), toml::Value::Float(1e-2));
    opt.options.insert("warmup_steps".into(), toml::Value::Integer(5));
    opt.options.insert("total_steps".into(), toml::Value::Integer(200));
    c.optimizer = opt;
    c.run.dir = run_dir.to_path_buf();
    c
}

/// A repetitive sequence: 0 1 2 ... 11 0 1 2 ... (learnable to a loss near zero).
fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let tokens: Vec<u32> = (0..2000u32).map(|i| i % 12).collect();
    let path = dir.join("tokens.bin");
    write_token_file(&path, &tokens).expect("write tokens");
    path
}

fn trainer(c: &RunConfig, registry: &Registry, tokens: &Path) -> Trainer {
    let kernel: Box<dyn ModelKernel> = run::build_kernel(c, registry).expect("kernel");
    let ctx = run::build_context(c).with_layout(kernel.layout().clone());
    let optimizer: Box<dyn Optimizer> = registry
        .build::<dyn Optimizer>(&c.optimizer.kind, &c.optimizer.options, &ctx)
        .expect("optimizer");
    let source = TokenFileSource::open(tokens, VOCAB, c.train.seed).expect("source");
    let validation = TokenFileSource::open(tokens, VOCAB, 0).expect("validation").unshuffled();
    let options = TrainOptions {
        steps: c.train.steps,
        batch_size: c.train.batch_size,
        seq_len: c.model.seq_len,
        seed: c.train.seed,
        eval_every: 0,
        eval_batches: 2,
        checkpoint_every: 0,
        checkpoint_dir: Some(c.run.dir.join("checkpoints")),
        keep_checkpoints: 2,
        metrics_path: Some(c.run.dir.join("metrics.jsonl")),
        kernel_name: c.kernel.kind.clone(),
        optimizer_name: c.optimizer.kind.clone(),
        run_config: toml::to_string(c).expect("config to TOML"),
    };
    Trainer::new(kernel, optimizer, Box::new(source), Some(Box::new(validation)), options)
        .expect("trainer")
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn exact_resume(threads: usize) {
    let registry = bitnet_plugins::registry().expect("registry");
    let dir = temp_dir();
    let tokens = tokens_file(dir.path());
    let straight_dir = dir.path().join("straight");
    let mut straight = trainer(&config(&straight_dir, 8, threads), &registry, &tokens);
    straight.run(&mut ()).expect("2N steps");

    let split_dir = dir.path().join("split");
    let mut first = trainer(&config(&split_dir, 4, threads), &registry, &tokens);
    first.run(&mut ()).expect("N steps");
    let ck = latest_checkpoint(&split_dir.join("checkpoints")).expect("checkpoint");
    let mut second = trainer(&config(&split_dir, 8, threads), &registry, &tokens);
    second.resume(&CheckpointFile::open(&ck).expect("open")).expect("resume");
    second.run(&mut ()).expect("N more steps");
    assert_eq!(bits(straight.params()), bits(second.params()), "bit-identical weights");
}

#[test]
fn real_kernel_resumes_exactly_on_one_thread() {
    exact_resume(1);
}

#[test]
fn real_kernel_resumes_exactly_on_two_threads() {
    exact_resume(2);
}

#[test]
fn real_kernel_learns_a_repetitive_sequence_and_exports() {
    let registry = bitnet_plugins::registry().expect("registry");
    let dir = temp_dir();
    let tokens = tokens_file(dir.path());
    let c = config(&dir.path().join("run"), 150, 1);
    let mut t = trainer(&c, &registry, &tokens);
    let before = t.evaluate().expect("eval").expect("loss");
    let summary = t.run(&mut ()).expect("train");
    let after = summary.val_loss.expect("validation loss");
    assert!(after < 0.1 * before && after < 0.3, "validation loss {before} -> {after}");

    // What `bitnet export` does: rebuild the kernel from the checkpoint's own run config.
    let ck = CheckpointFile::open(&summary.checkpoint.expect("final checkpoint")).expect("open");
    let stored: RunConfig = toml::from_str(&ck.meta().run_config).expect("stored config parses");
    assert_eq!(stored, c);
    let kernel = run::build_kernel(&stored, &registry).expect("kernel");
    let params = ck.params(kernel.layout()).expect("params");
    assert_eq!(bits(&params), bits(t.params()));
    let bytes = kernel.export_inference(&params).expect("export");
    let mut model = kernel.load_inference(&bytes).expect("load inference");
    for start in [0u32, 5, 9] {
        let context: Vec<u32> = (0..8).map(|i| (start + i) % 12).collect();
        let logits = model.next_token_logits(&context).expect("logits");
        let best = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b]));
        assert_eq!(best, Some(((start + 8) % 12) as usize), "after {context:?}");
    }
}
