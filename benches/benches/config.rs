//! Cost of assembling a run: layering the config and validating every slot.

use bitnet_runtime::config::{ConfigSources, load};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn config_load(c: &mut Criterion) {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/truckmate-small.toml");
    c.bench_function("config_load_truckmate_small", |b| {
        b.iter(|| load(black_box(&ConfigSources::file(file))).map(|l| l.config.model.d_model))
    });
}

criterion_group!(benches, config_load);
criterion_main!(benches);
