//! Optimizer plugins for the `optimizer` and `inner_optimizer` slots.
//!
//! - `"adamw"` ([`AdamWConfig`]): decoupled weight decay on matrices only (the layout's
//!   [`TensorRole::is_matrix`](bitnet_framework::tensor::TensorRole::is_matrix)), global-norm
//!   gradient clipping and the BitNet two-stage schedule ([`Schedule`]).
//! - `"sgd"` ([`SgdConfig`]): momentum SGD, optionally Nesterov; DiLoCo's outer optimizer.
//!
//! Both work over the whole flat arena in chunks: element loops the compiler vectorises (with an
//! AVX-512 or AVX2 build chosen at run time where the CPU has it, within the process-wide cap of
//! [`bitnet_framework::isa`] (`BITNET_ISA`); the results are bit-identical to the portable build
//! because neither contracts nor reorders floating-point operations), spread over
//! an owned rayon pool for big arenas. Reductions (the gradient norm) are summed per chunk into a
//! fixed array and then in order, so results never depend on the thread count.

mod adamw;
mod arena;
mod schedule;
mod sgd;

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{Schedule, ScheduleKind};
pub use sgd::{Sgd, SgdConfig};

bitnet_framework::register_plugin!(
    AdamWConfig,
    "adamw",
    "AdamW (decoupled decay on matrices), BitNet two-stage schedule, global-norm clipping."
);
bitnet_framework::register_plugin!(
    SgdConfig,
    "sgd",
    "SGD with momentum or Nesterov momentum (DiLoCo's outer optimizer)."
);
