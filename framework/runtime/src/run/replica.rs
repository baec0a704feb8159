//! Coordinator replicas: several `bitnet coordinator` processes share one store (which elects
//! a leader, see [`Leadership`]) and one weight store. The leader runs the coordinator as a
//! lone one does; the followers serve logins and relay the rest of the protocol to it, and one
//! of them takes over, from the snapshot the store names, when the leader's lease expires.
//!
//! A replica's life: [`Replica::follow`] serves as a follower until it wins the lease;
//! [`Replica::lead`] fences the store with the new epoch, renews the lease from a thread of its
//! own, recovers and serves the coordinator. A leader that fails to renew in time stops at
//! once ([`Leading::lost`]): its store commits are already refused by the fence.

use super::assemble::build_transport;
use super::service::{CoordinatorService, ServiceError};
use crate::config::RunConfig;
use crate::coordinator::{Coordinator, Corpus};
use bitnet_framework::coordinator_store::{CoordinatorStore, Lease, StoreFailure};
use bitnet_framework::protocol::{
    ApiError, Blob, CoordinatorApi, Heartbeat, HeartbeatReply, LogRecord, Registered, Registration,
    StatusReport, TaskSpec, UpdateUpload, UploadReceipt,
};
use bitnet_framework::registry::Registry;
use bitnet_framework::transport::{LeaderLocator, ServerHandle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a follower's relay finds the leader: refreshed by [`Replica::follow`]'s loop, so a
/// relayed request costs no database round trip.
struct Directory {
    leader: Mutex<Option<String>>,
    ca: Option<String>,
}

impl LeaderLocator for Directory {
    fn leader_endpoint(&self) -> Option<String> {
        self.leader.lock().ok().and_then(|l| l.clone())
    }
    fn ca_certificate(&self) -> Option<String> {
        self.ca.clone()
    }
}

/// The API a follower's server holds: it relays every protocol call, so nothing reaches this.
struct Following;

fn following<T>() -> Result<T, ApiError> {
    Err(ApiError::Unavailable(
        "this coordinator replica follows; its server relays to the leader: retry".into(),
    ))
}

impl CoordinatorApi for Following {
    fn register(&self, _: &str, _: Registration) -> Result<Registered, ApiError> {
        following()
    }
    fn claim(&self, _: &str) -> Result<Option<TaskSpec>, ApiError> {
        following()
    }
    fn heartbeat(&self, _: &str, _: Heartbeat) -> Result<HeartbeatReply, ApiError> {
        following()
    }
    fn upload(&self, _: &str, _: UpdateUpload) -> Result<UploadReceipt, ApiError> {
        following()
    }
    fn logs(&self, _: &str, _: Vec<LogRecord>) -> Result<(), ApiError> {
        following()
    }
    fn weights(&self, _: u64) -> Result<Blob, ApiError> {
        following()
    }
    fn corpus(&self, _: &str) -> Result<Blob, ApiError> {
        following()
    }
    fn status(&self) -> Result<StatusReport, ApiError> {
        following()
    }
    fn metrics(&self) -> String {
        String::new()
    }
}

/// Why a replica stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The store cannot elect a leader.
    #[error(
        "coordinator.leader_lease_secs > 0 (replicas) needs a coordinator store that elects a \
         leader: coordinator_store.type = \"postgres\" (this run's is \"{0}\")"
    )]
    NoElection(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreFailure),
    /// Starting the follower's server or the coordinator failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The CA file could not be read.
    #[error("reading coordinator.ca_file {path}: {source}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// One replica of a replicated coordinator.
pub struct Replica {
    store: Arc<dyn CoordinatorStore>,
    holder: String,
    ttl: Duration,
    directory: Arc<Directory>,
}

/// A unique name for this process among the replicas: host, process id and a random suffix
/// (a restarted process on the same host gets a new one).
fn holder_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "replica".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

impl Replica {
    /// Opens the run's store (which must elect a leader) as a replica of `config`.
    pub fn open(config: &RunConfig, registry: &Registry) -> Result<Self, ReplicaError> {
        let store = super::assemble::build_store(config, registry).map_err(ServiceError::from)?;
        if store.leadership().is_none() {
            return Err(ReplicaError::NoElection(config.coordinator_store.kind.clone()));
        }
        let ca = match &config.coordinator.ca_file {
            Some(f) => {
                let path = if f.is_absolute() { f.clone() } else { config.run.dir.join(f) };
                Some(
                    std::fs::read_to_string(&path)
                        .map_err(|source| ReplicaError::Ca { path, source })?,
                )
            }
            None => None,
        };
        Ok(Self {
            store,
            holder: holder_name(),
            ttl: Duration::from_secs_f64(config.coordinator.leader_lease_secs),
            directory: Arc::new(Directory { leader: Mutex::new(None), ca }),
        })
    }

    /// This replica's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The shared store.
    pub fn store(&self) -> &Arc<dyn CoordinatorStore> {
        &self.store
    }

    fn election(&self) -> &dyn bitnet_framework::coordinator_store::Leadership {
        // `open` checked that the store elects.
        match self.store.leadership() {
            Some(l) => l,
            None => unreachable!("Replica::open checks that the store elects a leader"),
        }
    }

    /// How often a follower tries the lease (and refreshes where the leader is).
    fn poll(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// Serves as a follower (logins here, the rest relayed to the leader) until this replica
    /// wins the lease, which it returns, already being renewed; `None` when `stop` is set
    /// first.
    pub fn follow(
        &self,
        config: &RunConfig,
        registry: &Registry,
        stop: &AtomicBool,
    ) -> Result<Option<Won>, ReplicaError> {
        let election = self.election();
        // Take a free lease before serving anything: the first replica of a run leads at once.
        let endpoint = advertised(config, None);
        if let Some(lease) = election.acquire(&self.holder, &endpoint, self.ttl)? {
            return Ok(Some(self.won(lease)));
        }
        let api: Arc<dyn CoordinatorApi> = Arc::new(Following);
        let mut ctx = crate::auth::serve_context(api, Arc::clone(&self.store));
        ctx.relay = Some(Arc::clone(&self.directory) as Arc<dyn LeaderLocator>);
        let server = build_transport(config, registry)
            .map_err(ServiceError::from)?
            .serve(ctx)
            .map_err(ServiceError::Transport)?;
        let endpoint = advertised(config, Some(server.as_ref()));
        tracing::info!(holder = %self.holder, %endpoint, "following");
        let mut last_leader = None;
        let won = loop {
            if stop.load(Ordering::SeqCst) {
                break None;
            }
            match election.acquire(&self.holder, &endpoint, self.ttl) {
                // Renewing starts at once: the follower's server may take a while to drain.
                Ok(Some(lease)) => break Some(self.won(lease)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "trying the leader lease"),
            }
            match election.leader() {
                Ok(leader) => {
                    // An empty endpoint: the leader won but is still recovering (it records
                    // where it serves once it does); requests get 503 until then.
                    let at = leader
                        .filter(|l| l.holder != self.holder && !l.endpoint.is_empty())
                        .map(|l| l.endpoint);
                    if at != last_leader {
                        tracing::info!(leader = ?at, "leader changed");
                        last_leader.clone_from(&at);
                    }
                    if let Ok(mut l) = self.directory.leader.lock() {
                        *l = at;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking up the leader"),
            }
            std::thread::sleep(self.poll());
        };
        server.shutdown();
        Ok(won)
    }

    fn won(&self, lease: Lease) -> Won {
        let renewer = Renewer::start(Arc::clone(&self.store), lease.clone(), self.ttl);
        Won { lease, renewer, at: Instant::now() }
    }

    /// Leads with the lease `won`: fences the store with its epoch, recovers and serves the
    /// coordinator, and records where it serves in the lease.
    pub fn lead(
        &self,
        config: &RunConfig,
        registry: &Registry,
        corpus: Arc<dyn Corpus>,
        seed: bool,
        won: Won,
    ) -> Result<Leading, ReplicaError> {
        let Won { lease, renewer, at: won } = won;
        self.election().fence(lease.epoch);
        let service = match CoordinatorService::start_with_store(
            config,
            registry,
            corpus,
            seed,
            Arc::clone(&self.store),
        ) {
            Ok(s) => s,
            Err(e) => {
                renewer.stop(true, self.store.as_ref(), &lease);
                return Err(e.into());
            }
        };
        let endpoint = advertised(config, Some(service.server.as_ref()));
        // Re-acquiring a live lease as its holder renews it (same epoch) with the endpoint.
        match self.election().acquire(&self.holder, &endpoint, self.ttl) {
            Ok(Some(l)) if l.epoch == lease.epoch => {}
            other => {
                tracing::error!(?other, "the lease was lost while the coordinator recovered");
                renewer.lost.store(true, Ordering::SeqCst);
            }
        }
        tracing::info!(
            holder = %self.holder,
            epoch = lease.epoch,
            version = service.coordinator.version(),
            recovered_ms = won.elapsed().as_millis() as u64,
            %endpoint,
            "leading"
        );
        Ok(Leading { service, lease, renewer, store: Arc::clone(&self.store) })
    }
}

/// The URL other replicas reach this one at: `coordinator.advertise_url`, or where `server`
/// listens.
fn advertised(config: &RunConfig, server: Option<&dyn ServerHandle>) -> String {
    match (&config.coordinator.advertise_url, server) {
        (u, _) if !u.is_empty() => u.clone(),
        (_, Some(s)) => s.endpoint(),
        (_, None) => String::new(),
    }
}

/// Renews a lease every third of its length from a thread of its own.
struct Renewer {
    lost: Arc<AtomicBool>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Renewer {
    fn start(store: Arc<dyn CoordinatorStore>, lease: Lease, ttl: Duration) -> Self {
        let lost = Arc::new(AtomicBool::new(false));
        let stopping = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&lost), Arc::clone(&stopping));
        let thread = std::thread::Builder::new()
            .name("bitnet-lease".into())
            .spawn(move || renew_loop(store.as_ref(), &lease, ttl, &l, &s));
        match thread {
            Ok(t) => Self { lost, stopping, thread: Some(t) },
            Err(e) => {
                tracing::error!(error = %e, "cannot start the lease thread");
                lost.store(true, Ordering::SeqCst);
                Self { lost, stopping, thread: None }
            }
        }
    }

    /// Stops renewing; with `resign`, gives the lease up so a follower need not wait.
    fn stop(mut self, resign: bool, store: &dyn CoordinatorStore, lease: &Lease) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the lease thread panicked");
        }
        if resign
            && !self.lost.load(Ordering::SeqCst)
            && let Some(l) = store.leadership()
            && let Err(e) = l.resign(lease)
        {
            tracing::warn!(error = %e, "resigning the leader lease");
        }
    }
}

fn renew_loop(
    store: &dyn CoordinatorStore,
    lease: &Lease,
    ttl: Duration,
    lost: &AtomicBool,
    stopping: &AtomicBool,
) {
    let Some(election) = store.leadership() else {
        lost.store(true, Ordering::SeqCst);
        return;
    };
    let every = ttl / 3;
    let tick = Duration::from_millis(20).min(every);
    let mut renewed = Instant::now();
    let mut next = renewed + every;
    while !stopping.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(tick);
            continue;
        }
        let attempt = Instant::now();
        match election.renew(lease, ttl) {
            Ok(true) => {
                renewed = attempt;
                next = attempt + every;
            }
            Ok(false) => {
                tracing::error!(epoch = lease.epoch, "the leader lease expired or was taken over");
                lost.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                // The lease counts from the database's clock; ours says when it surely expired.
                if renewed.elapsed() >= ttl {
                    tracing::error!(error = %e, "the leader lease could not be renewed in time");
                    lost.store(true, Ordering::SeqCst);
                    return;
                }
                tracing::warn!(error = %e, "renewing the leader lease; retrying");
                next = Instant::now() + tick * 5;
            }
        }
    }
}

/// A lease just won, being renewed.
pub struct Won {
    /// The lease.
    pub lease: Lease,
    renewer: Renewer,
    at: Instant,
}

/// A replica that leads.
pub struct Leading {
    /// The coordinator it runs and its server.
    pub service: CoordinatorService,
    /// Its lease.
    pub lease: Lease,
    renewer: Renewer,
    store: Arc<dyn CoordinatorStore>,
}

impl Leading {
    /// Whether the lease was lost: the replica must stop leading at once (its store commits
    /// are refused already).
    pub fn lost(&self) -> bool {
        self.renewer.lost.load(Ordering::SeqCst)
    }

    /// Stops leading: the coordinator stops (taking its final snapshot while the lease still
    /// holds), then the lease is given up so a follower takes over without waiting for it to
    /// expire. A replica that lost the lease writes nothing more ([`Coordinator::abandon`]).
    /// Returns the stopped coordinator.
    pub fn stop(self) -> Arc<Coordinator> {
        let coordinator = if self.lost() { self.service.abandon() } else { self.service.stop() };
        self.renewer.stop(true, self.store.as_ref(), &self.lease);
        coordinator
    }
}
