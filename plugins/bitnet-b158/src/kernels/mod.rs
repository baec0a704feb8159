//! SIMD kernels of the BitNet b1.58 layers, each behind a safe function with runtime CPU feature
//! detection and a portable scalar twin.
//!
//! - [`quant`]: the per-tensor absmean ternary weight quantizer and the per-token absmax int8
//!   activation quantizer (AVX-512, AVX2, NEON and scalar; bit-identical).
//! - [`packed`]: [`PackedTernary`], ternary weights at 2 bits each in the panel layout the
//!   matrix kernels consume; `repack`/`repack_transposed` refill it in place from ternary
//!   codes (AVX-512 gathers / byte transposes, with a scalar twin).
//! - [`weight_pack`]: the step's weight refresh in one pass, absmean ternary quantisation of
//!   the latent weights straight into both packings (AVX-512, AVX2 and scalar, the scalar twin
//!   also being what aarch64 runs; bit-identical to
//!   quantizing, then `repack` and `repack_transposed`).
//! - [`ternary`]: `int8 x packed ternary -> int32` products (the BitLinear forward, and the
//!   SwitchBack-style input gradient `dX = dY_q . W_q` with the transposed packing), optionally
//!   fused with the dequantisation `y = acc * g / s_row` (AVX-512 VNNI, AVX2, NEON `sdot`, NEON
//!   and scalar; bit-identical).
//! - [`bf16`]: the weight gradient `dW = dY^T . X` with bf16 products and fp32 accumulation
//!   (AVX-512 BF16, AVX2 + FMA, NEON and a scalar twin within a documented tolerance).
//! - [`i8_grad`]: the same weight gradient on the int8 units, `dY / s` quantized per 32-token
//!   block (AVX-512 VNNI, AVX2 `vpmaddwd`, NEON `sdot`, NEON and a bit-identical scalar twin,
//!   within a documented
//!   bound of exact).
//! - [`bf16_gemm`]: a general strided product of fp32 (or already bf16) operands on the same
//!   bf16 micro-kernel (the mixed-precision LM head); both run through one depth-blocked driver
//!   (`bf16_tiles`).
//! - [`exp`]: a vectorised `exp` (AVX-512, AVX2, NEON and a bit-identical scalar twin) and the
//!   softmax and SwiGLU passes built on it.
//! - [`attention`]: causal attention forward and backward per (batch, head), its small products
//!   as register tiles fused with the softmax (AVX-512, AVX2, NEON and a bit-identical scalar
//!   twin).
//!
//! Every public entry point has a `*_with(isa, ...)` form that runs one given [`Isa`] path (for
//! tests and benchmarks) and a plain form that runs the best path of this CPU within the
//! process's instruction-set cap ([`bitnet_framework::isa`]:
//! `BITNET_ISA=auto|scalar|avx2|avx-vnni|avx512|amx|neon` or the kernel option `isa`). The cap applies to the `*_with` forms too (a path above it is
//! refused), so `BITNET_ISA=scalar cargo test` runs every kernel test on the scalar twins only.
//! The AVX2 paths live in the `x86_avx2_*` files, the AMX ones in `x86_amx.rs`, the AVX-512 ones in the other `x86_*` files,
//! the aarch64 NEON ones (with and without `dotprod`) in the `neon_*` files.
//! (The fp32 products of `Precision::Fp32` run on the `gemm` crate, which picks its own path and
//! is not capped.)
//!
//! Threads: the matrix kernels split their work with rayon on the pool they are called from, so
//! a caller that owns a `rayon::ThreadPool` runs them inside `pool.install(|| ...)`.

pub mod attention;
mod attention_rows;
pub mod bf16;
pub mod bf16_gemm;
mod bf16_tiles;
pub mod exp;
pub mod i8_grad;
pub mod packed;
pub mod quant;
pub mod ternary;
pub mod weight_pack;

#[cfg(target_arch = "aarch64")]
mod neon_attention;
#[cfg(target_arch = "aarch64")]
mod neon_bf16;
#[cfg(target_arch = "aarch64")]
mod neon_exp;
#[cfg(target_arch = "aarch64")]
mod neon_i8_grad;
#[cfg(target_arch = "aarch64")]
mod neon_quant;
#[cfg(target_arch = "aarch64")]
mod neon_ternary;
#[cfg(target_arch = "x86_64")]
mod x86_amx;
#[cfg(target_arch = "x86_64")]
mod x86_attention;
#[cfg(target_arch = "x86_64")]
mod x86_attention_rows;
#[cfg(target_arch = "x86_64")]
mod x86_avx2_attention;
#[cfg(target_arch = "x86_64")]
mod x86_avx2_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_avx2_exp;
#[cfg(target_arch = "x86_64")]
mod x86_avx2_i8_grad;
#[cfg(target_arch = "x86_64")]
mod x86_bf16;
#[cfg(target_arch = "x86_64")]
mod x86_exp;
#[cfg(target_arch = "x86_64")]
mod x86_i8_grad;
#[cfg(target_arch = "x86_64")]
mod x86_lanes;
#[cfg(target_arch = "x86_64")]
mod x86_quant;
#[cfg(target_arch = "x86_64")]
mod x86_ternary;
#[cfg(target_arch = "x86_64")]
mod x86_weight_pack;

pub use bitnet_framework::isa::{self, IsaLevel};
pub use packed::PackedTernary;
pub use quant::{quantize_activations_absmax, quantize_weights_absmean};
pub use ternary::{ternary_matmul, ternary_matmul_dequant, ternary_matmul_dequant_add};

/// An instruction-set path of a kernel. Not every kernel has every path; each kernel documents
/// the paths it implements and refuses the others with [`GemmError::UnsupportedIsa`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust, any CPU.
    Scalar,
    /// x86-64 AVX2 and FMA.
    Avx2,
    /// [`Isa::Avx2`] plus AVX-VNNI (`vpdpbusd` on 256-bit registers: Intel client CPUs since
    /// Alder Lake, Xeons since Sapphire Rapids, AMD since Zen 5). Belongs to the `avx2` level.
    Avx2Vnni,
    /// x86-64 AVX-512 F, BW and VL.
    Avx512,
    /// [`Isa::Avx512`] plus AVX512_VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// [`Isa::Avx512`] plus AVX512_BF16 (`vdpbf16ps`).
    Avx512Bf16,
    /// [`Isa::Avx512Bf16`] and [`Isa::Avx512Vnni`] plus Intel AMX tiles with bf16 and int8
    /// products (`tdpbf16ps`, `tdpbsud`), where the OS lets the process use them. Belongs to
    /// the `amx` level.
    Avx512Amx,
    /// aarch64 Advanced SIMD (NEON), which every aarch64 CPU has.
    Neon,
    /// [`Isa::Neon`] plus the `dotprod` extension (`sdot`, Armv8.2 and later).
    NeonDot,
}

impl Isa {
    /// Every path, in the order kernels prefer them (fastest last; the x86 and aarch64 paths
    /// never both run on one CPU).
    pub const ALL: [Isa; 9] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx2Vnni,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Avx512Bf16,
        Isa::Avx512Amx,
        Isa::Neon,
        Isa::NeonDot,
    ];

    /// The level of the process-wide cap ([`bitnet_framework::isa`]) this path belongs to.
    pub fn level(self) -> IsaLevel {
        match self {
            Isa::Scalar => IsaLevel::Scalar,
            Isa::Avx2 => IsaLevel::Avx2,
            Isa::Avx2Vnni => IsaLevel::AvxVnni,
            Isa::Avx512 | Isa::Avx512Vnni | Isa::Avx512Bf16 => IsaLevel::Avx512,
            Isa::Avx512Amx => IsaLevel::Amx,
            Isa::Neon | Isa::NeonDot => IsaLevel::Neon,
        }
    }

    /// Whether the path may run: this CPU has it and it is within the process's instruction-set
    /// cap (`BITNET_ISA` or the kernel's `isa` option, see [`bitnet_framework::isa`]).
    pub fn is_available(self) -> bool {
        self.level() <= isa::cap() && self.cpu_has()
    }

    /// Whether this CPU can run the path (runtime detection, ignoring the cap).
    pub fn cpu_has(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Vnni => Isa::Avx2.cpu_has() && is_x86_feature_detected!("avxvnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx512.cpu_has() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Bf16 => Isa::Avx512.cpu_has() && is_x86_feature_detected!("avx512bf16"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Amx => {
                Isa::Avx512Bf16.cpu_has()
                    && Isa::Avx512Vnni.cpu_has()
                    && IsaLevel::Amx.is_supported()
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            _ => false,
        }
    }

    /// The paths of `supported` this CPU can run, in the given order.
    pub fn available_among(supported: &[Isa]) -> Vec<Isa> {
        supported.iter().copied().filter(|i| i.is_available()).collect()
    }

    /// The last path of `supported` this CPU can run ([`Isa::Scalar`] if none).
    pub fn best_among(supported: &[Isa]) -> Isa {
        supported.iter().rev().copied().find(|i| i.is_available()).unwrap_or(Isa::Scalar)
    }
}

/// Errors of the kernels: wrong buffer sizes, a path this CPU or kernel lacks, invalid packed
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GemmError {
    /// A buffer has the wrong length for the given dimensions.
    #[error("{what}: expected length {expected}, got {got}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length the dimensions imply.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// Dimensions disagree with each other.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// The dimensions overflow `usize` or the kernel's limits.
    #[error("dimensions too large: {0}")]
    TooLarge(String),
    /// A weight given as ternary is outside `{-1, 0, 1}`.
    #[error("weight {index} is {value}, not in {{-1, 0, 1}}")]
    NotTernary {
        /// Flat index of the weight.
        index: usize,
        /// Its value.
        value: i8,
    },
    /// Packed ternary bytes are not in the canonical layout.
    #[error("invalid packed ternary data: {0}")]
    InvalidPacked(String),
    /// The kernel has no such path, this CPU cannot run it, or it is above the instruction-set
    /// cap.
    #[error(
        "{kernel}: path {isa:?} is not implemented, not available on this CPU, or above the \
         instruction-set cap (BITNET_ISA / the kernel's isa option)"
    )]
    UnsupportedIsa {
        /// Kernel name.
        kernel: &'static str,
        /// Requested path.
        isa: Isa,
    },
}

/// Checks `isa` is one of the kernel's `supported` paths and this CPU runs it.
pub(crate) fn check_isa(
    kernel: &'static str,
    isa: Isa,
    supported: &[Isa],
) -> Result<(), GemmError> {
    if supported.contains(&isa) && isa.is_available() {
        Ok(())
    } else {
        Err(GemmError::UnsupportedIsa { kernel, isa })
    }
}

/// Checks `got == expected` for the buffer `what`.
pub(crate) fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), GemmError> {
    if expected == got { Ok(()) } else { Err(GemmError::Length { what, expected, got }) }
}

/// Checks the operands of a BitLinear weight gradient `dW (n x k) = (dY / s)^T . X_q` over `m`
/// tokens: `dy` is `m x n`, `x_q` is `m x k` with `m` scales, `dw` is `n x k`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_grad_weight(
    dy: &[f32],
    m: usize,
    n: usize,
    x_q: &[i8],
    x_scales: &[f32],
    k: usize,
    dw: &[f32],
) -> Result<(), GemmError> {
    check_len("output gradient", checked_area("output gradient", m, n)?, dy.len())?;
    check_len("int8 activations", checked_area("activations", m, k)?, x_q.len())?;
    check_len("activation scales", m, x_scales.len())?;
    check_len("weight gradient", checked_area("weight gradient", n, k)?, dw.len())
}

/// Splits the row-major output `c` (`cols` per row) into bands of whole `mr`-row tiles, about
/// `tasks_per_thread` per thread of the current rayon pool (one band when it has one thread),
/// and runs `task(band, first_row)` on each, in parallel.
pub(crate) fn for_each_row_band(
    c: &mut [f32],
    cols: usize,
    mr: usize,
    tasks_per_thread: usize,
    task: impl Fn(&mut [f32], usize) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let row_tiles = (c.len() / cols.max(1)).div_ceil(mr);
    let tasks = if threads == 1 { 1 } else { (threads * tasks_per_thread).min(row_tiles) };
    if tasks <= 1 {
        task(c, 0);
        return;
    }
    let rows_per_task = row_tiles.div_ceil(tasks) * mr;
    use rayon::prelude::*;
    c.par_chunks_mut(rows_per_task * cols)
        .enumerate()
        .for_each(|(t, band)| task(band, t * rows_per_task));
}

/// `a * b`, or an error naming the product.
pub(crate) fn checked_area(what: &str, a: usize, b: usize) -> Result<usize, GemmError> {
    a.checked_mul(b).ok_or_else(|| GemmError::TooLarge(format!("{what}: {a} x {b}")))
}

/// The comparison-based clamp the SIMD `max`/`min` instructions implement: `max(v, lo)` keeps
/// `lo` unless `v > lo` (so NaN becomes `lo`), then `min(_, hi)` keeps `hi` unless `v < hi`.
/// Scalar twins use it so NaN inputs give the same answer on every path.
#[inline(always)]
pub(crate) fn clamp_like_simd(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v > lo { v } else { lo };
    if v < hi { v } else { hi }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Detection follows the architecture: the x86 paths never run on aarch64 and the NEON ones
    /// never on x86; every aarch64 CPU has NEON; each path needs its level's features.
    #[test]
    fn paths_follow_the_architecture_and_their_level() {
        let x86 = [
            Isa::Avx2,
            Isa::Avx2Vnni,
            Isa::Avx512,
            Isa::Avx512Vnni,
            Isa::Avx512Bf16,
            Isa::Avx512Amx,
        ];
        let arm = [Isa::Neon, Isa::NeonDot];
        assert!(Isa::Scalar.cpu_has());
        if cfg!(target_arch = "aarch64") {
            assert!(Isa::Neon.cpu_has());
            assert!(x86.iter().all(|i| !i.cpu_has()));
        } else {
            assert!(arm.iter().all(|i| !i.cpu_has()));
        }
        if Isa::NeonDot.cpu_has() {
            assert!(Isa::Neon.cpu_has());
        }
        if Isa::Avx2Vnni.cpu_has() {
            assert!(Isa::Avx2.cpu_has());
        }
        if Isa::Avx512Amx.cpu_has() {
            assert!(Isa::Avx512Bf16.cpu_has());
        }
        for isa in Isa::ALL {
            if isa.cpu_has() {
                assert!(isa.level().is_supported(), "{isa:?}");
            }
            // A path is available exactly when the CPU has it and the cap allows its level.
            assert_eq!(isa.is_available(), isa.cpu_has() && isa.level() <= isa::cap(), "{isa:?}");
        }
        assert_eq!(Isa::best_among(&[Isa::Scalar]), Isa::Scalar);
    }
}
