//! The `[coordinator]` section of a run config, and its validation.

use bitnet_framework::coordinator_store::SweepPolicy;
use serde::{Deserialize, Serialize};

/// The `[coordinator]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSection {
    /// async-sgd: longest a task should run on the worker that claims it, seconds. It only
    /// caps the size: a task is a whole number of optimizer batches, as many as keep the steps
    /// the schedule spans, never fewer than one (see the book's "Task sizing").
    pub task_seconds: f64,
    /// Lease = headroom x the task's expected duration (at least `min_lease_secs`).
    pub lease_headroom: f64,
    /// Shortest lease, seconds.
    pub min_lease_secs: f64,
    /// Workers heartbeat this often while working, seconds.
    pub heartbeat_secs: f64,
    /// Snapshot after this many applied updates (0 = only by time).
    pub snapshot_every_updates: u64,
    /// Snapshot at least this often while updates arrive, seconds (0 = only by count).
    pub snapshot_every_secs: f64,
    /// Snapshots kept in the weight store: after each one is written, all but the newest
    /// `keep_snapshots` are deleted (0 = keep all). More than one lets recovery fall back when
    /// the newest turns out corrupt.
    pub keep_snapshots: usize,
    /// `bitnet coordinator` and `bitnet run` write a training checkpoint (the safetensors file
    /// `eval`, `export` and `classify` open) to `run.dir/checkpoints/` this often while the
    /// weights change, seconds, and always when the token budget is reached and at shutdown
    /// (0 = only then). `train.keep_checkpoints` of them are kept.
    pub checkpoint_every_secs: f64,
    /// A fleet run measures the validation loss of its weights this often while they change,
    /// seconds (0 = never): a `metrics.jsonl` row and a point of the console's curve.
    pub eval_every_secs: f64,
    /// Batches of `train.batch_size` windows each validation averages over.
    pub eval_batches: usize,
    /// A worker silent this long is marked Gone, seconds.
    pub worker_timeout_secs: f64,
    /// A task whose lease expires this many times is Failed.
    pub max_attempts: u64,
    /// Largest accepted update upload, bytes. The limit in force is the smaller of this and
    /// the longest valid update of the run's model and codec plus 64 KiB, so an upload
    /// larger than any real update is refused before its body is read.
    pub max_upload_bytes: u64,
    /// Most tasks one worker may hold at once; a claim past it gets no task.
    pub max_leases_per_worker: u64,
    /// Ceiling on the throughput a worker may claim or is measured at, tokens/s (0 = what
    /// the model can plausibly run: 10^13 FLOP/s, far beyond any CPU, over the 6 FLOPs per
    /// parameter and token of training). Task sizes and leases follow the clamped figure.
    pub max_worker_tokens_per_sec: f64,
    /// Longest lease, seconds, whatever the worker's reported throughput.
    pub max_lease_secs: f64,
    /// Largest magnitude of one value of a decoded update; larger (a finite but absurd
    /// quantisation scale, say) is refused with 422.
    pub max_update_abs: f64,
    /// Log records one worker may send per minute; more are refused with 429.
    pub log_records_per_minute: u64,
    /// Worker log records older than this are pruned, seconds.
    pub log_retention_secs: f64,
    /// At most this many worker log records are kept; the earliest go first.
    pub max_log_records: u64,
    /// The maintenance thread (lease sweeper, timed snapshots) wakes this often, seconds.
    pub sweep_every_secs: f64,
    /// Telemetry older than this is pruned, seconds.
    pub telemetry_retention_secs: f64,
    /// Seeded tasks are at most this many tokens (claims split them further).
    pub seed_chunk_tokens: u64,
    /// async-sgd: a claimed task holds at most this many tokens (0 = no cap). Tasks are whole
    /// optimizer batches by default; a cap below one batch splits a batch across the workers
    /// of a synchronous round (440 with two workers and batches of ~880 example tokens makes
    /// each round one single-process batch, as `bitnet train` steps).
    pub max_task_tokens: u64,
    /// Average the updates computed on one weight version into a single optimizer step (a
    /// synchronous round) instead of applying each on arrival. A round closes when every task
    /// leased on its version has reported, been handed back or lost its lease, or
    /// `round_wait_secs` after its first update. A worker whose update waits in the open round
    /// waits in its next claim until the round closes, so while every worker is alive no update
    /// is stale. false = fully asynchronous (each update is one step, stale by about the number
    /// of other workers).
    pub sync_rounds: bool,
    /// Longest an open round waits for missing updates after its first one, seconds.
    pub round_wait_secs: f64,
    /// Example tokens per step of the learning-rate schedules of a run with a token budget
    /// (the coordinator's optimizer in async-sgd, the workers' inner optimizer in diloco;
    /// DiLoCo's outer optimizer counts weight versions): the schedule's step index is tokens
    /// applied / this, and it spans `token_budget / this` steps, so warm-up and decay happen at the same point of the data however many workers
    /// share a round. Set it to the example tokens of one single-process batch to give a
    /// distributed run `bitnet train`'s schedule. 0 = `max_task_tokens` in async-sgd (one step
    /// per capped task), `batch_size x seq_len` in diloco.
    pub schedule_unit_tokens: u64,
    /// PEM certificate of the CA that signed the coordinator's TLS certificate (`bitnet certs
    /// init` writes `ca.pem`): the console puts it in the credentials files and install
    /// scripts it makes, so workers pin it. Relative paths are under the run directory.
    pub ca_file: Option<std::path::PathBuf>,
    /// When the weight store can hand out presigned URLs (`s3`), publish the served weights and
    /// the corpus shards there and let workers download them straight from the object store
    /// (verified against the task's SHA-256, falling back to the coordinator), so the
    /// coordinator's egress does not grow with the fleet. false: the coordinator serves every
    /// download (workers that cannot reach the bucket).
    pub direct_downloads: bool,
    /// Coordinator replicas: how long a leader's lease lasts without renewal, seconds (renewed
    /// every third of it). 0 = one coordinator process owns the run (the default). Above 0,
    /// every `bitnet coordinator` of the run (same store, which must elect a leader:
    /// `postgres`, and a weight store they all reach: `s3`) is a replica: one leads (holds the
    /// weights, applies rounds, writes snapshots), the others answer logins and relay the rest
    /// to it, and one of them takes over from the newest recorded snapshot about this long
    /// after the leader dies.
    pub leader_lease_secs: f64,
    /// Where the other replicas reach this one when it leads (`https://host:port`, what its
    /// certificate names); empty = the address it listens on.
    pub advertise_url: String,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        Self {
            task_seconds: 600.0,
            lease_headroom: 3.0,
            min_lease_secs: 30.0,
            heartbeat_secs: 10.0,
            snapshot_every_updates: 50,
            snapshot_every_secs: 300.0,
            keep_snapshots: 3,
            checkpoint_every_secs: 1800.0,
            eval_every_secs: 300.0,
            eval_batches: 8,
            worker_timeout_secs: 120.0,
            max_attempts: 5,
            max_upload_bytes: 512 << 20,
            max_leases_per_worker: 2,
            max_worker_tokens_per_sec: 0.0,
            max_lease_secs: 3600.0,
            max_update_abs: 1e4,
            log_records_per_minute: 1200,
            log_retention_secs: 7.0 * 24.0 * 3600.0,
            max_log_records: 1_000_000,
            sweep_every_secs: 2.0,
            telemetry_retention_secs: 7.0 * 24.0 * 3600.0,
            seed_chunk_tokens: 1 << 20,
            max_task_tokens: 0,
            sync_rounds: true,
            round_wait_secs: 120.0,
            schedule_unit_tokens: 0,
            ca_file: None,
            direct_downloads: true,
            leader_lease_secs: 0.0,
            advertise_url: String::new(),
        }
    }
}

impl CoordinatorSection {
    /// Every inconsistent value, described.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (k, v) in [
            ("task_seconds", self.task_seconds),
            ("lease_headroom", self.lease_headroom),
            ("heartbeat_secs", self.heartbeat_secs),
            ("sweep_every_secs", self.sweep_every_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("coordinator.{k} must be positive, is {v}"));
            }
        }
        if self.lease_headroom < 1.0 {
            p.push("coordinator.lease_headroom must be at least 1".into());
        }
        if !(self.round_wait_secs.is_finite() && self.round_wait_secs >= 0.0) {
            p.push(format!(
                "coordinator.round_wait_secs must be zero or positive, is {}",
                self.round_wait_secs
            ));
        }
        for (k, v) in [
            ("max_lease_secs", self.max_lease_secs),
            ("max_update_abs", self.max_update_abs),
            ("log_retention_secs", self.log_retention_secs),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("coordinator.{k} must be positive, is {v}"));
            }
        }
        if !(self.eval_every_secs.is_finite() && self.eval_every_secs >= 0.0) {
            p.push(format!(
                "coordinator.eval_every_secs must be 0 or positive, is {}",
                self.eval_every_secs
            ));
        }
        if self.eval_batches == 0 {
            p.push("coordinator.eval_batches must be positive, is 0".into());
        }
        if !(self.checkpoint_every_secs.is_finite() && self.checkpoint_every_secs >= 0.0) {
            p.push(format!(
                "coordinator.checkpoint_every_secs must be zero (only at the end) or positive, is {}",
                self.checkpoint_every_secs
            ));
        }
        if !(self.max_worker_tokens_per_sec.is_finite() && self.max_worker_tokens_per_sec >= 0.0) {
            p.push(format!(
                "coordinator.max_worker_tokens_per_sec must be zero (derived) or positive, is {}",
                self.max_worker_tokens_per_sec
            ));
        }
        if self.max_lease_secs < self.min_lease_secs {
            p.push(format!(
                "coordinator.max_lease_secs ({}) is less than min_lease_secs ({})",
                self.max_lease_secs, self.min_lease_secs
            ));
        }
        if self.max_leases_per_worker == 0 {
            p.push("coordinator.max_leases_per_worker must be at least 1".into());
        }
        if self.max_attempts == 0 {
            p.push("coordinator.max_attempts must be positive".into());
        }
        if self.seed_chunk_tokens == 0 {
            p.push("coordinator.seed_chunk_tokens must be positive".into());
        }
        let lease = self.leader_lease_secs;
        if !(lease.is_finite() && (lease == 0.0 || lease >= MIN_LEADER_LEASE_SECS)) {
            p.push(format!(
                "coordinator.leader_lease_secs must be 0 (one coordinator) or at least \
                 {MIN_LEADER_LEASE_SECS} s, is {lease}"
            ));
        }
        let url = &self.advertise_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            p.push(format!("coordinator.advertise_url must be an http(s):// URL, is `{url}`"));
        }
        p
    }

    pub(crate) fn sweep_policy(&self) -> SweepPolicy {
        SweepPolicy {
            worker_timeout_ms: secs_to_ms(self.worker_timeout_secs),
            telemetry_retention_ms: secs_to_ms(self.telemetry_retention_secs),
            max_attempts: self.max_attempts,
            log_retention_ms: secs_to_ms(self.log_retention_secs),
            max_log_records: self.max_log_records,
        }
    }
}

/// Shortest leader lease: renewals every third of it must fit a database round trip.
pub const MIN_LEADER_LEASE_SECS: f64 = 0.5;

pub(crate) fn secs_to_ms(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 { (s * 1000.0) as u64 } else { 0 }
}
