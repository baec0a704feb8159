//! The "bitnet-b158" model kernel: one `forward_backward` (the whole training step but the
//! optimizer) on a preset's shapes, per precision and thread count. Throughput is in tokens.
//! `bitnet bench train` adds the optimizer and prints the line comparable with PyTorch.
//!
//!     cargo bench -p bitnet-benches --bench model
//!     cargo bench -p bitnet-benches --bench model -- small/mixed     # a subset

use bitnet_b158::{BitNetKernel, Precision};
use bitnet_framework::model::{ModelConfig, ModelKernel, TokenBatch};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

fn preset(name: &str) -> ModelConfig {
    let (d_model, n_layers, n_heads, ffn_hidden, seq_len) = match name {
        "medium" => (512, 12, 16, 2048, 128),
        _ => (256, 4, 8, 1024, 128),
    };
    ModelConfig { d_model, n_layers, n_heads, ffn_hidden, seq_len, ..ModelConfig::default() }
}

fn bench_preset(c: &mut Criterion, name: &str, batch: usize, precisions: &[Precision]) {
    let config = preset(name);
    let n = batch * config.seq_len;
    // The reference's "arith" sequences: x_t = (a + t s) mod V.
    let seq: Vec<u32> = (0..batch * (config.seq_len + 1))
        .map(|i| {
            let (row, t) = (i / (config.seq_len + 1), i % (config.seq_len + 1));
            ((row * 977 + t * (row % 16 + 1)) % config.vocab_size) as u32
        })
        .collect();
    let inputs: Vec<u32> =
        seq.chunks(config.seq_len + 1).flat_map(|r| r[..config.seq_len].to_vec()).collect();
    let targets: Vec<u32> = seq.chunks(config.seq_len + 1).flat_map(|r| r[1..].to_vec()).collect();
    let mut group = c.benchmark_group(format!("{name}-b{batch}"));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(n as u64));
    for &precision in precisions {
        for threads in [1, 2] {
            let mut kernel = BitNetKernel::new(config.clone(), threads, precision).expect("kernel");
            let mut params = vec![0.0; kernel.layout().total_params()];
            kernel.init_params(1, &mut params).expect("init");
            let mut grads = vec![0.0; params.len()];
            let batch =
                TokenBatch { inputs: &inputs, targets: &targets, batch, seq_len: config.seq_len };
            let id =
                BenchmarkId::new(format!("{precision:?}").to_lowercase(), format!("{threads}t"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let loss = kernel.forward_backward(&params, &batch, &mut grads).expect("step");
                    black_box(loss)
                })
            });
        }
    }
    group.finish();
}

fn model(c: &mut Criterion) {
    bench_preset(c, "small", 8, &[Precision::Fp32, Precision::Mixed]);
    bench_preset(c, "small", 32, &[Precision::Mixed]);
    bench_preset(c, "medium", 8, &[Precision::Mixed]);
}

criterion_group!(benches, model);
criterion_main!(benches);
