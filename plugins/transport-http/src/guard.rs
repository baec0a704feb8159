//! What stands between the network and password verification: per-IP and per-client rate
//! limits (governor), a lockout after repeated failures, and a bounded pool of verification
//! slots, so a flood of logins costs bounded memory and CPU and is answered 429 or 503 early.

use bitnet_framework::protocol::ApiError;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Limits of the login guard (from [`crate::HttpConfig`]).
#[derive(Debug, Clone)]
pub struct GuardLimits {
    /// Login attempts per minute from one IP address (burst: a tenth, at least 5).
    pub logins_per_ip_per_minute: u32,
    /// Login attempts per minute for one client id.
    pub logins_per_client_per_minute: u32,
    /// Consecutive failures of one client id that lock it out.
    pub lockout_failures: u32,
    /// How long a lockout lasts.
    pub lockout: Duration,
    /// Verifications running at once (each argon2 verification takes ~19 MiB and a core).
    pub verify_slots: usize,
    /// Logins waiting for a slot before more are refused with 503.
    pub verify_queue: usize,
}

/// Counters the guard adds to `/metrics`.
#[derive(Debug, Default)]
pub struct GuardCounters {
    /// Logins refused for a wrong secret, unknown id or revoked client.
    pub failures: AtomicU64,
    /// Logins answered 429 by a rate limit.
    pub rate_limited: AtomicU64,
    /// Logins refused because the client id is locked out.
    pub locked_out: AtomicU64,
    /// Logins refused because every verification slot and the queue were full.
    pub overloaded: AtomicU64,
    /// Protected requests refused for a missing, invalid or expired token.
    pub bad_tokens: AtomicU64,
}

impl GuardCounters {
    /// Prometheus text for the counters.
    pub fn render(&self) -> String {
        counters_text(&[
            (
                "bitnet_auth_login_failures_total",
                "Logins refused: wrong secret, unknown or revoked client.",
                &self.failures,
            ),
            (
                "bitnet_auth_rate_limited_total",
                "Logins answered 429 by a per-IP or per-client rate limit.",
                &self.rate_limited,
            ),
            (
                "bitnet_auth_locked_out_total",
                "Logins refused while the client id was locked out.",
                &self.locked_out,
            ),
            (
                "bitnet_auth_overloaded_total",
                "Logins refused with 503: every verification slot busy.",
                &self.overloaded,
            ),
            (
                "bitnet_auth_bad_tokens_total",
                "Requests refused for a missing, invalid or expired token.",
                &self.bad_tokens,
            ),
        ])
    }
}

/// Prometheus text of `(name, help, value)` counters.
pub(crate) fn counters_text(counters: &[(&str, &str, &AtomicU64)]) -> String {
    let mut out = String::new();
    for (name, help, v) in counters {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    out
}

#[derive(Debug, Clone, Copy)]
struct FailureRecord {
    consecutive: u32,
    locked_until: Option<Instant>,
    last: Instant,
}

/// Most client ids whose failures are remembered; past it, the oldest unlocked are forgotten.
const MAX_TRACKED_IDS: usize = 100_000;

/// The login guard of one server.
pub struct LoginGuard {
    limits: GuardLimits,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_client: DefaultKeyedRateLimiter<String>,
    failures: Mutex<HashMap<String, FailureRecord>>,
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Counters for `/metrics`.
    pub counters: GuardCounters,
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst =
        NonZeroU32::new((per_minute / 10).max(5).min(per_minute.max(1))).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(burst)
}

impl LoginGuard {
    /// A guard with `limits`.
    pub fn new(limits: GuardLimits) -> Self {
        Self {
            per_ip: RateLimiter::keyed(quota(limits.logins_per_ip_per_minute)),
            per_client: RateLimiter::keyed(quota(limits.logins_per_client_per_minute)),
            failures: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(limits.verify_slots.max(1))),
            waiting: AtomicUsize::new(0),
            counters: GuardCounters::default(),
            limits,
        }
    }

    fn too_many(&self, reason: String, wait: Duration) -> ApiError {
        ApiError::TooMany { reason, retry_after_secs: wait.as_secs().max(1) }
    }

    /// Admits one login attempt from `ip` for `client_id`, or refuses it with 429: a rate
    /// limit, or a lockout after repeated failures. Costs no password verification.
    pub fn admit(&self, ip: IpAddr, client_id: &str) -> Result<(), ApiError> {
        let now = DefaultClock::default().now();
        if let Err(not_until) = self.per_ip.check_key(&ip) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(now);
            return Err(self.too_many(format!("too many logins from {ip}"), wait));
        }
        if let Some(until) = self.locked_until(client_id) {
            self.counters.locked_out.fetch_add(1, Ordering::Relaxed);
            let wait = until.saturating_duration_since(Instant::now());
            tracing::warn!(client = client_id, %ip, "login refused: client locked out");
            return Err(self.too_many(
                format!(
                    "client `{client_id}` is locked out after {} failed logins",
                    self.limits.lockout_failures
                ),
                wait,
            ));
        }
        if let Err(not_until) = self.per_client.check_key(&client_id.to_string()) {
            self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
            let wait = not_until.wait_time_from(now);
            return Err(self.too_many(format!("too many logins for `{client_id}`"), wait));
        }
        Ok(())
    }

    fn locked_until(&self, client_id: &str) -> Option<Instant> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.get(client_id).and_then(|r| r.locked_until).filter(|&t| t > Instant::now())
    }

    /// Waits for a verification slot; 503 when too many logins already wait.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        if let Ok(p) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(p);
        }
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.limits.verify_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            self.counters.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Unavailable("too many logins in progress; retry shortly".into()));
        }
        let permit = Arc::clone(&self.slots).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        permit.map_err(|_| ApiError::Unavailable("the server is shutting down".into()))
    }

    /// Records the outcome of a verified login of `client_id` from `ip`.
    pub fn record(&self, ip: IpAddr, client_id: &str, ok: bool) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            failures.remove(client_id);
            return;
        }
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
        if failures.len() >= MAX_TRACKED_IDS && !failures.contains_key(client_id) {
            failures.retain(|_, r| r.locked_until.is_some_and(|t| t > now));
        }
        let r = failures.entry(client_id.to_string()).or_insert(FailureRecord {
            consecutive: 0,
            locked_until: None,
            last: now,
        });
        r.consecutive += 1;
        r.last = now;
        tracing::warn!(client = client_id, %ip, failures = r.consecutive, "login failed");
        if self.limits.lockout_failures > 0 && r.consecutive >= self.limits.lockout_failures {
            r.locked_until = Some(now + self.limits.lockout);
            r.consecutive = 0;
            tracing::warn!(
                client = client_id,
                secs = self.limits.lockout.as_secs(),
                "client locked out"
            );
        }
    }

    /// Forgets limiter state and failure records that no longer matter (call periodically).
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_client.retain_recent();
        let now = Instant::now();
        let stale = self.limits.lockout.max(Duration::from_secs(60));
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.retain(|_, r| {
            r.locked_until.is_some_and(|t| t > now) || now.duration_since(r.last) < stale
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(per_ip: u32, per_client: u32, lockout_failures: u32) -> LoginGuard {
        LoginGuard::new(GuardLimits {
            logins_per_ip_per_minute: per_ip,
            logins_per_client_per_minute: per_client,
            lockout_failures,
            lockout: Duration::from_secs(300),
            verify_slots: 1,
            verify_queue: 1,
        })
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn an_ip_gets_its_burst_then_429_with_a_wait() {
        let g = guard(60, 1000, 0);
        for i in 0..6 {
            g.admit(IP, &format!("c{i}")).expect("within the burst");
        }
        match g.admit(IP, "c9") {
            Err(ApiError::TooMany { retry_after_secs, .. }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));
        g.admit(other, "c9").expect("limits are per IP");
        assert_eq!(g.counters.rate_limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn repeated_failures_lock_the_client_out_and_success_resets() {
        let g = guard(1000, 1000, 3);
        g.record(IP, "w", false);
        g.record(IP, "w", false);
        g.record(IP, "w", true);
        g.record(IP, "w", false);
        g.record(IP, "w", false);
        g.admit(IP, "w").expect("two failures since the last success");
        g.record(IP, "w", false);
        let err = g.admit(IP, "w").expect_err("locked out");
        assert!(err.to_string().contains("locked out"), "{err}");
        assert!(matches!(err, ApiError::TooMany { retry_after_secs: 299..=300, .. }), "{err}");
        g.admit(IP, "other").expect("the lockout is per client id");
        assert_eq!(g.counters.failures.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn verification_slots_and_queue_are_bounded() {
        let g = Arc::new(guard(1000, 1000, 0));
        let held = g.slot().await.expect("the one slot");
        let g2 = Arc::clone(&g);
        let waiter = tokio::spawn(async move { g2.slot().await.map(drop) });
        tokio::task::yield_now().await;
        let err = g.slot().await.expect_err("queue of one is full");
        assert!(matches!(err, ApiError::Unavailable(_)), "{err}");
        drop(held);
        waiter.await.expect("join").expect("the queued login gets the slot");
        assert_eq!(g.counters.overloaded.load(Ordering::Relaxed), 1);
    }
}
