//! Causal attention forward + backward (`bitnet_b158::kernels::attention`) at the model's
//! shapes: `[B, H, T, hd]` with B = 8, T = 128, hd = 32 and H = 8 (small) or 16 (medium), on
//! the best path of this CPU (the scalar twin only where it is the only one: it is about 80
//! times slower), single-threaded and on two threads.
//!
//! Throughput counts the causal FLOPs: 7 products (2 forward, 5 backward) of
//! `2 * hd * T (T + 1) / 2` per (batch, head), so "elements/s" reads as FLOP/s.
//!
//!     cargo bench -p bitnet-benches --bench attention
//!     cargo bench -p bitnet-benches --bench attention -- small/Avx512/t1   # a subset

use bitnet_b158::kernels::Isa;
use bitnet_b158::kernels::attention::{
    ATTENTION_PATHS, attention_backward_with, attention_forward_with,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::Duration;

const BATCH: usize = 8;
const T: usize = 128;
const HD: usize = 32;

/// Deterministic values in `[-1, 1)` (a small LCG; the values do not matter for speed).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench_attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention_fwd_bwd");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    for (name, heads) in [("small", 8), ("medium", 16)] {
        let bh = BATCH * heads;
        let n = bh * T * HD;
        let (q, k, v, dout) = (values(n, 1), values(n, 2), values(n, 3), values(n, 4));
        let (mut out, mut stats) = (vec![0.0; n], vec![0.0; bh * T * 2]);
        let mut p = vec![0.0; bh * T * T];
        let (mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        let flops = 7 * bh * 2 * HD * T * (T + 1) / 2;
        g.throughput(Throughput::Elements(flops as u64));
        let isa = Isa::best_among(&ATTENTION_PATHS);
        for threads in [1, 2] {
            let pool =
                rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            let id = BenchmarkId::new(format!("{name}/{isa:?}/t{threads}"), bh);
            g.bench_function(id, |b| {
                b.iter(|| {
                    pool.install(|| {
                        let io = (&q[..], &k[..], &v[..]);
                        attention_forward_with(isa, &mut out, &mut p, &mut stats, io, (T, HD))
                            .expect("forward");
                        attention_backward_with(
                            isa,
                            (&mut dq, &mut dk, &mut dv),
                            &mut p,
                            &dout,
                            &stats,
                            io,
                            (T, HD),
                        )
                        .expect("backward");
                    });
                    black_box(&dq);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_attention);
criterion_main!(benches);
