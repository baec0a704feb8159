//! Per-worker quotas on what a worker may make the coordinator store: log records per minute.
//! Only registered workers reach a quota, and windows older than a minute are pruned by the
//! maintenance pass, so its memory is bounded by the fleet.

use bitnet_framework::protocol::ApiError;
use std::collections::HashMap;
use std::sync::Mutex;

const WINDOW_MS: u64 = 60_000;

/// A fixed one-minute window per worker.
pub(super) struct LogQuota {
    per_minute: u64,
    windows: Mutex<HashMap<String, (u64, u64)>>,
}

impl LogQuota {
    /// `per_minute` records per worker per minute (0 = no quota).
    pub(super) fn new(per_minute: u64) -> Self {
        Self { per_minute, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts `n` records of `worker` at `now_ms`, or refuses them all with 429 when they
    /// would pass the quota.
    pub(super) fn take(&self, worker: &str, n: u64, now_ms: u64) -> Result<(), ApiError> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used) = windows.entry(worker.to_string()).or_insert((now_ms, 0));
        if now_ms.saturating_sub(*start) >= WINDOW_MS {
            (*start, *used) = (now_ms, 0);
        }
        if used.saturating_add(n) > self.per_minute {
            let left_ms = (*start + WINDOW_MS).saturating_sub(now_ms);
            return Err(ApiError::TooMany {
                reason: format!(
                    "worker `{worker}` already sent {used} log records this minute; {n} more \
                     would pass coordinator.log_records_per_minute = {}",
                    self.per_minute
                ),
                retry_after_secs: left_ms.div_ceil(1000).max(1),
            });
        }
        *used += n;
        Ok(())
    }

    /// Forgets windows that ended before `now_ms`.
    pub(super) fn prune(&self, now_ms: u64) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.retain(|_, (start, _)| now_ms.saturating_sub(*start) < WINDOW_MS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_quota_then_refuses_until_it_ends() {
        let q = LogQuota::new(10);
        q.take("w", 6, 0).expect("6 of 10");
        let err = q.take("w", 5, 1000).expect_err("11 of 10");
        assert!(matches!(err, ApiError::TooMany { retry_after_secs: 59, .. }), "{err}");
        q.take("other", 10, 1000).expect("quotas are per worker");
        q.take("w", 4, 2000).expect("exactly the quota");
        q.take("w", 10, 60_000).expect("a new window");
        q.prune(200_000);
        assert!(q.windows.lock().expect("lock").is_empty());
        q.take("w", 1, 0).expect("unlimited after prune too");
        assert!(LogQuota::new(0).take("w", u64::MAX, 0).is_ok(), "0 = no quota");
    }
}
