//! Moving frames: per direction, one thread reads the source TAP and offers each frame to the
//! link model; another sleeps until the oldest frame in flight is due and writes it to the far
//! TAP. A condition variable with a timeout is the timer (deliveries are FIFO per direction),
//! good to ~0.1 ms on an idle core.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use bitnet_linkem::model::{Counters, Direction, LinkParams};
use bitnet_linkem::units::LinkSpec;

/// One direction of one link, shared by its reader and writer threads.
struct Half {
    label: String,
    state: Mutex<Direction<Vec<u8>>>,
    due: Condvar,
    write_errors: AtomicU64,
}

impl Half {
    fn lock(&self) -> MutexGuard<'_, Direction<Vec<u8>>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(serde::Serialize)]
struct HalfReport {
    #[serde(flatten)]
    counters: Counters,
    in_flight: usize,
    write_errors: u64,
}

#[derive(serde::Serialize)]
struct LinkReport {
    name: String,
    tap_a: String,
    tap_b: String,
    a_to_b: HalfReport,
    b_to_a: HalfReport,
}

#[derive(serde::Serialize)]
struct Report {
    rate_bits_per_sec: u64,
    rtt_ns: u64,
    loss: f64,
    limit: usize,
    seed: u64,
    seconds: f64,
    links: Vec<LinkReport>,
}

fn nanos_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn spawn_reader(half: Arc<Half>, from: Arc<File>, epoch: Instant) {
    std::thread::spawn(move || {
        // A TAP without IFF_VNET_HDR gets no offloaded super-frames: an MTU-sized frame at most.
        let mut buf = vec![0u8; 65_536];
        loop {
            match (&*from).read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => {
                    let now = nanos_since(epoch);
                    half.lock().offer(now, n, buf[..n].to_vec());
                    half.due.notify_one();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!(
                        "bitnet-linkem: reading for {}: {e}; this direction stops",
                        half.label
                    );
                    return;
                }
            }
        }
    });
}

fn spawn_writer(half: Arc<Half>, to: Arc<File>, epoch: Instant) {
    std::thread::spawn(move || {
        let mut state = half.lock();
        loop {
            let now = nanos_since(epoch);
            if let Some(frame) = state.pop_due(now) {
                drop(state);
                // A device that is down (before `ip link set up`, or after a namespace is
                // deleted) refuses writes; the frame is lost, as on a cable without carrier.
                if (&*to).write(&frame).is_err() {
                    half.write_errors.fetch_add(1, Ordering::Relaxed);
                }
                state = half.lock();
                continue;
            }
            state = match state.next_delivery_ns() {
                None => half.due.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wait = Duration::from_nanos(at.saturating_sub(now));
                    half.due.wait_timeout(state, wait).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    });
}

fn report_half(half: &Half) -> HalfReport {
    let state = half.lock();
    HalfReport {
        counters: state.counters(),
        in_flight: state.in_flight(),
        write_errors: half.write_errors.load(Ordering::Relaxed),
    }
}

/// Creates every link's TAP devices, forwards until SIGINT/SIGTERM, then reports.
pub fn run(
    links: &[LinkSpec],
    params: LinkParams,
    seed: u64,
    stats: Option<&Path>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .context("installing the SIGINT/SIGTERM handler")?;

    let epoch = Instant::now();
    let mut halves = Vec::new();
    for (i, link) in links.iter().enumerate() {
        let open = |name: &str| {
            crate::tap::create(name).map(Arc::new).with_context(|| {
                format!(
                    "creating TAP device {name:?} for link {:?} (needs root or CAP_NET_ADMIN, \
                     /dev/net/tun, and no other device of that name)",
                    link.name
                )
            })
        };
        let (a, b) = (open(&link.tap_a)?, open(&link.tap_b)?);
        let mut pair = Vec::new();
        for (d, (from, to, label)) in [
            (&a, &b, format!("{} {}->{}", link.name, link.tap_a, link.tap_b)),
            (&b, &a, format!("{} {}->{}", link.name, link.tap_b, link.tap_a)),
        ]
        .into_iter()
        .enumerate()
        {
            // Distinct, reproducible loss streams for every direction of every link.
            let stream = (2 * i + d) as u64 + 1;
            let half = Arc::new(Half {
                label,
                state: Mutex::new(Direction::new(
                    params,
                    seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                )),
                due: Condvar::new(),
                write_errors: AtomicU64::new(0),
            });
            spawn_reader(Arc::clone(&half), Arc::clone(from), epoch);
            spawn_writer(Arc::clone(&half), Arc::clone(to), epoch);
            pair.push(half);
        }
        halves.push((link, pair));
    }
    println!(
        "bitnet-linkem: ready: {} link(s), {} bit/s, rtt {} us, loss {}%, limit {}",
        links.len(),
        params.rate_bits_per_sec,
        2 * params.delay_ns / 1000,
        params.loss * 100.0,
        params.limit
    );
    io::stdout().flush().context("writing to stdout")?;

    // Either a signal or a dropped sender (it cannot be dropped while the handler is set).
    let _ = stop_rx.recv();
    let seconds = epoch.elapsed().as_secs_f64();
    let mut report = Report {
        rate_bits_per_sec: params.rate_bits_per_sec,
        rtt_ns: 2 * params.delay_ns,
        loss: params.loss,
        limit: params.limit,
        seed,
        seconds,
        links: Vec::new(),
    };
    for (link, pair) in &halves {
        for half in pair {
            let r = report_half(half);
            let c = r.counters;
            eprintln!(
                "bitnet-linkem: {}: sent {} frames / {} bytes, lost {} / {} B, queue-full drops \
                 {} / {} B, in flight {}, write errors {}",
                half.label,
                c.sent_frames,
                c.sent_bytes,
                c.lost_frames,
                c.lost_bytes,
                c.overflow_frames,
                c.overflow_bytes,
                r.in_flight,
                r.write_errors
            );
        }
        report.links.push(LinkReport {
            name: link.name.clone(),
            tap_a: link.tap_a.clone(),
            tap_b: link.tap_b.clone(),
            a_to_b: report_half(&pair[0]),
            b_to_a: report_half(&pair[1]),
        });
    }
    if let Some(path) = stats {
        let json = serde_json::to_string_pretty(&report).context("encoding the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("writing the report to {}", path.display()))?;
    }
    // The reader threads block in read(2): leave without joining them. Closing the files on
    // exit removes the TAP devices, wherever they were moved.
    std::process::exit(0)
}
