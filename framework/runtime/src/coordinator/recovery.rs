//! Starting a coordinator: recovery from the newest valid snapshot, then the snapshot and
//! maintenance threads.

use super::*;

/// What recovery found at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovery {
    /// Version resumed from (0 = fresh start).
    pub version: u64,
    /// Snapshots refused as corrupt or unreadable, with the reason.
    pub skipped: Vec<(u64, String)>,
    /// Tasks returned to Pending.
    pub tasks_reset: u64,
}

impl Coordinator {
    /// Recovers from the newest valid snapshot (or starts at version 0 and writes one), returns
    /// lost work to the queue and starts the snapshot and maintenance threads.
    pub fn start(
        parts: CoordinatorParts,
        settings: CoordinatorSection,
        mut shape: TaskShape,
    ) -> Result<Arc<Self>, CoordinatorError> {
        let mut problems = settings.validate_for(&shape);
        if shape.mode == TrainMode::Diloco && !parts.weight_codec.is_lossless() {
            problems.push(lossy_diloco(parts.weight_codec.wire_id()));
        }
        if !problems.is_empty() {
            return Err(CoordinatorError::Config(problems.join("; ")));
        }
        let CoordinatorParts {
            layout,
            initial_params,
            mut optimizer,
            staleness,
            codec,
            weight_codec,
            snapshots,
            store,
            corpus,
        } = parts;
        shape.packing = corpus.packing();
        if shape.run_tokens == 0 {
            // One epoch: task sizing needs the run's length to keep its optimizer steps.
            shape.run_tokens = corpus.shards().iter().map(|s| s.tokens).sum();
        }
        let fingerprint = layout.fingerprint();
        let n = layout.total_params();
        if initial_params.len() != n {
            return Err(CoordinatorError::Config(format!(
                "initial parameters have {} values, the layout {n}",
                initial_params.len()
            )));
        }
        let comp = |e: &dyn std::fmt::Display| CoordinatorError::Component(e.to_string());
        let replicated = settings.leader_lease_secs > 0.0;
        let leadership = match (replicated, store.leadership()) {
            (false, _) => None,
            (true, Some(l)) => Some(l),
            (true, None) => {
                return Err(CoordinatorError::Config(
                    "coordinator.leader_lease_secs > 0 (replicas) needs a coordinator store \
                     that elects a leader: coordinator_store.type = \"postgres\""
                        .into(),
                ));
            }
        };
        // Replicas recover from the snapshot the store names as the newest recorded one, never
        // from a newer blob a deposed leader may have uploaded after it lost the lease.
        let head = match leadership {
            Some(l) => l.snapshot_head().map_err(|e| comp(&e))?,
            None => None,
        };
        let mut skipped = Vec::new();
        let mut resumed = None;
        let mut versions = snapshots.list_versions().map_err(|e| comp(&e))?;
        let newest_listed = versions.iter().map(|m| m.version).max().unwrap_or(0);
        versions.sort_by_key(|m| std::cmp::Reverse(m.version));
        if let Some(h) = &head {
            versions.retain(|m| m.version <= h.version);
        }
        for meta in versions {
            let attempt = snapshots
                .get_version(meta.version)
                .map_err(|e| e.to_string())
                .and_then(|b| match &head {
                    Some(h) if h.version == meta.version && sha256_hex(&b) != h.sha256 => {
                        Err("is not the snapshot the store recorded (SHA-256 differs)".to_string())
                    }
                    _ => Ok(b),
                })
                .and_then(|b| blob::decode_snapshot(&b, &fingerprint, n).map_err(|e| e.to_string()))
                .and_then(|s| {
                    if s.version == meta.version {
                        Ok(s)
                    } else {
                        Err(format!("holds version {}", s.version))
                    }
                });
            match attempt {
                Ok(snap) => match optimizer.load_state(snap.optimizer.clone()) {
                    Ok(()) => {
                        resumed = Some(snap);
                        break;
                    }
                    Err(e) => skipped.push((meta.version, e.to_string())),
                },
                Err(reason) => {
                    tracing::warn!(version = meta.version, %reason, "skipping unusable snapshot");
                    skipped.push((meta.version, reason));
                }
            }
        }
        let (params, mut version, ledger, write_initial) = match resumed {
            Some(s) => (s.params, s.version, s.ledger, false),
            None => (initial_params, 0, Vec::new(), true),
        };
        // A replica taking over numbers its versions past every version a deposed leader
        // reached (in a snapshot blob or a task's completion), so that no version names two
        // different sets of weights; read before the reset below forgets them.
        let newest_seen = match leadership {
            Some(l) => l.newest_task_version().map_err(|e| comp(&e))?.max(newest_listed),
            None => version,
        };
        let tasks_reset = store.reset_after_recovery(version).map_err(|e| comp(&e))?;
        // After the reset, the Done tasks are exactly the updates in the snapshot.
        let tokens_applied = store.counts().map_err(|e| comp(&e))?.done_tokens;
        if let Some(l) = leadership {
            if newest_seen > version || head.is_none() {
                // The state resumed from, under a version of this leader's own, recorded as
                // the head before anything is served.
                let state = optimizer.save_state();
                version = snapshots::publish_head(
                    snapshots.as_ref(),
                    l,
                    newest_seen.max(version) + u64::from(newest_seen > version),
                    |v| blob::encode_snapshot(v, &fingerprint, &params, &state, &ledger),
                )
                .map_err(|e| comp(&e))?;
            }
        } else if write_initial {
            let blob =
                blob::encode_snapshot(0, &fingerprint, &params, &optimizer.save_state(), &[]);
            match snapshots.put_version(0, &blob) {
                Ok(_) | Err(bitnet_framework::store::StoreError::Exists(_)) => {}
                Err(e) => return Err(comp(&e)),
            }
        }
        tracing::info!(version, tasks_reset, skipped = skipped.len(), "coordinator recovered");
        let (tx, rx) = mpsc::channel::<SnapshotJob>();
        let snapshot_version = Arc::new(AtomicU64::new(version));
        let abandoned = Arc::new(AtomicBool::new(false));
        let snapshot_thread = {
            let abandoned = Arc::clone(&abandoned);
            let snapshots = Arc::clone(&snapshots);
            let done = Arc::clone(&snapshot_version);
            let fp = fingerprint.clone();
            let keep = settings.keep_snapshots;
            let store = replicated.then(|| Arc::clone(&store));
            std::thread::Builder::new()
                .name("bitnet-snapshot".into())
                .spawn(move || {
                    for job in rx {
                        if abandoned.load(Ordering::SeqCst) {
                            tracing::info!(version = job.version, "snapshot dropped: abandoned");
                            continue;
                        }
                        let blob = blob::encode_snapshot(
                            job.version,
                            &fp,
                            &job.params,
                            &job.optimizer,
                            &job.ledger,
                        );
                        let written = match store.as_ref().and_then(|s| s.leadership()) {
                            Some(l) => snapshots::write_replicated(
                                snapshots.as_ref(),
                                l,
                                job.version,
                                &blob,
                            ),
                            None => match snapshots.put_version(job.version, &blob) {
                                Ok(_) | Err(bitnet_framework::store::StoreError::Exists(_)) => {
                                    Ok(())
                                }
                                Err(e) => Err(e.to_string()),
                            },
                        };
                        match written {
                            Ok(()) => {
                                done.fetch_max(job.version, Ordering::SeqCst);
                                tracing::debug!(version = job.version, "snapshot written");
                                prune_snapshots(snapshots.as_ref(), keep);
                            }
                            Err(e) => {
                                tracing::error!(version = job.version, error = %e, "snapshot failed")
                            }
                        }
                    }
                })
                .map_err(|e| comp(&e))?
        };
        let upload_limit = match codec.max_encoded_len(&layout) {
            Some(n) => settings.max_upload_bytes.min(n as u64 + UPLOAD_SLACK_BYTES),
            None => settings.max_upload_bytes,
        };
        let max_tps = match settings.max_worker_tokens_per_sec {
            t if t > 0.0 => t,
            _ => PLAUSIBLE_FLOPS / (6.0 * n.max(1) as f64),
        };
        let log_quota = quota::LogQuota::new(settings.log_records_per_minute);
        tracing::debug!(upload_limit, max_tps, "coordinator limits");
        let round = Round::default();
        let claim_gate = round.gate();
        let coordinator = Arc::new(Self {
            settings,
            shape,
            layout,
            fingerprint,
            store,
            corpus,
            codec,
            weight_codec,
            staleness,
            model: Mutex::new(ModelState {
                params,
                optimizer,
                version,
                updates_since_snapshot: 0,
                last_snapshot: Instant::now(),
                recent: VecDeque::new(),
                round,
                tokens_applied,
                ledger,
            }),
            round_closed: Condvar::new(),
            claim_gate,
            served: Mutex::new(VecDeque::new()),
            published: direct::Published::default(),
            encoding: Mutex::new(Vec::new()),
            snapshot_tx: Mutex::new(Some(tx)),
            snapshot_version,
            snapshots,
            snapshot_thread: Mutex::new(Some(snapshot_thread)),
            abandoned,
            maintenance: Mutex::new(None),
            stopping: Arc::new(AtomicBool::new(false)),
            metrics: Metrics::default(),
            recovery: Recovery { version, skipped, tasks_reset },
            upload_limit,
            max_tps,
            log_quota,
            validation: Mutex::new(VecDeque::new()),
        });
        let weak = Arc::downgrade(&coordinator);
        let stopping = Arc::clone(&coordinator.stopping);
        let every = Duration::from_secs_f64(coordinator.settings.sweep_every_secs);
        let handle = std::thread::Builder::new()
            .name("bitnet-maintenance".into())
            .spawn(move || {
                let tick = Duration::from_millis(50).min(every);
                let mut last = Instant::now();
                while !stopping.load(Ordering::SeqCst) {
                    std::thread::sleep(tick);
                    if last.elapsed() < every {
                        continue;
                    }
                    last = Instant::now();
                    let Some(c) = weak.upgrade() else { break };
                    c.maintain();
                }
            })
            .map_err(|e| comp(&e))?;
        *coordinator.maintenance.lock().map_err(|_| comp(&"maintenance lock poisoned"))? =
            Some(handle);
        coordinator.start_shard_publisher()?;
        Ok(coordinator)
    }
}
