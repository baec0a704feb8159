//! The coordinator's counters and latency histograms, rendered as Prometheus text.

use bitnet_framework::protocol::StatusReport;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, seconds.
const BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A cumulative latency histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|&b| s <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Everything the coordinator counts.
#[derive(Default)]
pub struct Metrics {
    pub claims: AtomicU64,
    pub heartbeats: AtomicU64,
    pub applied: AtomicU64,
    pub steps: AtomicU64,
    pub rejected: AtomicU64,
    pub malformed: AtomicU64,
    /// Rounds whose completion the store failed to record (retried; nothing applied).
    pub commit_failures: AtomicU64,
    pub tokens: AtomicU64,
    /// Bytes of weights and shards the coordinator served itself (its download egress).
    pub served_weight_bytes: AtomicU64,
    pub served_shard_bytes: AtomicU64,
    /// Presigned URLs handed out with tasks.
    pub presigned_weights: AtomicU64,
    pub presigned_shards: AtomicU64,
    /// Bytes uploaded to the object store for direct download.
    pub published_weight_bytes: AtomicU64,
    pub published_shard_bytes: AtomicU64,
    pub claim_latency: Histogram,
    pub heartbeat_latency: Histogram,
    pub decode_latency: Histogram,
    pub apply_latency: Histogram,
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

/// A counter with a `what` label of `weights` and `shards`.
fn by_what(out: &mut String, name: &str, help: &str, weights: u64, shards: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{what=\"weights\"}} {weights}\n\
         {name}{{what=\"shards\"}} {shards}"
    );
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self, status: Option<&StatusReport>) -> String {
        let mut out = String::new();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut out, "bitnet_claims_total", "Tasks leased.", l(&self.claims));
        counter(&mut out, "bitnet_heartbeats_total", "Heartbeats received.", l(&self.heartbeats));
        counter(&mut out, "bitnet_updates_applied_total", "Updates applied.", l(&self.applied));
        counter(
            &mut out,
            "bitnet_optimizer_steps_total",
            "Optimizer steps (one per closed round).",
            l(&self.steps),
        );
        counter(
            &mut out,
            "bitnet_updates_rejected_total",
            "Updates rejected as stale.",
            l(&self.rejected),
        );
        counter(
            &mut out,
            "bitnet_updates_malformed_total",
            "Uploads refused by the codec or the update bounds.",
            l(&self.malformed),
        );
        counter(
            &mut out,
            "bitnet_round_commit_failures_total",
            "Rounds whose completion the store failed to record (left open and retried).",
            l(&self.commit_failures),
        );
        counter(
            &mut out,
            "bitnet_tokens_trained_total",
            "Tokens in applied updates.",
            l(&self.tokens),
        );
        by_what(
            &mut out,
            "bitnet_served_bytes_total",
            "Bytes of downloads the coordinator served itself (its egress to workers).",
            l(&self.served_weight_bytes),
            l(&self.served_shard_bytes),
        );
        by_what(
            &mut out,
            "bitnet_presigned_urls_total",
            "Presigned object-store URLs handed out with tasks.",
            l(&self.presigned_weights),
            l(&self.presigned_shards),
        );
        by_what(
            &mut out,
            "bitnet_published_bytes_total",
            "Bytes uploaded to the object store for workers to download directly.",
            l(&self.published_weight_bytes),
            l(&self.published_shard_bytes),
        );
        if let Some(s) = status {
            let _ = writeln!(
                out,
                "# HELP bitnet_weight_version Current weight version.\n# TYPE bitnet_weight_version gauge\nbitnet_weight_version {}",
                s.weight_version
            );
            let _ = writeln!(
                out,
                "# HELP bitnet_snapshot_version Newest snapshot.\n# TYPE bitnet_snapshot_version gauge\nbitnet_snapshot_version {}",
                s.snapshot_version
            );
            let _ = writeln!(out, "# HELP bitnet_tasks Tasks by state.\n# TYPE bitnet_tasks gauge");
            for (state, n) in [
                ("pending", s.tasks.pending),
                ("assigned", s.tasks.assigned),
                ("done", s.tasks.done),
                ("failed", s.tasks.failed),
            ] {
                let _ = writeln!(out, "bitnet_tasks{{state=\"{state}\"}} {n}");
            }
            let _ = writeln!(
                out,
                "# HELP bitnet_workers Workers by state.\n# TYPE bitnet_workers gauge"
            );
            for (state, n) in [
                ("active", s.workers.active),
                ("draining", s.workers.draining),
                ("gone", s.workers.gone),
            ] {
                let _ = writeln!(out, "bitnet_workers{{state=\"{state}\"}} {n}");
            }
            if let Some(loss) = s.recent_loss {
                let _ = writeln!(
                    out,
                    "# HELP bitnet_recent_loss Mean training loss of recent updates.\n# TYPE bitnet_recent_loss gauge\nbitnet_recent_loss {loss}"
                );
            }
        }
        self.claim_latency.render(&mut out, "bitnet_claim_seconds", "Time to lease a task.");
        self.heartbeat_latency.render(
            &mut out,
            "bitnet_heartbeat_seconds",
            "Time to handle a heartbeat.",
        );
        self.decode_latency.render(
            &mut out,
            "bitnet_update_decode_seconds",
            "Time to decode an update.",
        );
        self.apply_latency.render(
            &mut out,
            "bitnet_update_apply_seconds",
            "Time from receiving an update to its step (or to joining its round).",
        );
        out
    }
}
