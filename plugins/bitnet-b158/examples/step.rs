//! Times `forward_backward` of the "bitnet-b158" kernel alone (no optimizer) on a preset's
//! shapes, for profiling: `cargo run --release -p bitnet-b158 --example step -- small 8 2 fp32`.
//! `bitnet bench train` is the measurement comparable with the PyTorch reference.

use bitnet_b158::{BitNetKernel, Precision};
use bitnet_framework::model::{ModelConfig, ModelKernel, TokenBatch};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map(String::as_str).unwrap_or("small");
    let batch: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(8);
    let threads: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2);
    let precision: Precision = match args.get(3) {
        Some(p) => serde_json::from_str(&format!("\"{p}\""))?,
        None => Precision::default(),
    };
    let steps: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let (d_model, n_layers, n_heads, ffn_hidden, seq_len) = match preset {
        "tiny" => (32, 2, 4, 64, 32),
        "small" => (256, 4, 8, 1024, 128),
        "medium" => (512, 12, 16, 2048, 128),
        "large" => (768, 12, 12, 3072, 256),
        other => return Err(format!("unknown preset {other}").into()),
    };
    let config =
        ModelConfig { d_model, n_layers, n_heads, ffn_hidden, seq_len, ..ModelConfig::default() };
    let mut kernel = BitNetKernel::new(config.clone(), threads, precision)?;
    eprintln!("instruction set: {}", bitnet_framework::isa::describe());
    let mut params = vec![0.0; kernel.layout().total_params()];
    kernel.init_params(1, &mut params)?;
    let mut grads = vec![0.0; params.len()];
    let n = batch * seq_len;
    let inputs: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % config.vocab_size) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 10) % config.vocab_size) as u32).collect();
    let tb = TokenBatch { inputs: &inputs, targets: &targets, batch, seq_len };
    let mut times = Vec::new();
    let mut cpu0 = 0.0;
    for i in 0..steps + 2 {
        if i == 2 {
            cpu0 = cpu_seconds();
        }
        let t0 = Instant::now();
        let loss = kernel.forward_backward(&params, &tb, &mut grads)?;
        let dt = t0.elapsed().as_secs_f64();
        if i >= 2 {
            times.push(dt);
        }
        eprintln!("step {i} loss {loss:.4} {:.1} ms", dt * 1e3);
    }
    let cpu = (cpu_seconds() - cpu0) / steps as f64;
    println!(
        "CPU time per step {:.1} ms over all threads -> {:.0} tokens per CPU-second (load-independent)",
        cpu * 1e3,
        n as f64 / cpu
    );
    times.sort_by(f64::total_cmp);
    let med = times[times.len() / 2];
    println!(
        "{preset} B={batch} threads={threads} {precision:?}: median {:.1} ms -> {:.0} tokens/s (forward+backward only)",
        med * 1e3,
        n as f64 / med
    );
    Ok(())
}

/// User + system CPU seconds of this process (all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|v| v.parse().unwrap_or(0.0)).collect();
    // Fields 14 and 15 of the file (utime, stime) are at 11 and 12 after the command name.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}
