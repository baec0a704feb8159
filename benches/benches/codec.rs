//! Gradient codecs, weight codecs and the weight store on a medium-size model (55.6M
//! parameters): what the coordinator pays to decode and apply one update, what a worker pays to
//! encode it, and the bytes each codec puts on the wire (printed before the benches run).
//!
//!     cargo bench -p bitnet-benches --bench codec
//!     cargo bench -p bitnet-benches --bench codec -- main_job_small   # the README's main job
//!
//! The update is a fixed pseudo-random arena with gradient-like magnitudes (a bench input; the
//! codecs' cost does not depend on where the values came from).

use bitnet_framework::codec::GradientCodec;
use bitnet_framework::optim::{Optimizer, StepInfo};
use bitnet_framework::registry::Registry;
use bitnet_framework::store::WeightStore;
use bitnet_framework::tensor::ParamLayout;
use bitnet_framework::weights::WeightCodec;
use bitnet_framework::{BuildContext, Slot};
use bitnet_runtime::config::{ConfigSources, load};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// (label, plugin, `block` option): `int8-ef` per tensor (the default) and with a scale per 256
/// values.
const GRADIENT_CODECS: [(&str, &str, u32); 4] = [
    ("fp32", "fp32", 0),
    ("int8", "int8", 0),
    ("int8-ef", "int8-ef", 0),
    ("int8-ef/b256", "int8-ef", 256),
];
const WEIGHT_CODECS: [&str; 2] = ["fp32", "ternary"];

struct Setup {
    registry: Registry,
    ctx: BuildContext,
    layout: ParamLayout,
    update: Vec<f32>,
    params: Vec<f32>,
}

/// xorshift64*: a fixed, fast stream of pseudo-random values.
fn stream(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32;
            // Sum of two uniforms: a cheap bell shape in (-1, 1).
            let v = (u - 0.5) + ((s >> 7) as u32 as f32 / u32::MAX as f32 - 0.5);
            v * scale
        })
        .collect()
}

fn setup() -> Setup {
    setup_preset("medium")
}

fn setup_preset(preset: &str) -> Setup {
    let loaded =
        load(&ConfigSources { overrides: vec![format!("preset={preset}")], ..Default::default() })
            .unwrap_or_else(|e| panic!("{preset} preset: {e}"));
    let model = loaded.config.model;
    let layout = bitnet_b158::layout::model_layout(&model).unwrap_or_else(|e| panic!("{e}"));
    let registry = bitnet_plugins::registry().unwrap_or_else(|e| panic!("{e}"));
    let n = layout.total_params();
    let ctx = BuildContext::new(model).with_layout(layout.clone());
    Setup { registry, ctx, update: stream(7, n, 1e-3), params: stream(11, n, 0.04), layout }
}

fn gradient_codec(s: &Setup, (_, name, block): (&str, &str, u32)) -> Box<dyn GradientCodec> {
    let mut options = toml::Table::new();
    if block > 0 {
        options.insert("block".into(), i64::from(block).into());
    }
    s.registry.build::<dyn GradientCodec>(name, &options, &s.ctx).unwrap_or_else(|e| panic!("{e}"))
}

fn weight_codec(s: &Setup, name: &str) -> Box<dyn WeightCodec> {
    s.registry
        .build::<dyn WeightCodec>(name, &toml::Table::new(), &s.ctx)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn print_wire_sizes(s: &Setup) {
    let n = s.layout.total_params();
    println!("medium: {n} parameters in {} tensors", s.layout.tensors().len());
    let raw = (n * 4) as f64;
    for spec in GRADIENT_CODECS {
        let name = spec.0;
        let bytes = gradient_codec(s, spec).encode(&s.layout, &s.update).map(|b| b.len());
        let bytes = bytes.unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "gradient codec {name:<12} {bytes:>11} bytes on the wire per update ({:.3} of fp32 values, {:.2} bits/param)",
            bytes as f64 / raw,
            bytes as f64 * 8.0 / n as f64
        );
    }
    for name in WEIGHT_CODECS {
        let bytes = weight_codec(s, name).encode(&s.layout, 1, &s.params).map(|b| b.len());
        let bytes = bytes.unwrap_or_else(|e| panic!("{name}: {e}"));
        println!(
            "weight codec   {name:<12} {bytes:>11} bytes per download ({:.3} of fp32 values, {:.2} bits/param)",
            bytes as f64 / raw,
            bytes as f64 * 8.0 / n as f64
        );
    }
}

fn gradient_codecs(c: &mut Criterion) {
    let s = setup();
    print_wire_sizes(&s);
    let mut group = c.benchmark_group("codec_medium");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let adamw = s.registry.get(Slot::Optimizer, "adamw").is_ok();
    for spec in GRADIENT_CODECS {
        let name = spec.0;
        let mut codec = gradient_codec(&s, spec);
        group.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| codec.encode(&s.layout, black_box(&s.update)).map(|v| v.len()))
        });
        let payload = codec.encode(&s.layout, &s.update).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| codec.decode(&s.layout, black_box(&payload)).map(|v| v.len()))
        });
        // What the coordinator does per upload: decode, then a plain SGD step scaled by the
        // staleness policy's multiplier.
        let mut params = s.params.clone();
        group.bench_function(format!("{name}/decode_apply_sgd"), |b| {
            b.iter(|| {
                let update = codec.decode(&s.layout, black_box(&payload)).unwrap_or_default();
                let lr = 1e-3f32 * 0.5;
                for (p, u) in params.iter_mut().zip(&update) {
                    *p -= lr * u;
                }
            })
        });
        if adamw {
            let mut opt = s
                .registry
                .build::<dyn Optimizer>("adamw", &toml::Table::new(), &s.ctx)
                .unwrap_or_else(|e| panic!("{e}"));
            let mut step = 0;
            group.bench_function(format!("{name}/decode_apply_adamw"), |b| {
                b.iter(|| {
                    let update = codec.decode(&s.layout, black_box(&payload)).unwrap_or_default();
                    step += 1;
                    opt.step(&mut params, &update, StepInfo { step, lr_scale: 0.5 }).map(|r| r.lr)
                })
            });
        }
    }
    group.finish();
}

fn weight_codecs(c: &mut Criterion) {
    let s = setup();
    let mut group = c.benchmark_group("weights_medium");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    for name in WEIGHT_CODECS {
        let codec = weight_codec(&s, name);
        group.bench_function(format!("{name}/encode"), |b| {
            b.iter(|| codec.encode(&s.layout, 1, black_box(&s.params)).map(|v| v.len()))
        });
        let bytes = codec.encode(&s.layout, 1, &s.params).unwrap_or_else(|e| panic!("{e}"));
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| codec.decode(&s.layout, black_box(&bytes)).map(|w| w.version))
        });
    }
    group.finish();
}

fn weight_store(c: &mut Criterion) {
    let s = setup();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = s
        .registry
        .build::<dyn WeightStore>(
            "fs",
            &toml::Table::new(),
            &s.ctx.clone().with_run_dir(dir.path()),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let blob =
        bitnet_container::write_blob(&s.layout, 0, &s.params).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("store_medium");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    let mut version = 0u64;
    group.bench_function("fs/put_fsync", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version += 1;
                let start = Instant::now();
                store.put_version(version, &blob).unwrap_or_else(|e| panic!("{e}"));
                total += start.elapsed();
                // Keep the disk footprint to one blob.
                for entry in
                    std::fs::read_dir(dir.path().join("weights")).into_iter().flatten().flatten()
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            total
        })
    });
    store.put_version(0, &blob).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("fs/get_verify", |b| {
        b.iter_batched(|| (), |()| store.get_version(0).map(|v| v.len()), BatchSize::PerIteration)
    });
    group.finish();
}

/// What one task of the README's main job pays around its compute (small preset, int8-ef
/// updates, ternary weight downloads): the worker's encode and weight decode, the
/// coordinator's update decode and weight encode.
fn main_job_small(c: &mut Criterion) {
    let s = setup_preset("small");
    let mut group = c.benchmark_group("main_job_small");
    group.sample_size(20).measurement_time(Duration::from_secs(5));
    let mut codec = gradient_codec(&s, ("int8-ef", "int8-ef", 0));
    group.bench_function("int8-ef/encode", |b| {
        b.iter(|| codec.encode(&s.layout, black_box(&s.update)).map(|v| v.len()))
    });
    let payload = codec.encode(&s.layout, &s.update).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("int8-ef/decode", |b| {
        b.iter(|| codec.decode(&s.layout, black_box(&payload)).map(|v| v.len()))
    });
    let weights = weight_codec(&s, "ternary");
    group.bench_function("ternary/encode", |b| {
        b.iter(|| weights.encode(&s.layout, 1, black_box(&s.params)).map(|v| v.len()))
    });
    let bytes = weights.encode(&s.layout, 1, &s.params).unwrap_or_else(|e| panic!("{e}"));
    group.bench_function("ternary/decode", |b| {
        b.iter(|| weights.decode(&s.layout, black_box(&bytes)).map(|w| w.version))
    });
    group.finish();
}

criterion_group!(benches, gradient_codecs, weight_codecs, weight_store);
criterion_group!(small, main_job_small);
criterion_main!(benches, small);
