//! Helpers of the unit tests: deterministic data, central finite differences, thread pools.

/// A rayon pool of `threads` threads (the kernels split their work on the pool they run in).
pub(crate) fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool")
}

/// Deterministic values in `[-scale, scale)`.
pub(crate) fn pseudo_random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Central finite-difference gradient of `f` at `x` (computed in f32 inputs, f64 outputs).
pub(crate) fn numeric_grad(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    let h = 1e-2f32;
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let orig = xp[i];
            xp[i] = orig + h;
            let fp = f(&xp);
            xp[i] = orig - h;
            let fm = f(&xp);
            xp[i] = orig;
            ((fp - fm) / (2.0 * f64::from(h))) as f32
        })
        .collect()
}

/// Asserts `got` and `want` agree to `tol` relative to the largest magnitude in `want`.
pub(crate) fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "index {i}: got {g}, want {w} (scale {scale})");
    }
}
