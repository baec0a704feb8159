//! The BitNet b1.58 kernels: the machine's int8 VNNI peak (a register-only `vpdpbusd` loop), the
//! packed-ternary GEMM at the model's shapes on each path and thread count, the quantizers, and
//! the `gemm` crate's f32 product at the same shapes for comparison.
//!
//! After the criterion groups, a summary table prints each ternary GEMM shape as a fraction of
//! the measured peak (best of repeated runs; a measurement, never an assertion), with the bf16
//! and fp32 register-only peaks beside it (the roofline's figures), and the bf16 LM head
//! backward against the `gemm` crate. `-- summary` prints only those tables; `-- bf16-summary`
//! only the bf16 ones (BitLinear weight gradient, bf16 and int8, and LM head backward, as % of
//! the peaks); `-- head-summary` only the LM head backward, bf16 against int8. `-- pack-summary`
//! prints only the weight refresh (quantize and pack every BitLinear weight of a preset, fused
//! kernel against the unfused path) as best-of-runs times.
//!
//!     cargo bench -p bitnet-benches --bench kernel
//!     cargo bench -p bitnet-benches --bench kernel -- --quick ternary   # a subset

use bitnet_b158::kernels::bf16::{BF16_PATHS, grad_weight_bf16_with};
use bitnet_b158::kernels::bf16_gemm::{StridedF32, gemm_bf16_with};
use bitnet_b158::kernels::i8_grad::{ALayout, I8_GRAD_PATHS, grad_weight_i8_with, product_i8_with};
use bitnet_b158::kernels::quant::{
    QUANT_PATHS, quantize_activations_absmax_with, quantize_weights_absmean_with,
};
use bitnet_b158::kernels::ternary::{
    TERNARY_PATHS, ternary_matmul_dequant_with, ternary_matmul_with,
};
use bitnet_b158::kernels::weight_pack::{WEIGHT_PACK_PATHS, quantize_pack_weights_with};
use bitnet_b158::kernels::{GemmError, Isa, PackedTernary};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Rows of the medium preset at batch 8: 8 sequences of 128 tokens.
const M: usize = 1024;
/// (N, K) of the BitLinear products: medium (d = 512, ffn = 2048) and small (d = 256, ffn = 1024).
const SHAPES: [(usize, usize); 6] =
    [(512, 512), (2048, 512), (512, 2048), (256, 256), (1024, 256), (256, 1024)];

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool")
}

/// Deterministic pseudo-random bytes (a small LCG; the values do not matter for speed).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

fn operands(n: usize, k: usize) -> (Vec<i8>, PackedTernary) {
    let x: Vec<i8> = bytes(M * k, 1).into_iter().map(|b| b as i8).collect();
    let w: Vec<i8> = bytes(n * k, 2).into_iter().map(|b| (b % 3) as i8 - 1).collect();
    (x, PackedTernary::pack(&w, n, k).expect("pack"))
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// Independent accumulators: enough to cover vpdpbusd's latency at full throughput.
    const CHAINS: usize = 12;

    /// `iters` rounds of `CHAINS` register-only `vpdpbusd zmm`; returns a value so the work is
    /// kept. Each instruction is 64 multiply-adds (128 int8 operations).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and VNNI.
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpbusd_loop(iters: u64) -> i32 {
        let a = black_box(_mm512_set1_epi8(1));
        let b = black_box(_mm512_set1_epi8(-1));
        let mut acc = [_mm512_setzero_si512(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }

    /// Int8 operations per `dpbusd_loop` iteration.
    pub const OPS_PER_ITER: u64 = (CHAINS * 64 * 2) as u64;

    /// `iters` rounds of `CHAINS` register-only `vdpbf16ps zmm` (32 bf16 multiply-adds, 64
    /// operations each).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16_loop(iters: u64) -> f32 {
        let a: __m512bh = _mm512_cvtne2ps_pbh(black_box(_mm512_set1_ps(1.0)), _mm512_set1_ps(1.0));
        let b: __m512bh = _mm512_cvtne2ps_pbh(black_box(_mm512_set1_ps(-1.0)), _mm512_set1_ps(1.0));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// `iters` rounds of `CHAINS` register-only `vfmadd231ps zmm` (16 fp32 multiply-adds, 32
    /// operations each).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma_loop(iters: u64) -> f32 {
        let a = black_box(_mm512_set1_ps(1.0));
        let b = black_box(_mm512_set1_ps(-1.0));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(a, b, *v);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }

    /// Operations per iteration of `dpbf16_loop`.
    pub const BF16_OPS_PER_ITER: u64 = (CHAINS * 32 * 2) as u64;
    /// Operations per iteration of `fma_loop`.
    pub const FP32_OPS_PER_ITER: u64 = (CHAINS * 16 * 2) as u64;

    /// Runs the bf16 loop if the CPU has AVX-512 BF16.
    pub fn run_bf16(iters: u64) -> Option<f32> {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the features were just detected.
            Some(unsafe { dpbf16_loop(iters) })
        } else {
            None
        }
    }

    /// Runs the fp32 FMA loop if the CPU has AVX-512 F.
    pub fn run_fp32(iters: u64) -> Option<f32> {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was just detected.
            Some(unsafe { fma_loop(iters) })
        } else {
            None
        }
    }

    /// Runs the loop if the CPU has AVX-512 VNNI.
    pub fn run(iters: u64) -> Option<i32> {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vnni") {
            // SAFETY: the features were just detected.
            Some(unsafe { dpbusd_loop(iters) })
        } else {
            None
        }
    }
}

/// Measured int8 ops/s of `threads` threads running the register-only loop at once: each thread
/// times its own loop (so waking the pool does not count) and keeps its best of many short runs;
/// the threads' rates add up.
#[cfg(target_arch = "x86_64")]
fn measure_peak(threads: usize) -> Option<f64> {
    peak::run(1)?;
    let iters = 100_000u64;
    let rates = pool(threads).broadcast(|_| {
        let secs = best_secs(Duration::from_secs(1), || {
            black_box(peak::run(black_box(iters)));
        });
        (iters * peak::OPS_PER_ITER) as f64 / secs
    });
    Some(rates.iter().sum())
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_peak(_threads: usize) -> Option<f64> {
    None
}

/// Measured bf16 and fp32 ops/s of `threads` threads (register-only `vdpbf16ps` and
/// `vfmadd231ps` loops, measured as [`measure_peak`] does), for the roofline.
#[cfg(target_arch = "x86_64")]
fn measure_float_peaks(threads: usize) -> (Option<f64>, Option<f64>) {
    let iters = 100_000u64;
    let p = pool(threads);
    let bf16 = peak::run_bf16(1).map(|_| {
        let rates = p.broadcast(|_| {
            let secs = best_secs(Duration::from_secs(1), || {
                black_box(peak::run_bf16(black_box(iters)));
            });
            (iters * peak::BF16_OPS_PER_ITER) as f64 / secs
        });
        rates.iter().sum()
    });
    let fp32 = peak::run_fp32(1).map(|_| {
        let rates = p.broadcast(|_| {
            let secs = best_secs(Duration::from_secs(1), || {
                black_box(peak::run_fp32(black_box(iters)));
            });
            (iters * peak::FP32_OPS_PER_ITER) as f64 / secs
        });
        rates.iter().sum()
    });
    (bf16, fp32)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure_float_peaks(_threads: usize) -> (Option<f64>, Option<f64>) {
    (None, None)
}

fn bench_peak(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    if peak::run(1).is_some() {
        let iters = 100_000u64;
        let mut g = c.benchmark_group("vnni_peak");
        g.throughput(Throughput::Elements(iters * peak::OPS_PER_ITER));
        g.bench_function("vpdpbusd_register_loop_1thread", |b| {
            b.iter(|| peak::run(black_box(iters)))
        });
        g.finish();
    }
    let _ = c;
}

fn bench_ternary(c: &mut Criterion) {
    let mut g = c.benchmark_group("ternary_matmul");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (n, k) in SHAPES {
        let (x, w) = operands(n, k);
        let mut out = vec![0i32; M * n];
        g.throughput(Throughput::Elements((2 * M * n * k) as u64));
        for isa in Isa::available_among(&TERNARY_PATHS) {
            if isa == Isa::Scalar && n * k > 512 * 512 {
                continue; // minutes per sample; the small shapes show its speed.
            }
            for threads in [1, 2] {
                let p = pool(threads);
                let id = BenchmarkId::new(format!("{isa:?}/t{threads}"), format!("{M}x{n}x{k}"));
                g.bench_function(id, |b| {
                    b.iter(|| p.install(|| ternary_matmul_with(isa, &x, M, k, &w, &mut out)))
                });
            }
        }
    }
    g.finish();

    let mut g = c.benchmark_group("ternary_matmul_dequant");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let isa = Isa::best_among(&TERNARY_PATHS);
    for (n, k) in SHAPES {
        let (x, w) = operands(n, k);
        let scales = vec![0.5f32; M];
        let mut out = vec![0f32; M * n];
        g.throughput(Throughput::Elements((2 * M * n * k) as u64));
        for threads in [1, 2] {
            let p = pool(threads);
            let id = BenchmarkId::new(format!("{isa:?}/t{threads}"), format!("{M}x{n}x{k}"));
            g.bench_function(id, |b| {
                b.iter(|| {
                    p.install(|| {
                        ternary_matmul_dequant_with(isa, &x, M, k, &w, &scales, 0.1, &mut out)
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_quant(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantize");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    let x: Vec<f32> = bytes(M * 512, 3).into_iter().map(|b| f32::from(b) / 50.0 - 2.5).collect();
    let w: Vec<f32> =
        bytes(2048 * 512, 4).into_iter().map(|b| f32::from(b) / 5e3 - 0.025).collect();
    for isa in Isa::available_among(&QUANT_PATHS) {
        let mut q = vec![0i8; x.len()];
        let mut s = vec![0f32; M];
        g.throughput(Throughput::Elements(x.len() as u64));
        g.bench_function(
            BenchmarkId::new(format!("{isa:?}"), format!("activations_{M}x512")),
            |b| b.iter(|| quantize_activations_absmax_with(isa, &x, 512, &mut q, &mut s)),
        );
        let mut qw = vec![0i8; w.len()];
        g.throughput(Throughput::Elements(w.len() as u64));
        g.bench_function(BenchmarkId::new(format!("{isa:?}"), "weights_2048x512"), |b| {
            b.iter(|| quantize_weights_absmean_with(isa, &w, &mut qw))
        });
    }
    g.finish();
}

/// A BitLinear weight-gradient product on a given path (`grad_weight_bf16_with`,
/// `grad_weight_i8_with`).
type GradWeight =
    fn(Isa, &[f32], usize, usize, &[i8], &[f32], usize, &mut [f32], bool) -> Result<(), GemmError>;

/// The weight gradient `dW (N x K) = dY^T . X`: bf16 and block-scaled int8 paths against the
/// `gemm` crate in f32.
fn bench_grad_weight(c: &mut Criterion) {
    let mut g = c.benchmark_group("grad_weight");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (n, k) in SHAPES {
        let dy: Vec<f32> =
            bytes(M * n, 7).into_iter().map(|v| f32::from(v) / 1e4 - 0.0128).collect();
        let x: Vec<i8> = bytes(M * k, 8).into_iter().map(|b| b as i8).collect();
        let xf: Vec<f32> = x.iter().map(|&v| f32::from(v) / 100.0).collect();
        let scales = vec![100.0f32; M];
        let mut dw = vec![0f32; n * k];
        g.throughput(Throughput::Elements((2 * M * n * k) as u64));
        for threads in [1, 2] {
            let p = pool(threads);
            let products: [(&str, &[Isa], GradWeight); 2] = [
                ("bf16", &BF16_PATHS, grad_weight_bf16_with),
                ("int8", &I8_GRAD_PATHS, grad_weight_i8_with),
            ];
            for (label, paths, product) in products {
                for isa in Isa::available_among(paths) {
                    if isa == Isa::Scalar && n * k > 256 * 256 {
                        continue;
                    }
                    let id = BenchmarkId::new(
                        format!("{label}_{isa:?}/t{threads}"),
                        format!("{M}x{n}x{k}"),
                    );
                    g.bench_function(id, |b| {
                        b.iter(|| {
                            p.install(|| product(isa, &dy, M, n, &x, &scales, k, &mut dw, false))
                        })
                    });
                }
            }
            let id = BenchmarkId::new(format!("gemm_f32/t{threads}"), format!("{M}x{n}x{k}"));
            g.bench_function(id, |b| b.iter(|| gemm_f32_atb(&dy, &xf, &mut dw, n, k, threads)));
        }
    }
    g.finish();
}

/// `dW (n x k) = dY^T . X` with the `gemm` crate: `dY` is M x n, `X` is M x k, both row-major.
fn gemm_f32_atb(dy: &[f32], x: &[f32], dw: &mut [f32], n: usize, k: usize, threads: usize) {
    assert!(dy.len() == M * n && x.len() == M * k && dw.len() == n * k);
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `dw` is n x k row-major (cs 1, rs k); the left operand dY^T is n x M read from the
    // M x n row-major `dy` (cs n, rs 1); the right operand X is M x k row-major (cs 1, rs k);
    // lengths asserted above, no aliasing.
    unsafe {
        gemm::gemm(
            n,
            k,
            M,
            dw.as_mut_ptr(),
            1,
            k as isize,
            false,
            dy.as_ptr(),
            n as isize,
            1,
            x.as_ptr(),
            1,
            k as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

fn bench_pack(c: &mut Criterion) {
    let mut g = c.benchmark_group("pack_ternary");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300));
    let (n, k) = (2048, 512);
    let w: Vec<i8> = bytes(n * k, 9).into_iter().map(|b| (b % 3) as i8 - 1).collect();
    let mut p = PackedTernary::pack(&w, n, k).expect("pack");
    let mut t = PackedTernary::pack_transposed(&w, n, k).expect("pack");
    g.throughput(Throughput::Elements((n * k) as u64));
    let one = pool(1);
    g.bench_function("repack_2048x512_t1", |b| b.iter(|| one.install(|| p.repack(&w))));
    g.bench_function("repack_transposed_2048x512_t1", |b| {
        b.iter(|| one.install(|| t.repack_transposed(&w)))
    });
    g.finish();
}

/// Latent weights of one tensor: roughly normal, std about 0.02 (the sum of four uniforms).
fn latent_weights(len: usize, seed: u64) -> Vec<f32> {
    bytes(4 * len, seed)
        .chunks_exact(4)
        .map(|b| (b.iter().map(|&v| f32::from(v)).sum::<f32>() - 510.0) / 7400.0)
        .collect()
}

/// Every BitLinear weight of a preset with its packed buffers, as one training step refreshes
/// them.
struct PackCase {
    name: &'static str,
    weights: Vec<Vec<f32>>,
    codes: Vec<Vec<i8>>,
    forward: Vec<PackedTernary>,
    transposed: Vec<PackedTernary>,
}

impl PackCase {
    /// `layers` blocks of q, k, v, o (`d x d`), gate, up (`f x d`) and down (`d x f`).
    fn new(name: &'static str, d: usize, f: usize, layers: usize) -> Self {
        let block = [(d, d), (d, d), (d, d), (d, d), (f, d), (f, d), (d, f)];
        let shapes: Vec<(usize, usize)> = (0..layers).flat_map(|_| block).collect();
        let zeros = |&(n, k): &(usize, usize)| vec![0i8; n * k];
        Self {
            name,
            weights: shapes
                .iter()
                .enumerate()
                .map(|(i, &(n, k))| latent_weights(n * k, i as u64))
                .collect(),
            codes: shapes.iter().map(zeros).collect(),
            forward: shapes
                .iter()
                .map(|s| PackedTernary::pack(&zeros(s), s.0, s.1).expect("pack"))
                .collect(),
            transposed: shapes
                .iter()
                .map(|s| PackedTernary::pack_transposed(&zeros(s), s.0, s.1).expect("pack"))
                .collect(),
        }
    }

    fn weights(&self) -> usize {
        self.weights.iter().map(Vec::len).sum()
    }

    /// The fused quantize-and-pack on `isa`, tensor after tensor.
    fn fused(&mut self, isa: Isa) {
        for ((w, p), t) in self.weights.iter().zip(&mut self.forward).zip(&mut self.transposed) {
            black_box(quantize_pack_weights_with(isa, w, p, Some(t)).expect("pack"));
        }
    }

    /// The path the model took before the fused kernel: the chunked f64 absmean (in-order
    /// chunk sums), `trit(w / (g + eps))` into codes, then `repack` and `repack_transposed`.
    fn unfused(&mut self) {
        use bitnet_framework::weights::ternary::{WEIGHT_EPS, trit};
        use rayon::prelude::*;
        let parts = self.weights.iter().zip(&mut self.codes);
        for ((w, q), (p, t)) in parts.zip(self.forward.iter_mut().zip(&mut self.transposed)) {
            let partial: Vec<f64> = w
                .par_chunks(1 << 14)
                .map(|c| c.iter().map(|v| f64::from(v.abs())).sum::<f64>())
                .collect();
            let g = (partial.iter().sum::<f64>() / w.len() as f64) as f32;
            let div = g + WEIGHT_EPS;
            for (qi, &v) in q.iter_mut().zip(w) {
                *qi = trit(v / div);
            }
            p.repack(q).expect("repack");
            t.repack_transposed(q).expect("repack");
            black_box(g);
        }
    }
}

fn pack_cases() -> [PackCase; 2] {
    [PackCase::new("small", 256, 1024, 4), PackCase::new("medium", 512, 2048, 12)]
}

/// Every BitLinear weight of the small and medium presets quantized and packed (forward and
/// transposed), as one training step does, on one thread: the fused kernel and the unfused path
/// it replaced.
fn bench_pack_weights(c: &mut Criterion) {
    let mut g = c.benchmark_group("pack-weights");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    let one = pool(1);
    let isa = Isa::best_among(&WEIGHT_PACK_PATHS);
    for mut case in pack_cases() {
        g.throughput(Throughput::Elements(case.weights() as u64));
        let id = format!("{}_t1", case.name);
        g.bench_function(BenchmarkId::new(format!("fused-{isa:?}"), &id), |b| {
            b.iter(|| one.install(|| case.fused(isa)))
        });
        g.bench_function(BenchmarkId::new("unfused", &id), |b| {
            b.iter(|| one.install(|| case.unfused()))
        });
    }
    g.finish();
}

/// Best-of-repeated-runs times of the weight refresh (less sensitive to a busy machine than
/// criterion's means), every path of the fused kernel against the unfused path, 1 and 2
/// threads.
fn pack_summary() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("\n== weight refresh: quantize + pack forward and transposed (best of runs) ==");
    println!("load average: {}", load.trim());
    for mut case in pack_cases() {
        for threads in [1, 2] {
            let p = pool(threads);
            let budget = Duration::from_millis(1500);
            let unfused = best_secs(budget, || p.install(|| case.unfused()));
            let mut line = format!(
                "  {:>6} t{threads} ({:.1}M weights): unfused {:>7.3} ms",
                case.name,
                case.weights() as f64 / 1e6,
                unfused * 1e3
            );
            for isa in Isa::available_among(&WEIGHT_PACK_PATHS) {
                let fused = best_secs(budget, || p.install(|| case.fused(isa)));
                line += &format!(
                    " | {isa:?} {:>7.3} ms ({:.2} ns/weight, {:.1}x)",
                    fused * 1e3,
                    fused * 1e9 / case.weights() as f64,
                    unfused / fused
                );
            }
            println!("{line}");
        }
    }
}

/// The `gemm` crate's f32 product `C (M x N) = A (M x K) . B^T` at the same shapes.
fn bench_gemm_f32(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_crate_f32");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (n, k) in SHAPES {
        let a: Vec<f32> = bytes(M * k, 5).into_iter().map(|v| f32::from(v) / 128.0 - 1.0).collect();
        let b: Vec<f32> = bytes(n * k, 6).into_iter().map(|v| f32::from(v) / 128.0 - 1.0).collect();
        let mut out = vec![0f32; M * n];
        g.throughput(Throughput::Elements((2 * M * n * k) as u64));
        for threads in [1, 2] {
            let id = BenchmarkId::new(format!("t{threads}"), format!("{M}x{n}x{k}"));
            g.bench_function(id, |bch| bch.iter(|| gemm_f32(&a, &b, &mut out, n, k, threads)));
        }
    }
    g.finish();
}

fn gemm_f32(a: &[f32], b: &[f32], out: &mut [f32], n: usize, k: usize, threads: usize) {
    assert!(a.len() == M * k && b.len() == n * k && out.len() == M * n);
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: `out` is M x n row-major (rs n, cs 1); `a` is M x k row-major; `b` is n x k
    // row-major read as its transpose k x n (rs 1, cs k); lengths asserted above, no aliasing.
    unsafe {
        gemm::gemm(
            M,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// The shortest wall time of `f` over repeated runs for about `budget` (at least 5 runs), after
/// two warm-up runs. The minimum, not the median: on a shared machine it is the run least
/// disturbed by other processes (the load average is printed with the table).
fn best_secs(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    let mut runs = 0;
    while runs < 5 || start.elapsed() < budget {
        let s = Instant::now();
        f();
        best = best.min(s.elapsed().as_secs_f64());
        runs += 1;
    }
    best
}

/// The BitLinear weight gradient `dW (N x K) = (dY / s)^T . X_q` at the model's shapes, in
/// GFLOP/s, on the bf16 path (as a fraction of the measured bf16 peak) and on the block-scaled
/// int8 path (as a fraction of the int8 peak, and its speed-up over bf16).
fn grad_weight_summary() {
    let isa = Isa::best_among(&BF16_PATHS);
    let isa8 = Isa::best_among(&I8_GRAD_PATHS);
    println!("\n== BitLinear weight gradient, bf16 path {isa:?}, int8 path {isa8:?}, M = {M} ==");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
    for threads in [1, 2] {
        let peak = measure_float_peaks(threads).0;
        let peak8 = measure_peak(threads);
        let p = pool(threads);
        for (n, k) in SHAPES {
            let dy: Vec<f32> =
                bytes(M * n, 7).into_iter().map(|v| f32::from(v) / 1e4 - 0.0128).collect();
            let x: Vec<i8> = bytes(M * k, 8).into_iter().map(|b| b as i8).collect();
            let scales = vec![100.0f32; M];
            let mut dw = vec![0f32; n * k];
            let secs = best_secs(Duration::from_millis(800), || {
                p.install(|| grad_weight_bf16_with(isa, &dy, M, n, &x, &scales, k, &mut dw, false))
                    .expect("dW")
            });
            let secs8 = best_secs(Duration::from_millis(800), || {
                p.install(|| grad_weight_i8_with(isa8, &dy, M, n, &x, &scales, k, &mut dw, false))
                    .expect("dW")
            });
            let flop = (2 * M * n * k) as f64;
            let pct = |v: f64, pk: Option<f64>| {
                pk.map_or("n/a".to_string(), |pk| format!("{:.1}%", 100.0 * v / pk))
            };
            println!(
                "  t{threads} {M:>5} x {n:>5} x {k:>5}: bf16 {:>6.1} GFLOP/s {:>6} of bf16 peak ({:.3} ms) | int8 {:>6.1} {:>6} of int8 peak ({:.3} ms), {:.2}x",
                flop / secs / 1e9,
                pct(flop / secs, peak),
                secs * 1e3,
                flop / secs8 / 1e9,
                pct(flop / secs8, peak8),
                secs8 * 1e3,
                secs / secs8
            );
        }
    }
}

/// The mixed-precision LM head backward (`V = 5174`, `M` rows) in GFLOP/s: `dX = dY . W` and
/// `dW = dY^T . X` on bf16 products and on int8 products with block scales (the int8 times
/// include quantizing `W` or `X` per row), against the `gemm` crate's f32 `dW`.
fn lm_head_summary() {
    const V: usize = 5174;
    let isa = Isa::best_among(&BF16_PATHS);
    let isa8 = Isa::best_among(&I8_GRAD_PATHS);
    let qisa = Isa::best_among(&QUANT_PATHS);
    println!("\n== LM head backward, M = {M}, V = {V} (bf16 path {isa:?}, int8 path {isa8:?}) ==");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
    for d in [256, 512] {
        let dy: Vec<f32> =
            bytes(M * V, 9).into_iter().map(|v| f32::from(v) / 1e4 - 0.0128).collect();
        let w: Vec<f32> =
            bytes(V * d, 10).into_iter().map(|v| f32::from(v) / 1e3 - 0.128).collect();
        let x: Vec<f32> = bytes(M * d, 11).into_iter().map(|v| f32::from(v) / 1e2 - 1.28).collect();
        let flop = (2 * M * V * d) as f64;
        for threads in [1, 2] {
            let p = pool(threads);
            let mut dx = vec![0f32; M * d];
            let dx_secs = best_secs(Duration::from_millis(1500), || {
                let (a, b) = (StridedF32::width_major(&dy, V), StridedF32::depth_major(&w, d));
                p.install(|| gemm_bf16_with(isa, &mut dx, (M, d, V), a, b, false)).expect("dX")
            });
            let (mut wq, mut ws) = (vec![0i8; V * d], vec![0f32; V]);
            let dx8_secs = best_secs(Duration::from_millis(1500), || {
                p.install(|| {
                    quantize_activations_absmax_with(qisa, &w, d, &mut wq, &mut ws)?;
                    let rows = ALayout::RowMajor;
                    product_i8_with(isa8, rows, &dy, V, M, &wq, &ws, d, &mut dx, false)
                })
                .expect("dX int8")
            });
            let mut dw = vec![0f32; V * d];
            let dw_secs = best_secs(Duration::from_millis(1500), || {
                let (a, b) = (StridedF32::depth_major(&dy, V), StridedF32::depth_major(&x, d));
                p.install(|| gemm_bf16_with(isa, &mut dw, (V, d, M), a, b, false)).expect("dW")
            });
            let (mut xq, mut xs) = (vec![0i8; M * d], vec![0f32; M]);
            let dw8_secs = best_secs(Duration::from_millis(1500), || {
                p.install(|| {
                    quantize_activations_absmax_with(qisa, &x, d, &mut xq, &mut xs)?;
                    grad_weight_i8_with(isa8, &dy, M, V, &xq, &xs, d, &mut dw, false)
                })
                .expect("dW int8")
            });
            let f32_secs = best_secs(Duration::from_millis(1500), || {
                p.install(|| gemm_f32_atb(&dy, &x, &mut dw, V, d, threads))
            });
            let g =
                |secs: f64| format!("{:>6.1} GFLOP/s ({:.2} ms)", flop / secs / 1e9, secs * 1e3);
            println!(
                "  d {d:>3} t{threads}: dX bf16 {}, int8 {} {:.2}x | dW bf16 {}, int8 {} {:.2}x | f32 dW {}",
                g(dx_secs),
                g(dx8_secs),
                dx_secs / dx8_secs,
                g(dw_secs),
                g(dw8_secs),
                dw_secs / dw8_secs,
                g(f32_secs)
            );
        }
    }
}

/// The table of the issue: each shape's int8 ops/s as a fraction of the measured peak.
fn summary() {
    let isa = Isa::best_among(&TERNARY_PATHS);
    println!("\n== packed-ternary GEMM vs measured int8 VNNI peak (path {isa:?}, M = {M}) ==");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.trim());
    for threads in [1, 2] {
        let Some(peak) = measure_peak(threads) else {
            println!("no AVX-512 VNNI on this CPU: no peak to compare with");
            return;
        };
        println!("threads {threads}: peak {:.1} Gop/s (register-only vpdpbusd)", peak / 1e9);
        let (bf16, fp32) = measure_float_peaks(threads);
        let show = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.1}", v / 1e9));
        println!(
            "threads {threads}: bf16 {} GFLOP/s (vdpbf16ps), fp32 {} GFLOP/s (vfmadd231ps)",
            show(bf16),
            show(fp32)
        );
        let p = pool(threads);
        for (n, k) in SHAPES {
            let (x, w) = operands(n, k);
            let mut out = vec![0i32; M * n];
            let secs = best_secs(Duration::from_millis(1500), || {
                p.install(|| ternary_matmul_with(isa, &x, M, k, &w, &mut out)).expect("matmul")
            });
            let ops = (2 * M * n * k) as f64 / secs;
            println!(
                "  {M:>5} x {n:>5} x {k:>5}: {:>7.1} Gop/s  {:>5.1}% of peak  ({:.3} ms)",
                ops / 1e9,
                100.0 * ops / peak,
                secs * 1e3
            );
        }
    }
}

criterion_group!(
    benches,
    bench_peak,
    bench_ternary,
    bench_quant,
    bench_pack,
    bench_pack_weights,
    bench_grad_weight,
    bench_gemm_f32
);

fn main() {
    if std::env::args().any(|a| a == "pack-summary") {
        pack_summary();
        return;
    }
    let summary_only = std::env::args().any(|a| a == "summary");
    let bf16_only = std::env::args().any(|a| a == "bf16-summary");
    let head_only = std::env::args().any(|a| a == "head-summary");
    if !summary_only && !bf16_only && !head_only {
        benches();
        criterion::Criterion::default().configure_from_args().final_summary();
    }
    if !bf16_only && !head_only {
        summary();
    }
    if !head_only {
        grad_weight_summary();
    }
    lm_head_summary();
}
