//! `bitnet bench train`: training throughput, comparable line for line with
//! `python3 torch_bitnet.py --preset P --batch B --threads T`.

use super::registry_for;
use anyhow::Context;
use bitnet_framework::model::ModelKernel;
use bitnet_framework::optim::{Optimizer, StepInfo};
use bitnet_framework::tensor::TensorRole;
use bitnet_runtime::config::ConfigSources;
use bitnet_runtime::run;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Time training steps (forward + backward + optimizer step) on synthetic sequences.
    Train(TrainArgs),
}

/// Options of `bitnet bench train`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Model preset (`tiny`, `small`, `medium`, `large`) or a preset TOML file.
    #[arg(long, default_value = "small")]
    preset: String,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Compute threads of the kernel and the optimizer.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured steps (after warm-up).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Warm-up steps, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Sequence length (default: the preset's).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Vocabulary size (the reference uses 5174).
    #[arg(long, default_value_t = 5174)]
    vocab: usize,
    /// `arith` (x_t = a + t*s mod V, learnable, as the reference) or `random`.
    #[arg(long, default_value = "arith")]
    data: String,
    /// Further config overrides, e.g. `--set kernel.precision=fp32` or `--set optimizer.lr=1e-3`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Append one JSON result line to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Free-form label stored in the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Train(args) => train(args),
    }
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0 && args.steps > 0, "--batch and --steps must be positive");
    let mut overrides = vec![
        format!("preset={}", toml_string(&args.preset)),
        format!("model.vocab_size={}", args.vocab),
        format!("train.threads={}", args.threads),
        format!("train.batch_size={}", args.batch),
        format!("train.steps={}", args.warmup + args.steps),
    ];
    if let Some(t) = args.seq_len {
        overrides.push(format!("model.seq_len={t}"));
    }
    overrides.extend(args.overrides.iter().cloned());
    let sources = ConfigSources { file: None, env: false, overrides };
    let config = bitnet_runtime::config::load(&sources)?.config;
    let registry = registry_for(&config)?;
    let mut kernel: Box<dyn ModelKernel> =
        run::build_kernel(&config, &registry).context("building the model kernel")?;
    let ctx = run::build_context(&config).with_layout(kernel.layout().clone());
    let mut optimizer: Box<dyn Optimizer> = registry
        .build::<dyn Optimizer>(&config.optimizer.kind, &config.optimizer.options, &ctx)
        .context("building the optimizer")?;

    let m = &config.model;
    let (b, t, v) = (args.batch, m.seq_len, m.vocab_size);
    let layout = kernel.layout().clone();
    let total: usize = layout.total_params();
    let embedding: usize = layout
        .tensors()
        .iter()
        .filter(|s| s.role == TensorRole::Embedding)
        .map(|s| s.numel())
        .sum();
    let bitlinear: usize = layout
        .tensors()
        .iter()
        .filter(|s| s.role == TensorRole::BitLinear)
        .map(|s| s.numel())
        .sum();
    println!(
        "bitnet {} | preset={} d_model={} n_layers={} n_heads={} ffn_hidden={} vocab={} seq_len={} \
         | batch={} | threads={} | kernel={} {} | optimizer={} | data={}",
        env!("CARGO_PKG_VERSION"),
        config.preset,
        m.d_model,
        m.n_layers,
        m.n_heads,
        m.ffn_hidden,
        v,
        t,
        b,
        args.threads,
        config.kernel.kind,
        toml::to_string(&config.kernel.options).unwrap_or_default().trim().replace('\n', " "),
        config.optimizer.kind,
        args.data
    );
    println!(
        "params: total={} embedding={} bitlinear={} non_embedding={}",
        total,
        embedding,
        bitlinear,
        total - embedding
    );

    let batches = make_batches(8, b, t, v, &args.data, 1000)?;
    let mut params = vec![0f32; total];
    kernel.init_params(config.train.seed, &mut params)?;
    let mut grads = vec![0f32; total];

    let n_total = args.warmup + args.steps;
    let (mut times, mut losses) = (Vec::with_capacity(args.steps), Vec::new());
    let mut optimizer_times = Vec::with_capacity(args.steps);
    let mut first_step = 0f64;
    let mut cpu0 = None;
    let run_start = Instant::now();
    for i in 0..n_total {
        if i == args.warmup {
            cpu0 = CpuSample::now();
        }
        let (inputs, targets) = &batches[i % batches.len()];
        let batch = bitnet_framework::model::TokenBatch { inputs, targets, batch: b, seq_len: t };
        let t0 = Instant::now();
        let loss = kernel.forward_backward(&params, &batch, &mut grads)?;
        let t1 = Instant::now();
        optimizer.step(&mut params, &grads, StepInfo { step: i as u64, lr_scale: 1.0 })?;
        let dt = t0.elapsed().as_secs_f64();
        losses.push(loss);
        if i == 0 {
            first_step = dt;
        }
        if i >= args.warmup {
            times.push(dt);
            optimizer_times.push(t1.elapsed().as_secs_f64());
        }
        println!(
            "step {i:3} loss {loss:.4} {:8.1} ms{}",
            dt * 1e3,
            if i < args.warmup { "  (warm-up)" } else { "" }
        );
    }
    let foreign = cpu0.and_then(|c| c.foreign_fraction_since());
    let wall = run_start.elapsed().as_secs_f64();

    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let step_median = median(&sorted);
    let (min, max) = (sorted[0], sorted[sorted.len() - 1]);
    let tokens_per_step = (b * t) as f64;
    let tokens_per_s = tokens_per_step / step_median;
    let flops_6n = 6.0 * (total - embedding) as f64;
    let gflops = flops_6n * tokens_per_s / 1e9;
    let rss_mib = peak_rss_mib();
    optimizer_times.sort_by(f64::total_cmp);
    let optimizer_median = median(&optimizer_times);
    println!(
        "split (medians): forward+backward {:.1} ms, optimizer step {:.1} ms",
        (step_median - optimizer_median) * 1e3,
        optimizer_median * 1e3
    );
    // The kernel's build set the process-wide cap (its `isa` option and BITNET_ISA).
    println!("instruction set: {}", bitnet_framework::isa::describe());
    let (loss_first, loss_last) = (losses[0], losses[losses.len() - 1]);
    println!(
        "RESULT preset={} B={} threads={}: median step {:.1} ms (min {:.1}, max {:.1}) -> {:.1} tokens/s, \
         6N={:.2} GFLOP/s, peak RSS {:.0} MiB, first step {:.1}s, loss {:.3}->{:.3}, foreign CPU {}",
        config.preset,
        b,
        args.threads,
        step_median * 1e3,
        min * 1e3,
        max * 1e3,
        tokens_per_s,
        gflops,
        rss_mib,
        first_step,
        loss_first,
        loss_last,
        foreign.map(|f| format!("{:.1}% of machine", f * 100.0)).unwrap_or_else(|| "n/a".into()),
    );
    if let Some(path) = &args.json {
        let line = serde_json::json!({
            "label": args.label,
            "program": "bitnet",
            "preset": config.preset,
            "batch": b,
            "threads": args.threads,
            "seq_len": t,
            "vocab": v,
            "kernel": config.kernel.kind,
            "kernel_options": config.kernel.options,
            "optimizer": config.optimizer.kind,
            "data": args.data,
            "params": {"total": total, "embedding": embedding, "bitlinear": bitlinear,
                       "non_embedding": total - embedding},
            "warmup": args.warmup,
            "steps": args.steps,
            "first_step_s": first_step,
            "step_s_median": step_median,
            "step_s_min": min,
            "step_s_max": max,
            "step_s_mean": times.iter().sum::<f64>() / times.len() as f64,
            "optimizer_step_s_median": optimizer_median,
            "tokens_per_step": tokens_per_step,
            "tokens_per_s": tokens_per_s,
            "flops_per_token_6N": flops_6n,
            "achieved_gflops_6N": gflops,
            "loss_first": loss_first,
            "loss_last": loss_last,
            "peak_rss_mib": rss_mib,
            "foreign_cpu_frac": foreign,
            "wall_s": wall,
        });
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

type Batch = (Vec<u32>, Vec<u32>);

/// A pool of `n` batches like the reference's `make_batches`: `arith` sequences
/// `x_t = (a + t*s) mod V` with `a` uniform in `[0, V)` and `s` in `[1, 16]`, or `random` ids.
fn make_batches(
    n: usize,
    b: usize,
    t: usize,
    vocab: usize,
    kind: &str,
    seed: u64,
) -> anyhow::Result<Vec<Batch>> {
    let mut state = seed;
    let mut next = move || {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let v = vocab as u64;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let seq: Vec<u32> = match kind {
                "arith" => {
                    let (a, s) = (next() % v, 1 + next() % 16);
                    (0..=t as u64).map(|i| ((a + s * i) % v) as u32).collect()
                }
                "random" => (0..=t).map(|_| (next() % v) as u32).collect(),
                other => anyhow::bail!("--data must be `arith` or `random`, not `{other}`"),
            };
            x.extend_from_slice(&seq[..t]);
            y.extend_from_slice(&seq[1..]);
        }
        out.push((x, y));
    }
    Ok(out)
}

/// Peak resident set size of this process in MiB (`getrusage(RUSAGE_SELF).ru_maxrss`).
fn peak_rss_mib() -> f64 {
    // SAFETY: `rusage` is plain old data, so all-zero bytes are a valid value; `getrusage` only
    // writes into the struct we pass, which lives for the whole call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is a valid `who` argument.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    // Linux reports kilobytes.
    usage.ru_maxrss as f64 / 1024.0
}

/// CPU time of the machine and of this process, to report how busy other processes kept the
/// machine while we measured (as the reference does).
struct CpuSample {
    busy: u64,
    total: u64,
    own: u64,
}

impl CpuSample {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 8 {
            return None;
        }
        let total: u64 = v[..8].iter().sum();
        let busy = total - v[3] - v[4];
        let own_stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let after = own_stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let own = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some(Self { busy, total, own })
    }

    fn foreign_fraction_since(self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        let busy = now.busy.saturating_sub(self.busy) as f64;
        let own = now.own.saturating_sub(self.own) as f64;
        Some(((busy - own) / total).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arith_batches_follow_the_reference_recipe() {
        let batches = make_batches(2, 3, 5, 7, "arith", 1).expect("batches");
        assert_eq!(batches.len(), 2);
        for (x, y) in &batches {
            assert_eq!((x.len(), y.len()), (15, 15));
            for row in 0..3 {
                let xs = &x[row * 5..row * 5 + 5];
                let ys = &y[row * 5..row * 5 + 5];
                assert_eq!(&xs[1..], &ys[..4], "targets are the inputs shifted by one");
                let step = (xs[1] + 7 - xs[0]) % 7;
                assert!(xs.windows(2).all(|w| (w[1] + 7 - w[0]) % 7 == step), "{xs:?}");
            }
        }
        assert!(make_batches(1, 1, 4, 7, "zipf", 1).is_err());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 5.0]), 2.5);
    }
}
