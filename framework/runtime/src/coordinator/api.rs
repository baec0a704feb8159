//! The coordinator protocol as this coordinator answers it.

use super::*;

impl CoordinatorApi for Coordinator {
    fn register(&self, worker: &str, reg: Registration) -> Result<Registered, ApiError> {
        if reg.layout_fingerprint != self.fingerprint {
            return Err(ApiError::Invalid(format!(
                "worker model layout {} does not match the coordinator's {}",
                reg.layout_fingerprint, self.fingerprint
            )));
        }
        if !(reg.tokens_per_sec.is_finite() && reg.tokens_per_sec > 0.0) {
            return Err(ApiError::Invalid("calibrated tokens_per_sec must be positive".into()));
        }
        let tokens_per_sec = self.plausible_tps(reg.tokens_per_sec);
        if tokens_per_sec < reg.tokens_per_sec {
            tracing::warn!(
                worker,
                claimed = reg.tokens_per_sec,
                clamped = tokens_per_sec,
                "calibrated throughput beyond what the model can plausibly run; clamped"
            );
        }
        self.store.upsert_worker(&WorkerRecord {
            id: worker.into(),
            state: WorkerState::Active,
            threads: reg.threads,
            calibrated_tps: tokens_per_sec,
            measured_tps: 0.0,
            last_seen_ms: now_ms(),
            host: reg.host.chars().filter(|c| !c.is_control()).take(255).collect(),
        })?;
        tracing::info!(worker, tokens_per_sec, "worker registered");
        Ok(Registered {
            worker_id: worker.into(),
            mode: self.shape.mode,
            heartbeat_ms: secs_to_ms(self.settings.heartbeat_secs),
            weight_version: self.version(),
        })
    }

    fn claim(&self, worker: &str) -> Result<Option<TaskSpec>, ApiError> {
        let started = Instant::now();
        let record = self.require_worker(worker)?;
        if record.state == WorkerState::Draining {
            return Ok(None);
        }
        self.store.touch_worker(worker, now_ms(), false)?;
        if self.settings.sync_rounds && !self.wait_for_round(worker)? {
            self.metrics.claim_latency.record(started.elapsed());
            return Ok(None);
        }
        let tps = self.plausible_tps(record.throughput());
        let (max_tokens, granularity) = self.task_size(tps);
        let weights = self.current_blob()?;
        let req = ClaimRequest {
            worker: worker.into(),
            now_ms: now_ms(),
            max_tokens,
            granularity,
            lease_ms: self.lease_ms(max_tokens, tps),
            max_leases: self.settings.max_leases_per_worker,
        };
        let Some(task) = self.store.claim(&req)? else {
            self.metrics.claim_latency.record(started.elapsed());
            return Ok(None);
        };
        let shard = self.corpus.info(&task.shard).ok_or_else(|| {
            ApiError::Internal(format!("task {} names unknown shard `{}`", task.id, task.shard))
        })?;
        // Signing is local (no request to the store) and happens only for a claimed task.
        let (weights_url, shard_url) = (self.weights_url(&weights), self.shard_url(&shard));
        let weights = weights.blob;
        let schedule_step = {
            let mut m = lock(&self.model, "model")?;
            // A task leased on the open round's version is waited for by that round.
            if self.settings.sync_rounds && m.version == weights.version {
                m.round.expect(TaskRef { task_id: task.id, lease: task.attempts });
            }
            self.task_schedule_step(&m)
        };
        self.metrics.claims.fetch_add(1, Ordering::Relaxed);
        self.metrics.claim_latency.record(started.elapsed());
        Ok(Some(TaskSpec {
            task_id: task.id,
            lease: task.attempts,
            lease_deadline_ms: task.lease_deadline_ms,
            shard: task.shard,
            shard_sha256: shard.sha256,
            offset: task.offset,
            tokens: task.tokens,
            mode: self.shape.mode,
            batch_size: self.shape.batch_size,
            seq_len: self.shape.seq_len,
            weights_version: weights.version,
            weights_sha256: weights.sha256,
            packing: self.shape.packing,
            schedule_step,
            weights_url,
            shard_url,
        }))
    }

    fn heartbeat(&self, worker: &str, hb: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        let started = Instant::now();
        let record = self.require_worker(worker)?;
        let now = now_ms();
        self.store.touch_worker(worker, now, hb.draining)?;
        let mut reply =
            HeartbeatReply { lease_valid: false, lease_deadline_ms: 0, weight_version: 0 };
        if let Some(task) = hb.task {
            if hb.hand_back {
                // Only the lease's holder may give it back; anyone else would drop another
                // worker's task from the round.
                if !self.store.release(task, worker)? {
                    return Err(ApiError::Forbidden(format!(
                        "task {} lease {} is not held by `{worker}`; only its holder can hand \
                         it back",
                        task.task_id, task.lease
                    )));
                }
                lock(&self.model, "model")?.round.forget(task);
                tracing::info!(task = task.task_id, worker, "task handed back");
            } else if let Some(t) = self.store.task(task.task_id)? {
                let deadline =
                    now + self.lease_ms(t.tokens, self.plausible_tps(record.throughput()));
                reply.lease_valid = self.store.renew_lease(task, worker, deadline)?;
                reply.lease_deadline_ms = deadline;
            }
        }
        reply.weight_version = self.version();
        self.metrics.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.metrics.heartbeat_latency.record(started.elapsed());
        Ok(reply)
    }

    fn upload(&self, worker: &str, upload: UpdateUpload) -> Result<UploadReceipt, ApiError> {
        let task_ref = upload.task;
        let task = self
            .store
            .task(task_ref.task_id)?
            .ok_or_else(|| ApiError::NotFound(format!("task {}", task_ref.task_id)))?;
        if task.worker.as_deref() != Some(worker) {
            return Err(ApiError::Forbidden(format!(
                "task {} is not leased to `{worker}`",
                task.id
            )));
        }
        if task.state == bitnet_framework::coordinator_store::TaskState::Done
            && task.attempts == task_ref.lease
        {
            return Ok(UploadReceipt {
                accepted: true,
                applied_version: Some(task.applied_version),
                staleness: 0,
                lr_scale: 0.0,
                reason: Some("duplicate upload: already applied".into()),
            });
        }
        if task.state != bitnet_framework::coordinator_store::TaskState::Assigned
            || task.attempts != task_ref.lease
        {
            return Err(ApiError::Conflict(bitnet_framework::coordinator_store::queue::refusal(
                &task, task_ref, worker,
            )));
        }
        if upload.payload.len() as u64 > self.upload_limit {
            return Err(ApiError::TooLarge(format!(
                "update of {} bytes exceeds the limit of {}",
                upload.payload.len(),
                self.upload_limit
            )));
        }
        if !upload.loss.is_finite() {
            return Err(ApiError::Invalid("reported loss is not finite".into()));
        }
        // The task says how many tokens its update covers; a worker does not get to.
        if upload.tokens != task.tokens {
            return Err(ApiError::Invalid(format!(
                "the upload reports {} tokens but task {} holds {}",
                upload.tokens, task.id, task.tokens
            )));
        }
        if !(upload.seconds.is_finite() && upload.seconds >= 0.0) {
            return Err(ApiError::Invalid(format!(
                "reported seconds {} is not a finite, non-negative number",
                upload.seconds
            )));
        }
        let started = Instant::now();
        let update = self.codec.decode(&self.layout, &upload.payload).map_err(|e| {
            self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            ApiError::Invalid(e.to_string())
        })?;
        let decoded = started.elapsed();
        if update.len() != self.layout.total_params() {
            return Err(ApiError::Invalid(format!(
                "update has {} values, the model {}",
                update.len(),
                self.layout.total_params()
            )));
        }
        let bound = self.settings.max_update_abs as f32;
        if let Some((i, v)) = first_beyond(&update, bound) {
            self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Invalid(format!(
                "update value {i} is {v}, beyond coordinator.max_update_abs = {bound}"
            )));
        }
        let mut m = lock(&self.model, "model")?;
        if self.stopping.load(Ordering::SeqCst) {
            return Err(ApiError::Unavailable("coordinator is shutting down".into()));
        }
        if upload.base_version > m.version {
            return Err(ApiError::Conflict(format!(
                "update computed on version {} but the coordinator is at {}",
                upload.base_version, m.version
            )));
        }
        let staleness = m.version - upload.base_version;
        let scale = match self.staleness.decide(staleness) {
            StalenessDecision::Accept { scale } => scale,
            StalenessDecision::Reject { reason } => {
                drop(m);
                return self.reject(worker, task_ref, &upload, staleness, reason);
            }
        };
        if m.round.holds(task_ref) {
            return Ok(UploadReceipt {
                accepted: true,
                applied_version: None,
                staleness,
                lr_scale: scale,
                reason: Some("duplicate upload: already waiting in the open round".into()),
            });
        }
        // Re-check and extend the lease under the model lock, so the sweeper cannot hand the
        // task to someone else while its update waits in the round or is being applied.
        let hold = now_ms()
            + secs_to_ms(self.settings.min_lease_secs.max(60.0) + self.settings.round_wait_secs);
        if !self.store.renew_lease(task_ref, worker, hold)? {
            return Err(ApiError::Conflict(format!(
                "lease {} of task {} expired before the update could be applied",
                task_ref.lease, task_ref.task_id
            )));
        }
        let entry = Entry {
            task: task_ref,
            worker: worker.into(),
            loss: upload.loss,
            tokens: upload.tokens,
            seconds: upload.seconds,
            staleness,
            scale,
        };
        m.round.add(entry, update);
        let applied = if self.round_due(&m) { Some(self.apply_round(&mut m)?) } else { None };
        let (version, missing) = (m.version, m.round.missing());
        drop(m);
        self.metrics.decode_latency.record(decoded);
        self.metrics.apply_latency.record(started.elapsed());
        match applied {
            Some(a) => {
                self.record_applied(&a);
                tracing::debug!(
                    task = task_ref.task_id,
                    worker,
                    version = a.version,
                    staleness,
                    "applied"
                );
                Ok(UploadReceipt {
                    accepted: true,
                    applied_version: Some(a.version),
                    staleness,
                    lr_scale: scale,
                    reason: None,
                })
            }
            None => Ok(UploadReceipt {
                accepted: true,
                applied_version: None,
                staleness,
                lr_scale: scale,
                reason: Some(format!(
                    "waiting in the round on version {version} for {missing} more update(s)"
                )),
            }),
        }
    }

    fn logs(&self, worker: &str, mut records: Vec<LogRecord>) -> Result<(), ApiError> {
        self.require_worker(worker)?;
        if records.len() > MAX_LOG_BATCH {
            return Err(ApiError::TooLarge(format!(
                "{} log records in one batch; the limit is {MAX_LOG_BATCH}",
                records.len()
            )));
        }
        self.log_quota.take(worker, records.len() as u64, now_ms())?;
        // Retention goes by age: a worker's clock may not date its records into the future.
        let now = now_ms();
        for r in &mut records {
            r.ts_ms = r.ts_ms.min(now);
        }
        self.store.append_logs(worker, &records)?;
        Ok(())
    }

    fn weights(&self, version: u64) -> Result<Blob, ApiError> {
        let blob = self.served_weights(version)?;
        // Egress as handed to the transport (a Range request counts the whole blob).
        self.metrics.served_weight_bytes.fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
        Ok(blob)
    }

    fn corpus(&self, shard: &str) -> Result<Blob, ApiError> {
        let blob = self.corpus.shard(shard)?;
        self.metrics.served_shard_bytes.fetch_add(blob.bytes.len() as u64, Ordering::Relaxed);
        Ok(blob)
    }

    fn status(&self) -> Result<StatusReport, ApiError> {
        let workers = self.store.worker_counts()?;
        let (version, recent_loss, tokens_per_sec) = {
            let m = lock(&self.model, "model")?;
            let n = m.recent.len();
            let loss = (n > 0).then(|| m.recent.iter().map(|r| r.loss).sum::<f32>() / n as f32);
            (m.version, loss, recent_rate(&m.recent, workers.active))
        };
        Ok(StatusReport {
            weight_version: version,
            snapshot_version: self.snapshot_version(),
            tasks: self.store.counts()?,
            workers,
            updates_applied: self.metrics.applied.load(Ordering::Relaxed),
            updates_rejected: self.metrics.rejected.load(Ordering::Relaxed),
            recent_loss,
            tokens_per_sec,
        })
    }

    fn metrics(&self) -> String {
        let status = self.status().ok();
        self.metrics.render(status.as_ref())
    }

    fn upload_limit(&self) -> Option<u64> {
        Some(self.upload_limit)
    }

    fn claim_would_wait(&self, worker: &str, waker: &std::task::Waker) -> bool {
        self.settings.sync_rounds && self.claim_gate.would_wait(worker, Some(waker))
    }
}

/// The first value of `values` whose magnitude exceeds `bound`, with its index. Blocks are
/// scanned branch-free (so the scan vectorises) and only a block that holds one is searched.
fn first_beyond(values: &[f32], bound: f32) -> Option<(usize, f32)> {
    const BLOCK: usize = 4096;
    values.chunks(BLOCK).enumerate().find_map(|(b, block)| {
        if !block.iter().fold(false, |any, v| any | (v.abs() > bound)) {
            return None;
        }
        block.iter().position(|v| v.abs() > bound).map(|i| (b * BLOCK + i, block[i]))
    })
}

impl Coordinator {
    /// Weights of `version` (`u64::MAX`: the newest), if still served.
    fn served_weights(&self, version: u64) -> Result<Blob, ApiError> {
        if version != u64::MAX
            && let Some(s) =
                lock(&self.served, "served")?.iter().find(|s| s.blob.version == version)
        {
            return Ok(s.blob.clone());
        }
        let current = self.current_blob()?.blob;
        if version == u64::MAX || current.version == version {
            Ok(current)
        } else {
            Err(ApiError::NotFound(format!(
                "weight version {version} is no longer served; the newest is {}",
                current.version
            )))
        }
    }

    /// `tokens_per_sec` as a worker reported it, clamped to what the model can plausibly run
    /// (`coordinator.max_worker_tokens_per_sec`); non-finite or negative reads as 0.
    pub(super) fn plausible_tps(&self, tokens_per_sec: f64) -> f64 {
        if tokens_per_sec.is_finite() { tokens_per_sec.clamp(0.0, self.max_tps) } else { 0.0 }
    }

    pub(super) fn require_worker(&self, worker: &str) -> Result<WorkerRecord, ApiError> {
        self.store
            .worker(worker)?
            .ok_or_else(|| ApiError::Forbidden(format!("worker `{worker}` has not registered")))
    }

    pub(super) fn reject(
        &self,
        worker: &str,
        task: TaskRef,
        upload: &UpdateUpload,
        staleness: u64,
        reason: String,
    ) -> Result<UploadReceipt, ApiError> {
        self.store.release(task, worker)?;
        self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
        self.store.record_telemetry(&TaskTelemetry {
            task_id: task.task_id,
            worker: worker.into(),
            loss: upload.loss,
            tokens: upload.tokens,
            tokens_per_sec: rate(upload.tokens, upload.seconds),
            staleness,
            accepted: false,
            version: 0,
            ts_ms: now_ms(),
        })?;
        tracing::info!(task = task.task_id, worker, staleness, %reason, "update rejected");
        Ok(UploadReceipt {
            accepted: false,
            applied_version: None,
            staleness,
            lr_scale: 0.0,
            reason: Some(reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::first_beyond;

    #[test]
    fn first_beyond_finds_the_first_value_over_the_bound_in_any_block() {
        let mut v = vec![0.5f32; 10_000];
        assert_eq!(first_beyond(&v, 1.0), None);
        v[9_999] = -3.0;
        v[4_097] = 2.0;
        assert_eq!(first_beyond(&v, 1.0), Some((4_097, 2.0)));
        v[4_095] = f32::INFINITY;
        assert_eq!(first_beyond(&v, 1.0), Some((4_095, f32::INFINITY)));
        assert_eq!(first_beyond(&v[..4_095], 1.0), None);
        // NaN is no larger than any bound (the decoder refuses non-finite scales first).
        assert_eq!(first_beyond(&[f32::NAN], 1.0), None);
    }
}
