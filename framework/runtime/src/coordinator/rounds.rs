//! Synchronous rounds: updates computed on one weight version are averaged into one optimizer
//! step when the round closes; late updates are scaled by the staleness policy.

use super::*;

/// What closing a round did.
pub(super) struct Applied {
    /// Weight version after the round.
    pub(super) version: u64,
    /// Whether the optimizer stepped (false when no update carried tokens).
    pub(super) stepped: bool,
    pub(super) entries: Vec<Entry>,
}

/// Tokens per second of an update's compute (0 when the reported time is unusable).
pub(super) fn rate(tokens: u64, seconds: f64) -> f64 {
    if seconds > 0.0 && seconds.is_finite() { tokens as f64 / seconds } else { 0.0 }
}

impl Coordinator {
    /// One maintenance pass: sweep the store, take a timed snapshot if one is due.
    pub fn maintain(&self) {
        match self.store.sweep(now_ms(), &self.settings.sweep_policy()) {
            Ok(r) if r.leases_expired + r.tasks_failed + r.workers_gone > 0 => {
                tracing::info!(
                    leases_expired = r.leases_expired,
                    tasks_failed = r.tasks_failed,
                    workers_gone = r.workers_gone,
                    "sweep"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
        if self.settings.sync_rounds {
            self.check_round();
        }
        self.log_quota.prune(now_ms());
        let due = self.settings.snapshot_every_secs > 0.0;
        if let Ok(mut m) = self.model.lock()
            && due
            && m.updates_since_snapshot > 0
            && m.last_snapshot.elapsed().as_secs_f64() >= self.settings.snapshot_every_secs
        {
            self.queue_snapshot(&mut m);
        }
    }

    /// Stops waiting for round members whose lease is gone (expired, handed back, failed) and
    /// closes the round when nothing more is expected or it waited long enough.
    pub(super) fn check_round(&self) {
        let Ok(members) = lock(&self.model, "model").map(|m| m.round.members().collect::<Vec<_>>())
        else {
            return;
        };
        let gone: Vec<TaskRef> = members
            .into_iter()
            .filter(|t| match self.store.task(t.task_id) {
                Ok(Some(r)) => {
                    !(r.state == bitnet_framework::coordinator_store::TaskState::Assigned
                        && r.attempts == t.lease)
                }
                Ok(None) => true,
                Err(_) => false,
            })
            .collect();
        let applied = match lock(&self.model, "model") {
            Ok(mut m) => {
                for t in gone {
                    m.round.forget(t);
                }
                if self.round_due(&m) { Some(self.apply_round(&mut m)) } else { None }
            }
            Err(_) => return,
        };
        self.record_closed(applied, "closing a round");
    }

    /// Records a round closed off the request path (maintenance, shutdown), or logs why
    /// closing it failed.
    pub(super) fn record_closed(&self, applied: Option<Result<Applied, ApiError>>, what: &str) {
        match applied {
            Some(Ok(a)) => self.record_applied(&a),
            Some(Err(e)) => tracing::error!(error = %e, "{what} failed"),
            None => {}
        }
    }

    /// Whether the open round should take its step now.
    pub(super) fn round_due(&self, m: &ModelState) -> bool {
        !m.round.is_empty()
            && (!self.settings.sync_rounds
                || m.round.missing() == 0
                || m.round
                    .opened()
                    .is_some_and(|t| t.elapsed().as_secs_f64() >= self.settings.round_wait_secs))
    }

    /// The coordinator optimizer's step index (drives its schedule). async-sgd: tokens applied
    /// / the schedule unit (`schedule_unit_tokens`, else the task cap), so the schedule spans
    /// the token budget however many tasks a round holds ([`schedule_steps`] sizes it
    /// the same way). Otherwise (DiLoCo's outer optimizer, uncapped async-sgd) the weight
    /// version.
    pub(super) fn schedule_position(&self, m: &ModelState) -> u64 {
        match (self.shape.mode, self.settings.schedule_unit_tokens, self.settings.max_task_tokens) {
            (TrainMode::AsyncSgd, unit, _) if unit > 0 => m.tokens_applied / unit,
            (TrainMode::AsyncSgd, _, cap) if cap > 0 => m.tokens_applied / cap,
            _ => m.version,
        }
    }

    /// The step a task's schedule starts at: for diloco's inner optimizer, tokens applied /
    /// the schedule unit (`schedule_unit_tokens`, else batch tokens; its schedule spans budget
    /// / that unit); for async-sgd, the coordinator's own step index.
    pub(super) fn task_schedule_step(&self, m: &ModelState) -> u64 {
        match self.shape.mode {
            TrainMode::AsyncSgd => self.schedule_position(m),
            TrainMode::Diloco => {
                let unit = match self.settings.schedule_unit_tokens {
                    0 => self.shape.batch_tokens(),
                    unit => unit,
                };
                m.tokens_applied / unit.max(1)
            }
        }
    }

    /// Takes the open round's step (the token-weighted mean of its updates), completes its
    /// tasks at the new version and wakes claims waiting for it. A round whose updates carry
    /// no tokens completes its tasks without a step.
    ///
    /// The tasks are marked Done first, all in one store transaction, and only then is the step
    /// taken. When the store fails (a full disk, an I/O error) nothing has changed: the round
    /// stays open with every update in it, the caller gets a retryable error, and the next
    /// upload or maintenance pass tries again; so an update a worker was told is accepted is
    /// never lost, and never applied twice. A crash after the commit loses the step with the
    /// rest of memory, and recovery returns these tasks to the queue (their version is newer
    /// than any snapshot).
    pub(super) fn apply_round(&self, m: &mut ModelState) -> Result<Applied, ApiError> {
        let step = self.schedule_position(m);
        let stepping = m.round.tokens() > 0;
        let version = if stepping { m.version + 1 } else { m.version };
        let finished: Vec<Finished> = m
            .round
            .entries()
            .iter()
            .map(|e| Finished { task: e.task, worker: e.worker.clone() })
            .collect();
        let outcomes = self.store.complete(&finished, version).map_err(|e| {
            self.metrics.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, "recording a round's completion failed; it stays open");
            ApiError::Unavailable(format!(
                "recording the round's completion failed ({e}); nothing was applied and the \
                 round stays open: retry"
            ))
        })?;
        for (f, outcome) in finished.iter().zip(&outcomes) {
            // The leases were extended when the updates joined the round, under the model
            // lock; a refusal means the store changed under the coordinator.
            if let Completion::Refused(msg) = outcome {
                tracing::error!(task = f.task.task_id, %msg, "completion refused");
            }
        }
        let ModelState { params, optimizer, round, .. } = &mut *m;
        let closed = round.close();
        let tokens = closed.tokens;
        let mut lr = 0.0;
        if let Some(update) = closed.update {
            match optimizer.step(params, update, StepInfo { step, lr_scale: closed.lr_scale }) {
                Ok(report) => lr = report.lr,
                Err(e) => {
                    // Every update was checked finite, bounded and of the model's size before
                    // it joined the round, so this is a broken optimizer, not a bad upload.
                    let entries = round.finish();
                    self.round_closed.notify_all();
                    return Err(ApiError::Internal(format!(
                        "the optimizer refused the round's update ({e}); its {} task(s) are \
                         recorded Done at version {version} without it",
                        entries.len()
                    )));
                }
            }
        }
        if stepping {
            m.version = version;
            m.updates_since_snapshot += 1;
            m.tokens_applied += tokens;
        }
        let entries = m.round.finish();
        let at = Instant::now();
        for e in &entries {
            let compute_ms = (e.seconds * 1000.0) as u64;
            m.recent.push_back(Recent { loss: e.loss, tokens: e.tokens, compute_ms, at });
            m.ledger.push(blob::LedgerEntry { task_id: e.task.task_id, tokens: e.tokens });
        }
        while m.recent.len() > RECENT_UPDATES {
            m.recent.pop_front();
        }
        if self.settings.snapshot_every_updates > 0
            && m.updates_since_snapshot >= self.settings.snapshot_every_updates
        {
            self.queue_snapshot(m);
        }
        self.round_closed.notify_all();
        tracing::debug!(version, updates = entries.len(), tokens, lr, "round applied");
        Ok(Applied { version, stepped: stepping, entries })
    }

    /// Metrics and telemetry of an applied round (outside the model lock).
    pub(super) fn record_applied(&self, a: &Applied) {
        self.metrics.applied.fetch_add(a.entries.len() as u64, Ordering::Relaxed);
        if a.stepped {
            self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        }
        for e in &a.entries {
            self.metrics.tokens.fetch_add(e.tokens, Ordering::Relaxed);
            let rate = self.plausible_tps(rate(e.tokens, e.seconds));
            let recorded = self.store.record_throughput(&e.worker, rate).and_then(|()| {
                self.store.record_telemetry(&TaskTelemetry {
                    task_id: e.task.task_id,
                    worker: e.worker.clone(),
                    loss: e.loss,
                    tokens: e.tokens,
                    tokens_per_sec: rate,
                    staleness: e.staleness,
                    accepted: true,
                    version: a.version,
                    ts_ms: now_ms(),
                })
            });
            if let Err(err) = recorded {
                tracing::warn!(task = e.task.task_id, error = %err, "telemetry not recorded");
            }
        }
    }

    /// Blocks while `worker`'s update waits in the open round, so its next task starts from
    /// the round's result. False when the round is still open after [`CLAIM_WAIT`] (the claim
    /// answers "no task"; the worker polls again).
    pub(super) fn wait_for_round(&self, worker: &str) -> Result<bool, ApiError> {
        let deadline = Instant::now() + CLAIM_WAIT;
        let mut m = lock(&self.model, "model")?;
        let generation = m.round.generation();
        while m.round.generation() == generation && m.round.has_update_from(worker) {
            let now = Instant::now();
            if now >= deadline || self.stopping.load(Ordering::SeqCst) {
                return Ok(false);
            }
            m = self
                .round_closed
                .wait_timeout(m, deadline - now)
                .map_err(|_| ApiError::Internal("model lock poisoned".into()))?
                .0;
        }
        Ok(true)
    }
}
