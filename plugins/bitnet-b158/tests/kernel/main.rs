//! Tests of the "bitnet-b158" kernel as a whole: PyTorch parity, finite differences, learning,
//! export and inference.

mod common;
mod gradcheck;
mod inference;
mod learning;
mod mixed;
mod parity;
mod plugin;
