//! BitNet b1.58 decoder (LLaMA-style, SwiGLU, RoPE, RMSNorm, untied fp32 head) with ternary
//! BitLinear layers.

pub mod layout;
