//! `bitnet-linkem`: what `tc qdisc ... netem rate R delay D loss P limit L` does, in a process.
//!
//! Some kernels (Firecracker guests among them) are built without the netem, fq and fq_codel
//! qdiscs, so a slow link cannot be shaped with `tc`. This crate forwards Ethernet frames between
//! two TAP devices and applies, per direction, the same model netem applies: a frame that finds
//! the queue full is dropped (drop-tail), an independent random loss, serialisation at a rate
//! (a frame departs when the link is free) and a fixed propagation delay.
//!
//! The link model ([`model`]) and the argument parsing ([`units`]) are plain code with no clock
//! and no devices, so their tests run anywhere; the binary adds the TAP devices and the threads.

pub mod model;
pub mod units;
