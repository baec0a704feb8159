//! Chunked, parallel passes over a flat parameter arena.

use bitnet_framework::isa::{self, IsaChoice, IsaLevel};
use bitnet_framework::tensor::ParamLayout;
use rayon::prelude::*;
use std::ops::Range;

/// Elements per work item: 128 KiB of each f32 buffer, big enough to amortise scheduling and
/// small enough to spread a small model over two cores.
pub(crate) const CHUNK: usize = 1 << 15;

/// Arenas at most this big are updated on the calling thread (tests, tiny models).
const SERIAL_MAX: usize = 2 * CHUNK;

/// Which stretches of the arena receive weight decay (matrices) and which do not (norm gains).
#[derive(Debug, Clone)]
pub(crate) struct DecayMap {
    /// `(start, end, decays)`, sorted, covering the arena, adjacent runs merged.
    runs: Vec<(usize, usize, bool)>,
}

impl DecayMap {
    /// From the layout's tensor roles.
    pub(crate) fn from_layout(layout: &ParamLayout) -> Self {
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        for (spec, range) in layout.iter() {
            let decays = spec.role.is_matrix();
            match runs.last_mut() {
                Some(last) if last.2 == decays && last.1 == range.start => last.1 = range.end,
                _ => runs.push((range.start, range.end, decays)),
            }
        }
        Self { runs }
    }

    /// The runs overlapping `start..start + len`, as ranges local to that window.
    pub(crate) fn runs_in(
        &self,
        start: usize,
        len: usize,
    ) -> impl Iterator<Item = (Range<usize>, bool)> + '_ {
        let end = start + len;
        let first = self.runs.partition_point(|r| r.1 <= start);
        self.runs[first..]
            .iter()
            .take_while(move |r| r.0 < end)
            .map(move |&(s, e, decays)| (s.max(start) - start..e.min(end) - start, decays))
    }
}

/// The optimizer's own worker threads.
pub(crate) struct Workers {
    pool: Option<rayon::ThreadPool>,
}

impl Workers {
    /// A pool of `threads` threads (one thread: no pool, everything on the caller).
    pub(crate) fn new(threads: usize) -> Result<Self, String> {
        if threads <= 1 {
            return Ok(Self { pool: None });
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bitnet-optim-{i}"))
            .build()
            .map(|pool| Self { pool: Some(pool) })
            .map_err(|e| format!("cannot start {threads} optimizer threads: {e}"))
    }

    /// The pool to spread an arena of `len` elements over, or `None` to stay on the caller
    /// (one thread, or an arena too small to be worth it).
    pub(crate) fn pool_for(&self, len: usize) -> Option<&rayon::ThreadPool> {
        self.pool.as_ref().filter(|_| len > SERIAL_MAX)
    }
}

/// Sum of squares of `x` in f64, computed per chunk (in parallel) and then added in chunk order,
/// so the result does not depend on the number of threads.
/// Refuses parameter or update buffers that do not match an arena of `n` parameters.
pub(crate) fn check_sizes(
    n: usize,
    params: &[f32],
    update: &[f32],
) -> Result<(), bitnet_framework::optim::OptimError> {
    if params.len() != n || update.len() != n {
        return Err(bitnet_framework::optim::OptimError::Shape(format!(
            "arena of {n} parameters, got {} parameters and an update of {}",
            params.len(),
            update.len()
        )));
    }
    Ok(())
}

pub(crate) fn sum_squares(workers: &Workers, x: &[f32], partials: &mut Vec<f64>) -> f64 {
    partials.clear();
    partials.resize(x.len().div_ceil(CHUNK), 0.0);
    let body = |(p, c): (&mut f64, &[f32])| *p = sum_squares_chunk(c);
    match workers.pool_for(x.len()) {
        Some(pool) => {
            pool.install(|| partials.par_iter_mut().zip(x.par_chunks(CHUNK)).for_each(body))
        }
        None => partials.iter_mut().zip(x.chunks(CHUNK)).for_each(body),
    }
    partials.iter().sum()
}

fn sum_squares_chunk(x: &[f32]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx512) {
        // SAFETY: `allows` checked the CPU supports AVX-512 F/BW/VL.
        return unsafe { sum_squares_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if isa::allows(IsaLevel::Avx2) {
        // SAFETY: `allows` checked the CPU supports AVX2 and FMA.
        return unsafe { sum_squares_avx2(x) };
    }
    sum_squares_portable(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_squares_avx2(x: &[f32]) -> f64 {
    sum_squares_portable(x)
}

/// Refuses a `BITNET_ISA` that names an unknown level or one this CPU lacks (the SIMD paths
/// follow the process-wide cap of [`bitnet_framework::isa`]).
pub(crate) fn check_isa_env() -> Result<(), String> {
    isa::resolve(IsaChoice::Auto, "the optimizer").map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_squares_avx512(x: &[f32]) -> f64 {
    sum_squares_portable(x)
}

/// Eight independent f64 accumulators (vectorisable, and the same order in every build).
#[inline(always)]
fn sum_squares_portable(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f64::from(v) * f64::from(v);
        }
    }
    let tail: f64 = it.remainder().iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tensor::{TensorRole, TensorSpec};

    #[test]
    fn decay_map_merges_and_windows() {
        let spec = |n: &str, len, role| TensorSpec { name: n.into(), shape: vec![len], role };
        let layout = ParamLayout::new(vec![
            spec("a", 4, TensorRole::Embedding),
            spec("b", 4, TensorRole::BitLinear),
            spec("n", 2, TensorRole::Norm),
            spec("c", 3, TensorRole::Head),
        ])
        .expect("layout");
        let map = DecayMap::from_layout(&layout);
        assert_eq!(map.runs, vec![(0, 8, true), (8, 10, false), (10, 13, true)]);
        let w: Vec<_> = map.runs_in(6, 5).collect();
        assert_eq!(w, vec![(0..2, true), (2..4, false), (4..5, true)]);
        let w: Vec<_> = map.runs_in(10, 3).collect();
        assert_eq!(w, vec![(0..3, true)]);
    }

    #[test]
    fn sum_squares_is_thread_independent() {
        let x: Vec<f32> =
            (0..(5 * CHUNK + 17)).map(|i| ((i * 7919) % 1000) as f32 * 1e-3).collect();
        let mut p = Vec::new();
        let one = sum_squares(&Workers::new(1).expect("pool"), &x, &mut p);
        let two = sum_squares(&Workers::new(2).expect("pool"), &x, &mut p);
        assert_eq!(one.to_bits(), two.to_bits());
        let exact: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        assert!((one - exact).abs() <= 1e-9 * exact);
        // Every SIMD build this CPU runs, whatever the cap, bit for bit.
        let portable = sum_squares_portable(&x);
        #[cfg(target_arch = "x86_64")]
        for level in [IsaLevel::Avx2, IsaLevel::Avx512].into_iter().filter(|l| l.is_supported()) {
            // SAFETY: the CPU supports the level (checked by the filter above).
            let got = unsafe {
                match level {
                    IsaLevel::Avx2 => sum_squares_avx2(&x),
                    _ => sum_squares_avx512(&x),
                }
            };
            assert_eq!(got.to_bits(), portable.to_bits(), "{level}");
        }
    }
}
