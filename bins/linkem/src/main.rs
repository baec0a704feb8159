//! `bitnet-linkem`: emulated links between TAP devices (rate, delay, loss, queue limit).
//!
//! ```text
//! bitnet-linkem --link w1:w1c:w1w --link w2:w2c:w2w --rate 50mbit --rtt 40ms --loss 0.1% \
//!     --stats /tmp/links.json
//! ```
//! creates the TAP devices, prints `ready` and forwards frames until SIGINT or SIGTERM, then
//! prints what each direction sent, lost and dropped (and writes it as JSON with `--stats`).
//! Move each device into its namespace with `ip link set DEV netns NS` once `ready` is printed.

use std::path::PathBuf;

use bitnet_linkem::units::{LinkSpec, parse_duration_ns, parse_link, parse_loss, parse_rate};
use clap::Parser;

#[cfg(target_os = "linux")]
mod forward;
#[cfg(target_os = "linux")]
mod tap;

/// Emulated links between pairs of TAP devices: what `tc ... netem rate R delay D loss P limit
/// L` does, in a process. Every link gets the same shape, in both directions.
#[derive(Debug, Parser)]
#[command(name = "bitnet-linkem", version)]
struct Args {
    /// A link NAME:TAP_A:TAP_B (repeat for several). Both TAP devices are created.
    #[arg(long = "link", required = true, value_parser = parse_link)]
    links: Vec<LinkSpec>,
    /// Serialisation rate per direction: bit, kbit, mbit or gbit (per second), e.g. 50mbit.
    #[arg(long, value_parser = parse_rate)]
    rate: u64,
    /// Round-trip propagation delay (each direction delays by half), e.g. 40ms.
    #[arg(long, value_parser = parse_duration_ns, default_value = "0ms")]
    rtt: u64,
    /// Independent random loss per frame and direction, as a percentage, e.g. 0.1%.
    #[arg(long, value_parser = parse_loss, default_value = "0%")]
    loss: f64,
    /// Frames in flight per direction beyond which new frames are dropped (netem's limit).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Seed of the loss streams (each direction of each link draws its own from it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the counters as JSON to this file on exit.
    #[arg(long)]
    stats: Option<PathBuf>,
}

#[cfg(target_os = "linux")]
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let params = bitnet_linkem::model::LinkParams {
        rate_bits_per_sec: args.rate,
        delay_ns: args.rtt / 2,
        loss: args.loss,
        limit: args.limit as usize,
    };
    forward::run(&args.links, params, args.seed, args.stats.as_deref())
}

#[cfg(not(target_os = "linux"))]
fn main() -> anyhow::Result<()> {
    let _ = Args::parse();
    anyhow::bail!(
        "bitnet-linkem needs Linux: it forwards frames between TAP devices (/dev/net/tun)"
    )
}
