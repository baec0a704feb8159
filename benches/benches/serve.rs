//! Latency of `bitnet serve` over loopback HTTP: for each number of model threads and of
//! concurrent clients, every client sends `POST /v1/intent` requests one after another, cycling
//! through the utterances of the hand-written eval set; prints p50 and p99 per request and the
//! throughput.
//!
//!     BITNET_SERVE_CHECKPOINT=runs/truckmate-small/checkpoints/step-00002000.safetensors \
//!       cargo bench -p bitnet-benches --bench serve
//!
//! Environment:
//! - `BITNET_SERVE_CHECKPOINT` (required): the training checkpoint to serve; without it the
//!   bench prints how to run it and exits (an untrained model never writes `[EOS]`, so its
//!   latency would say nothing about a real one);
//! - `BITNET_SERVE_DATA_DIR`: the data dir holding its tokenizer [default: the checkpoint's];
//! - `BITNET_SERVE_THREADS` [default `1,2`] and `BITNET_SERVE_CLIENTS` [default `1,8`];
//! - `BITNET_SERVE_REQUESTS`: requests per client per case [default 100];
//! - `BITNET_SERVE_DECODE_BATCH`: `--decode-batch`, the most queued utterances a model decodes
//!   together [default: serve's, 16]; 1 decodes one at a time.
//!
//! Not a criterion bench: the figure is a latency distribution under concurrency, not the time
//! of one operation (as `coordinator_load`).

use bitnet_cli::commands::inference::InferenceSource;
use bitnet_cli::commands::serve::{ServeOptions, Server};
use bitnet_truckmate::eval_set::parse_eval_set;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let Some(checkpoint) = std::env::var_os("BITNET_SERVE_CHECKPOINT").map(PathBuf::from) else {
        eprintln!(
            "serve bench skipped: set BITNET_SERVE_CHECKPOINT to a trained checkpoint, e.g.\n  \
             BITNET_SERVE_CHECKPOINT=runs/truckmate-small/checkpoints/step-00002000.safetensors \
             cargo bench -p bitnet-benches --bench serve"
        );
        return;
    };
    let data_dir = std::env::var_os("BITNET_SERVE_DATA_DIR").map(PathBuf::from);
    let requests = list("BITNET_SERVE_REQUESTS", &[100])[0].max(1);
    let source = InferenceSource::from_checkpoint(&checkpoint, data_dir.as_deref())
        .expect("load checkpoint");
    let set = parse_eval_set(include_str!("../../plugins/truckmate/data/handwritten-eval.jsonl"))
        .expect("the hand-written set parses");
    let utterances: Vec<String> =
        set.into_iter().map(|u| u.utterance).filter(|u| !u.trim().is_empty()).collect();
    println!(
        "serving {} (context {}), {} utterances, {requests} requests per client",
        source.origin,
        source.seq_len,
        utterances.len()
    );
    let decode_batch =
        list("BITNET_SERVE_DECODE_BATCH", &[ServeOptions::default().decode_batch])[0].max(1);
    println!("decode batch {decode_batch}");
    for threads in list("BITNET_SERVE_THREADS", &[1, 2]) {
        let options = ServeOptions { threads, decode_batch, ..ServeOptions::default() };
        let server = Server::start(&source, "127.0.0.1:0", &options).expect("start");
        let url = format!("http://{}/v1/intent", server.addr());
        for clients in list("BITNET_SERVE_CLIENTS", &[1, 8]) {
            let started = Instant::now();
            let per_client: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..clients)
                    .map(|c| {
                        let (url, utterances) = (&url, &utterances);
                        s.spawn(move || {
                            let client = reqwest::blocking::Client::new();
                            let mut latencies = Vec::with_capacity(requests);
                            let mut errors = 0;
                            for i in 0..requests {
                                let u = &utterances[(c * 7919 + i) % utterances.len()];
                                let t = Instant::now();
                                let ok = client
                                    .post(url)
                                    .json(&serde_json::json!({ "utterance": u }))
                                    .send()
                                    .is_ok_and(|r| r.status().is_success());
                                latencies.push(t.elapsed());
                                errors += usize::from(!ok);
                            }
                            (latencies, errors)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("client thread")).collect()
            });
            let wall = started.elapsed();
            let errors: usize = per_client.iter().map(|(_, e)| e).sum();
            let mut all: Vec<Duration> = per_client.into_iter().flat_map(|(l, _)| l).collect();
            all.sort();
            println!(
                "threads {threads} clients {clients}: p50 {:.2} ms, p99 {:.2} ms, {:.1} \
                 utterances/s ({} requests, {errors} errors)",
                ms(percentile(&all, 0.5)),
                ms(percentile(&all, 0.99)),
                all.len() as f64 / wall.as_secs_f64(),
                all.len()
            );
        }
        server.stop();
    }
}
