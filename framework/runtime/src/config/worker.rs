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
    /// Retries of a failed request before giving up.
    pub max_retries: u32,
    /// First backoff, ms (doubles each retry, capped at 5 s).
    pub retry_base_ms: u64,
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
            max_retries: 8,
            retry_base_ms: 200,
            cache_dir: None,
        }
    }
}
