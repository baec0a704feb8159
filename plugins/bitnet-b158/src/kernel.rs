//! The `ModelKernel` registered as "bitnet-b158": options, thread pool, workspace.

use crate::export::export_inference;
use crate::inference::PackedInferenceModel;
use crate::layers::bitlinear::QuantMode;
use crate::layers::rope::RopeTables;
use crate::layout::model_layout;
use crate::matmul::Threads;
use crate::model::{self, ParamIndex, PassContext, Workspace, check_batch};
use bitnet_framework::context::BuildContext;
use bitnet_framework::isa::{self, IsaChoice, IsaLevel};
use bitnet_framework::model::{InferenceModel, KernelError, ModelConfig, ModelKernel, TokenBatch};
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use bitnet_framework::tensor::{ParamLayout, TensorRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Arithmetic of the matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 products on the dequantized operands, exactly as the PyTorch reference computes
    /// them (parity within 1e-4).
    Fp32,
    /// The BitLinear products on the dot-product units (AVX-512 VNNI / BF16 where available):
    /// - forward: the exact integer product `x_q . W_q^T` of the int8 activations and the packed
    ///   ternary weights, rescaled by `g / s` (as exact as fp32, usually more);
    /// - input gradient, as SwitchBack does it (Wortsman et al. 2023): `dX = Q_8(dY) . W_q`
    ///   with `dY` quantized per row to int8 by absmax (`W_q` is exactly ternary, so only `dY`
    ///   is rounded);
    /// - weight gradient: `dW = (dY / s)^T . x_q`, only `dY / s` rounded (`x_q` is exact):
    ///   by default int8 products with a scale per output row and 32 tokens (at most 1/254 of
    ///   the block's largest magnitude), or bf16 products (at most 2^-8 relative), fp32 sums
    ///   either way ([`WeightGrad`]).
    ///
    /// - the LM head's forward and input gradient: bf16 products of both operands with fp32
    ///   sums ([`crate::kernels::bf16_gemm`]); its weight gradient: by default int8 products
    ///   with block scales, or bf16 products ([`HeadGrad`]).
    ///
    /// Attention and the elementwise layers stay fp32. Loss within 1e-3 (about 1.4e-4 measured:
    /// only the LM head's bf16 forward moves it) and
    /// per-tensor gradient norms within 2e-2 of [`Precision::Fp32`] and of PyTorch, and the loss
    /// curve tracks fp32 (tested). In identity-quantizer mode (gradient checks) the products
    /// fall back to fp32. The default: the same model, several times faster.
    #[default]
    Mixed,
}

/// Arithmetic of the BitLinear weight gradient `dW = (dY / s)^T . X_q` in
/// [`Precision::Mixed`] (fp32 precision always uses fp32 products).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightGrad {
    /// int8 products on the VNNI units with exact int32 sums per block of 32 tokens:
    /// `dY / s` is quantized to int8 by absmax per output row and 32-token block, so each
    /// element is rounded by at most 1/254 of the largest magnitude in its block
    /// ([`crate::kernels::i8_grad`]). About 1.5-2x the bf16 product's speed at the model's shapes.
    #[default]
    Int8,
    /// bf16 products with fp32 sums (`dY / s` rounded to bf16, at most 2^-8 relative;
    /// [`crate::kernels::bf16`]).
    Bf16,
}

/// Arithmetic of the LM head's weight gradient `dW = dlogits^T . xn` in [`Precision::Mixed`]
/// (its forward and input gradient are bf16 products with fp32 sums; fp32 precision always uses
/// fp32 products).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadGrad {
    /// int8 products on the VNNI units, the machinery of [`WeightGrad::Int8`]
    /// ([`crate::kernels::i8_grad`]): `xn` quantized per token to int8 by absmax (as a
    /// BitLinear input is), the fp32 logit gradient per vocabulary row and 32 tokens; exact
    /// int32 sums per block, fp32 across blocks. Each element of `xn` is rounded by at most
    /// 1/254 of its token's largest magnitude. About 1.4x the bf16 product's speed (`d = 256`).
    /// The input gradient stays bf16: on int8 (`W` per vocabulary row) it measured no faster at
    /// `d = 256` and its rounding reaches every tensor's gradient.
    #[default]
    Int8,
    /// bf16 products with fp32 sums; the cross-entropy writes the logit gradient in bf16.
    Bf16,
}

/// The instruction-set cap of the kernel option `isa` (see [`bitnet_framework::isa`]): every
/// kernel and the optimizer's SIMD paths stay at or below it. Combined with `BITNET_ISA` (the
/// lower wins); a level this CPU lacks is refused at build time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IsaOption {
    /// The best level this CPU runs.
    #[default]
    Auto,
    /// Portable Rust only.
    Scalar,
    /// AVX2 and FMA at most (AMD Zen 2 and Zen 3).
    Avx2,
    /// AVX2, FMA and AVX-VNNI at most (Intel client CPUs since Alder Lake).
    #[serde(rename = "avx-vnni")]
    AvxVnni,
    /// AVX-512 (with VNNI and BF16 where the CPU has them).
    Avx512,
    /// AVX-512 and Intel AMX tiles.
    Amx,
    /// aarch64 NEON (with `dotprod` where the CPU has it).
    Neon,
}

impl IsaOption {
    /// The framework's form of the option.
    pub fn choice(self) -> IsaChoice {
        match self {
            IsaOption::Auto => IsaChoice::Auto,
            IsaOption::Scalar => IsaChoice::Level(IsaLevel::Scalar),
            IsaOption::Avx2 => IsaChoice::Level(IsaLevel::Avx2),
            IsaOption::AvxVnni => IsaChoice::Level(IsaLevel::AvxVnni),
            IsaOption::Avx512 => IsaChoice::Level(IsaLevel::Avx512),
            IsaOption::Amx => IsaChoice::Level(IsaLevel::Amx),
            IsaOption::Neon => IsaChoice::Level(IsaLevel::Neon),
        }
    }
}

/// Options of the "bitnet-b158" kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BitNetB158Config {
    /// Compute threads; 0 takes the run's `threads` setting (itself 0 = every core).
    pub threads: usize,
    /// Arithmetic of the products.
    pub precision: Precision,
    /// Arithmetic of the BitLinear weight gradient in mixed precision.
    pub weight_grad: WeightGrad,
    /// Arithmetic of the LM head's weight gradient in mixed precision.
    pub head_grad: HeadGrad,
    /// Instruction-set cap of every kernel (and the optimizer's SIMD paths), with `BITNET_ISA`.
    pub isa: IsaOption,
}

impl Default for BitNetB158Config {
    fn default() -> Self {
        Self {
            threads: 0,
            precision: Precision::Mixed,
            weight_grad: WeightGrad::Int8,
            head_grad: HeadGrad::Int8,
            isa: IsaOption::Auto,
        }
    }
}

impl PluginConfig for BitNetB158Config {
    type Component = dyn ModelKernel;

    fn build(self, ctx: &BuildContext) -> Result<Box<dyn ModelKernel>, BuildError> {
        let refuse = |e: isa::IsaError| BuildError::failed(Slot::ModelKernel, "bitnet-b158", e);
        let level = isa::resolve(self.isa.choice(), "kernel option `isa`").map_err(refuse)?;
        isa::set_cap(level).map_err(refuse)?;
        let threads = if self.threads > 0 { self.threads } else { ctx.effective_threads() };
        let mut kernel = BitNetKernel::new(ctx.model.clone(), threads, self.precision)
            .map_err(|e| BuildError::failed(Slot::ModelKernel, "bitnet-b158", e))?;
        kernel.set_weight_grad(self.weight_grad);
        kernel.set_head_grad(self.head_grad);
        Ok(Box::new(kernel))
    }
}

bitnet_framework::register_plugin!(
    BitNetB158Config,
    "bitnet-b158",
    "BitNet b1.58 ternary decoder (RoPE, SwiGLU, RMSNorm, fp32 head), hand-written backward."
);

/// The BitNet b1.58 decoder kernel.
pub struct BitNetKernel {
    config: ModelConfig,
    layout: ParamLayout,
    index: ParamIndex,
    rope: RopeTables,
    precision: Precision,
    weight_grad: WeightGrad,
    head_grad: HeadGrad,
    mode: QuantMode,
    threads: usize,
    pool: rayon::ThreadPool,
    workspace: Option<Workspace>,
}

impl std::fmt::Debug for BitNetKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BitNetKernel")
            .field("config", &self.config)
            .field("precision", &self.precision)
            .field("weight_grad", &self.weight_grad)
            .field("head_grad", &self.head_grad)
            .field("mode", &self.mode)
            .field("threads", &self.threads)
            .finish()
    }
}

impl BitNetKernel {
    /// A kernel for `config` running on `threads` threads (at least 1).
    pub fn new(
        config: ModelConfig,
        threads: usize,
        precision: Precision,
    ) -> Result<Self, KernelError> {
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(KernelError::Shape(problems.join("; ")));
        }
        let layout = model_layout(&config).map_err(|e| KernelError::Other(e.to_string()))?;
        let index = ParamIndex::new(&layout, config.n_layers)?;
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("bitnet-b158-{i}"))
            .build()
            .map_err(|e| KernelError::Other(format!("thread pool: {e}")))?;
        let rope = RopeTables::new(config.seq_len, config.head_dim(), config.rope_theta);
        Ok(Self {
            config,
            layout,
            index,
            rope,
            precision,
            weight_grad: WeightGrad::default(),
            head_grad: HeadGrad::default(),
            mode: QuantMode::Ternary,
            threads,
            pool,
            workspace: None,
        })
    }

    /// Replaces both BitLinear quantizers by the identity (or restores them). For
    /// finite-difference gradient checks only: a model in identity mode is a plain fp32
    /// transformer, not BitNet.
    pub fn set_quant_mode(&mut self, mode: QuantMode) {
        self.mode = mode;
    }

    /// The arithmetic of the products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Sets the arithmetic of the BitLinear weight gradient in mixed precision (default
    /// [`WeightGrad::Int8`]).
    pub fn set_weight_grad(&mut self, weight_grad: WeightGrad) {
        self.weight_grad = weight_grad;
    }

    /// The arithmetic of the BitLinear weight gradient in mixed precision.
    pub fn weight_grad(&self) -> WeightGrad {
        self.weight_grad
    }

    /// Sets the arithmetic of the LM head's weight gradient in mixed precision (default
    /// [`HeadGrad::Int8`]).
    pub fn set_head_grad(&mut self, head_grad: HeadGrad) {
        self.head_grad = head_grad;
    }

    /// The arithmetic of the LM head's weight gradient in mixed precision.
    pub fn head_grad(&self) -> HeadGrad {
        self.head_grad
    }

    /// The logits `[batch * seq_len, vocab]` of the training forward (evaluation and tests).
    pub fn forward_logits(
        &mut self,
        params: &[f32],
        inputs: &[u32],
        batch: usize,
        seq_len: usize,
    ) -> Result<Vec<f32>, KernelError> {
        let targets = vec![bitnet_framework::model::IGNORE_INDEX; inputs.len()];
        let tb = TokenBatch { inputs, targets: &targets, batch, seq_len };
        self.run(params, &tb, None)?;
        Ok(self.workspace.as_ref().map(Workspace::logits).unwrap_or_default().to_vec())
    }

    fn check_arena(&self, what: &str, len: usize) -> Result<(), KernelError> {
        if len != self.layout.total_params() {
            return Err(KernelError::Shape(format!(
                "{what} arena has {len} values, the layout {}",
                self.layout.total_params()
            )));
        }
        Ok(())
    }

    fn run(
        &mut self,
        params: &[f32],
        batch: &TokenBatch<'_>,
        grads: Option<&mut [f32]>,
    ) -> Result<f32, KernelError> {
        self.check_arena("parameter", params.len())?;
        if let Some(g) = grads.as_deref() {
            self.check_arena("gradient", g.len())?;
        }
        let dims = check_batch(&self.config, batch)?;
        let mode = self.mode;
        let ws = match self.workspace.take() {
            Some(ws) if ws.fits(&dims, mode) => ws,
            other => {
                drop(other);
                Workspace::new(dims, mode)
            }
        };
        let mut ws = ws;
        let cx = PassContext {
            dims,
            index: &self.index,
            rope: &self.rope,
            mode,
            threads: Threads(self.threads),
            eps: self.config.norm_eps,
            precision: self.precision,
            weight_grad: self.weight_grad,
            head_grad: self.head_grad,
        };
        let result = self.pool.install(|| {
            let with_grad = grads.is_some();
            let loss = model::forward(cx, params, batch.inputs, batch.targets, &mut ws, with_grad)?;
            if let Some(g) = grads {
                model::backward(cx, params, batch.inputs, &mut ws, g)?;
            }
            Ok(loss)
        });
        self.workspace = Some(ws);
        result
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.r#gen::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.r#gen::<f64>();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

impl ModelKernel for BitNetKernel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Matrices `N(0, init_std^2)`, norm gains 1, as the reference initialises them.
    fn init_params(&self, seed: u64, params: &mut [f32]) -> Result<(), KernelError> {
        self.check_arena("parameter", params.len())?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (spec, range) in self.layout.iter() {
            let t = &mut params[range];
            if spec.role == TensorRole::Norm {
                t.fill(1.0);
            } else {
                for v in t {
                    *v = normal(&mut rng) * self.config.init_std;
                }
            }
        }
        Ok(())
    }

    fn forward_backward(
        &mut self,
        params: &[f32],
        batch: &TokenBatch<'_>,
        grads: &mut [f32],
    ) -> Result<f32, KernelError> {
        self.run(params, batch, Some(grads))
    }

    fn forward_loss(&mut self, params: &[f32], batch: &TokenBatch<'_>) -> Result<f32, KernelError> {
        self.run(params, batch, None)
    }

    fn export_inference(&self, params: &[f32]) -> Result<Vec<u8>, KernelError> {
        export_inference(&self.config, &self.layout, params)
    }

    fn load_inference(&self, bytes: &[u8]) -> Result<Box<dyn InferenceModel>, KernelError> {
        Ok(Box::new(PackedInferenceModel::load(&self.config, &self.layout, bytes)?))
    }
}
