//! The layers of the decoder, llm.c style: one `*_forward` and one `*_backward` per layer over
//! flat row-major buffers. Every function runs on the rayon pool it is called from.

pub(crate) mod attention;
pub(crate) mod bitlinear;
pub(crate) mod embedding;
pub(crate) mod loss;
pub(crate) mod rmsnorm;
pub(crate) mod rope;
pub(crate) mod swiglu;
