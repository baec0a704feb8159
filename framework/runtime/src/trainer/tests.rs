//! Trainer tests with a small real model: a bigram softmax regression (logits = `W[x] + b`) with
//! its exact cross-entropy gradient, and a momentum-SGD optimizer with real state.

use super::*;
use bitnet_framework::model::{IGNORE_INDEX, InferenceModel, ModelConfig, TokenBatch};
use bitnet_framework::optim::{OptimizerState, StepReport};
use bitnet_framework::tensor::{ParamLayout, TensorRole, TensorSpec};

struct Bigram {
    config: ModelConfig,
    layout: ParamLayout,
}

impl Bigram {
    fn new(vocab: usize, seq_len: usize) -> Self {
        let config = ModelConfig { vocab_size: vocab, seq_len, ..ModelConfig::default() };
        let layout = ParamLayout::new(vec![
            TensorSpec { name: "w".into(), shape: vec![vocab, vocab], role: TensorRole::Embedding },
            TensorSpec { name: "b".into(), shape: vec![vocab], role: TensorRole::Norm },
        ])
        .expect("layout");
        Self { config, layout }
    }

    /// Mean cross-entropy; adds its gradient to `grads` when given.
    fn loss(
        &self,
        params: &[f32],
        batch: &TokenBatch<'_>,
        mut grads: Option<&mut [f32]>,
    ) -> Result<f32, KernelError> {
        let v = self.config.vocab_size;
        let (w, b) = params.split_at(v * v);
        let count = batch.counted_targets().max(1) as f32;
        let mut total = 0f64;
        let mut p = vec![0f32; v];
        for (pos, (&x, &y)) in batch.inputs.iter().zip(batch.targets).enumerate() {
            if x as usize >= v {
                return Err(KernelError::TokenOutOfRange { id: x, position: pos, vocab: v });
            }
            if y == IGNORE_INDEX {
                continue;
            }
            let row = &w[x as usize * v..(x as usize + 1) * v];
            let max = row.iter().zip(b).map(|(a, c)| a + c).fold(f32::NEG_INFINITY, f32::max);
            let mut z = 0f32;
            for j in 0..v {
                p[j] = (row[j] + b[j] - max).exp();
                z += p[j];
            }
            total -= f64::from((p[y as usize] / z).ln());
            if let Some(g) = grads.as_deref_mut() {
                for j in 0..v {
                    let d = (p[j] / z - if j == y as usize { 1.0 } else { 0.0 }) / count;
                    g[x as usize * v + j] += d;
                    g[v * v + j] += d;
                }
            }
        }
        Ok((total / f64::from(count)) as f32)
    }
}

impl ModelKernel for Bigram {
    fn config(&self) -> &ModelConfig {
        &self.config
    }
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn init_params(&self, seed: u64, params: &mut [f32]) -> Result<(), KernelError> {
        let mut rng = SplitMix64::new(seed);
        for p in params.iter_mut() {
            *p = ((rng.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.02;
        }
        Ok(())
    }
    fn forward_backward(
        &mut self,
        params: &[f32],
        batch: &TokenBatch<'_>,
        grads: &mut [f32],
    ) -> Result<f32, KernelError> {
        grads.fill(0.0);
        self.loss(params, batch, Some(grads))
    }
    fn forward_loss(&mut self, params: &[f32], batch: &TokenBatch<'_>) -> Result<f32, KernelError> {
        self.loss(params, batch, None)
    }
    fn export_inference(&self, params: &[f32]) -> Result<Vec<u8>, KernelError> {
        Ok(params.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn load_inference(&self, _bytes: &[u8]) -> Result<Box<dyn InferenceModel>, KernelError> {
        Err(KernelError::Other("the test bigram has no inference model".into()))
    }
}

/// Momentum SGD with a real, saved state.
struct MomentumSgd {
    lr: f32,
    buf: Vec<f32>,
    t: u64,
}

impl Optimizer for MomentumSgd {
    fn step(
        &mut self,
        params: &mut [f32],
        update: &[f32],
        info: StepInfo,
    ) -> Result<StepReport, OptimError> {
        if update.iter().any(|g| !g.is_finite()) {
            return Err(OptimError::NonFinite);
        }
        // A schedule, so resuming at the wrong step would show.
        let lr = self.lr / (1.0 + info.step as f32 * 0.01);
        for ((p, b), g) in params.iter_mut().zip(&mut self.buf).zip(update) {
            *b = 0.9 * *b + g;
            *p -= lr * *b;
        }
        self.t += 1;
        let norm = update.iter().map(|g| g * g).sum::<f32>().sqrt();
        Ok(StepReport { lr, update_norm: norm })
    }
    fn save_state(&self) -> OptimizerState {
        OptimizerState { step: self.t, buffers: vec![("buf".into(), self.buf.clone())] }
    }
    fn load_state(&mut self, state: OptimizerState) -> Result<(), OptimError> {
        match state.buffers.into_iter().next() {
            Some((n, b)) if n == "buf" && b.len() == self.buf.len() => {
                self.buf = b;
                self.t = state.step;
                Ok(())
            }
            _ => Err(OptimError::InvalidState("expected buffer `buf`".into())),
        }
    }
}

const VOCAB: usize = 16;
const SEQ: usize = 8;

fn corpus() -> Vec<u32> {
    // A noisy repetitive sequence: mostly +1 mod 12, with some jumps.
    let mut rng = SplitMix64::new(3);
    let mut t = vec![0u32];
    for _ in 0..600 {
        let last = *t.last().expect("nonempty");
        let next =
            if rng.next().is_multiple_of(10) { (rng.next() % 16) as u32 } else { (last + 1) % 12 };
        t.push(next);
    }
    t
}

fn trainer(steps: u64, dir: Option<&Path>) -> Trainer {
    let kernel = Box::new(Bigram::new(VOCAB, SEQ));
    let n = kernel.layout().total_params();
    let opt = Box::new(MomentumSgd { lr: 0.5, buf: vec![0.0; n], t: 0 });
    let source =
        TokenFileSource::from_tokens("corpus".into(), corpus(), VOCAB, 11).expect("source");
    let val = TokenFileSource::from_tokens("val".into(), corpus()[..200].to_vec(), VOCAB, 0)
        .expect("val")
        .unshuffled();
    let options = TrainOptions {
        steps,
        batch_size: 4,
        seq_len: SEQ,
        seed: 5,
        eval_every: 5,
        eval_batches: 2,
        checkpoint_every: 2,
        checkpoint_dir: dir.map(|d| d.join("ck")),
        keep_checkpoints: 2,
        metrics_path: dir.map(|d| d.join("metrics.jsonl")),
        kernel_name: "bigram".into(),
        optimizer_name: "momentum".into(),
        run_config: "name = \"test\"\n".into(),
    };
    Trainer::new(kernel, opt, Box::new(source), Some(Box::new(val)), options).expect("trainer")
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn token_file_windows_cover_an_epoch_then_reshuffle() {
    let tokens: Vec<u32> = (0..21).collect();
    let mut s = TokenFileSource::from_tokens("t".into(), tokens, 32, 1).expect("source");
    assert_eq!(s.windows(4), 5);
    let mut b = BatchBuffer::default();
    s.next_batch(5, 4, &mut b).expect("batch");
    let mut firsts: Vec<u32> = b.inputs.chunks(4).map(|w| w[0]).collect();
    for (i, t) in b.inputs.iter().zip(&b.targets) {
        assert_eq!(*t, i + 1, "targets are the next tokens");
    }
    firsts.sort();
    assert_eq!(firsts, vec![0, 4, 8, 12, 16], "every window once per epoch");
    assert_eq!(s.position(), SourcePosition { epoch: 0, cursor: 5 });
    let at = s.position();
    s.next_batch(3, 4, &mut b).expect("batch");
    assert_eq!(s.position(), SourcePosition { epoch: 1, cursor: 3 });
    let first = b.inputs.clone();
    s.seek(at).expect("seek");
    s.next_batch(3, 4, &mut b).expect("batch");
    assert_eq!(b.inputs, first, "seek reproduces the stream");
}

#[test]
fn token_file_problems_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("t.bin");
    std::fs::write(&p, [1u8, 0, 0, 0, 7]).expect("write");
    let e = TokenFileSource::open(&p, 16, 0).expect_err("odd length").to_string();
    assert!(e.contains("t.bin") && e.contains("5 bytes"), "{e}");
    write_token_file(&p, &[1, 2, 99]).expect("write");
    let e = TokenFileSource::open(&p, 16, 0).expect_err("out of vocab").to_string();
    assert!(e.contains("token 2 is id 99"), "{e}");
    write_token_file(&p, &[1, 2, 3]).expect("write");
    let mut s = TokenFileSource::open(&p, 16, 0).expect("open");
    let e = s.next_batch(1, 8, &mut BatchBuffer::default()).expect_err("too short").to_string();
    assert!(e.contains("fewer than one window"), "{e}");
}

#[test]
fn training_2n_steps_equals_n_save_load_n() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut straight = trainer(12, None);
    straight.run(&mut ()).expect("2N steps");

    let mut first = trainer(6, Some(dir.path()));
    first.run(&mut ()).expect("N steps");
    let ck = latest_checkpoint(&dir.path().join("ck")).expect("a checkpoint");
    assert!(ck.ends_with("step-00000006.safetensors"));
    let file = CheckpointFile::open(&ck).expect("open checkpoint");
    let mut second = trainer(12, Some(dir.path()));
    second.resume(&file).expect("resume");
    assert_eq!(second.step(), 6);
    second.run(&mut ()).expect("N more steps");

    assert_eq!(bits(straight.params()), bits(second.params()), "weights are bit-identical");
    assert_eq!(straight.optimizer.save_state(), second.optimizer.save_state());
    assert_eq!(straight.train.position(), second.train.position());
    assert_eq!(straight.tokens, second.tokens);
}

#[test]
fn loss_falls_and_metrics_and_checkpoints_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = trainer(60, Some(dir.path()));
    let before = t.evaluate().expect("eval").expect("val loss");
    struct Count(u64, u64, u64);
    impl TrainObserver for Count {
        fn on_step(&mut self, _: &StepMetrics) {
            self.0 += 1;
        }
        fn on_eval(&mut self, _: u64, _: f32) {
            self.1 += 1;
        }
        fn on_checkpoint(&mut self, _: u64, _: &Path) {
            self.2 += 1;
        }
    }
    let mut seen = Count(0, 0, 0);
    let summary = t.run(&mut seen).expect("run");
    assert_eq!((seen.0, seen.1, seen.2), (60, 12, 30));
    let after = summary.val_loss.expect("val loss");
    assert!(after < 0.6 * before, "validation loss {before} -> {after}");
    assert_eq!(summary.tokens, 60 * 4 * SEQ as u64);

    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 60 + 12);
    let first = &lines[0];
    for key in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s"] {
        assert!(first.get(key).is_some(), "metrics line lacks `{key}`: {first}");
    }
    assert_eq!(first["step"], 1);
    assert!(lines.iter().any(|l| l["val_loss"].is_number()));
    // The shared schema: every line reads back as a `MetricsRow` (unknown keys refused).
    for line in text.lines() {
        let row: crate::metrics::MetricsRow = serde_json::from_str(line).expect("shared schema");
        assert_eq!(row.source, crate::metrics::MetricsSource::Train);
    }
    let kept: Vec<_> =
        step_checkpoints(&dir.path().join("ck")).into_iter().map(|(s, _)| s).collect();
    assert_eq!(kept, vec![58, 60], "older checkpoints pruned");
}

#[test]
fn resume_refuses_another_optimizer_or_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut t = trainer(2, Some(dir.path()));
    t.run(&mut ()).expect("run");
    let file = CheckpointFile::open(&checkpoint_path(&dir.path().join("ck"), 2)).expect("open");

    let mut other = trainer(4, None);
    other.options.optimizer_name = "adamw".into();
    let e = other.resume(&file).expect_err("optimizer differs").to_string();
    assert!(e.contains("optimizer `momentum`") && e.contains("`adamw`"), "{e}");

    let kernel = Box::new(Bigram::new(VOCAB + 1, SEQ));
    let n = kernel.layout().total_params();
    let opt = Box::new(MomentumSgd { lr: 0.5, buf: vec![0.0; n], t: 0 });
    let source = TokenFileSource::from_tokens("c".into(), corpus(), VOCAB + 1, 1).expect("src");
    let options = TrainOptions {
        kernel_name: "bigram".into(),
        optimizer_name: "momentum".into(),
        seq_len: SEQ,
        ..TrainOptions::default()
    };
    let mut bigger = Trainer::new(kernel, opt, Box::new(source), None, options).expect("trainer");
    let e = bigger.resume(&file).expect_err("layout differs").to_string();
    assert!(e.contains("`w`") && e.contains("[16, 16]") && e.contains("[17, 17]"), "{e}");
}

#[test]
fn non_finite_gradients_stop_training_with_the_step() {
    let mut t = trainer(3, None);
    t.params[VOCAB * VOCAB] = f32::NAN;
    // The bias feeds every position: the loss and the gradient become NaN.
    let err = t.run(&mut ()).expect_err("NaN refused").to_string();
    assert!(err.contains("non-finite"), "{err}");
}
