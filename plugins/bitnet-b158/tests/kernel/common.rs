//! Shared helpers: tiny configs and batches.

use bitnet_b158::{BitNetKernel, Precision};
use bitnet_framework::model::{ModelConfig, ModelKernel};

/// A tiny model: 2 blocks of width 16, 2 heads, vocabulary 23.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        d_model: 16,
        n_layers: 2,
        n_heads: 2,
        ffn_hidden: 32,
        seq_len: 8,
        vocab_size: 23,
        rope_theta: 10_000.0,
        norm_eps: 1e-6,
        init_std: 0.1,
    }
}

/// A kernel with initialised parameters.
pub fn kernel_and_params(
    config: ModelConfig,
    precision: Precision,
    seed: u64,
) -> (BitNetKernel, Vec<f32>) {
    let kernel = BitNetKernel::new(config, 2, precision).expect("kernel");
    let mut params = vec![0.0; kernel.layout().total_params()];
    kernel.init_params(seed, &mut params).expect("init");
    (kernel, params)
}

/// Deterministic pseudo-random token ids below `vocab`.
pub fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}
