//! The `[worker]` section of a run config.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `[worker]` section of a run config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    /// Timed training steps at start-up (after one warm-up step).
    pub calibration_steps: usize,
    /// Ship logs once this many records are buffered (and after every task).
    pub log_batch: usize,
    /// Wait this long before asking again when the queue is empty, ms.
    pub idle_poll_ms: u64,
    /// Exit once the queue is finished (no Pending or Assigned tasks).
    pub exit_when_done: bool,
    /// Stop retrying a coordinator that keeps failing (connection errors, 5xx, 429) after this
    /// many seconds (0 = keep trying until stopped).
    pub give_up_after_secs: f64,
    /// First backoff, ms (doubles each retry, up to `retry_max_ms`; a 429's Retry-After wins).
    pub retry_base_ms: u64,
    /// Longest backoff between two retries, ms.
    pub retry_max_ms: u64,
    /// Directory caching downloaded shards by hash; none = memory only.
    pub cache_dir: Option<PathBuf>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            calibration_steps: 3,
            log_batch: 100,
            idle_poll_ms: 1000,
            exit_when_done: false,
            give_up_after_secs: 0.0,
            retry_base_ms: 200,
            retry_max_ms: 5000,
            cache_dir: None,
        }
    }
}
