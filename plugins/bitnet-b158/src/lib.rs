//! BitNet b1.58 decoder (LLaMA-style, SwiGLU, RoPE, RMSNorm, untied fp32 head) with ternary
//! BitLinear layers, registered as the "bitnet-b158" model kernel.
//!
//! Files follow the model: [`quant`] (the quantizers), `layers/` (one forward and one backward
//! per layer over flat buffers), `model` (the whole decoder over one parameter arena, one
//! gradient arena and a reused activation workspace), [`kernel`] (the plugin), [`export`] and
//! [`inference`] (packed-ternary inference weights and the model that uses them).

pub mod export;
pub mod inference;
pub mod kernel;
pub mod kernels;
mod layers;
pub mod layout;
mod matmul;
mod model;
pub mod quant;
#[cfg(test)]
mod testutil;

pub use kernel::{BitNetB158Config, BitNetKernel, HeadGrad, Precision, WeightGrad};
pub use layers::bitlinear::QuantMode;
