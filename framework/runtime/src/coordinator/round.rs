//! Synchronous rounds: the updates computed on one weight version are averaged into a single
//! optimizer step.
//!
//! Applying every update on arrival (fully asynchronous SGD) makes each update stale by about
//! the number of other workers, and staleness costs accuracy: measured on TruckMate small, an
//! update one version stale raised the validation loss after 100 steps from 1.37 to 2.29. A
//! round instead collects the updates of every task leased on the current version, averages
//! them (weighted by tokens, so the result is the mean gradient over all the round's tokens, as
//! one large batch would give) and takes one optimizer step. DiLoCo's outer step is defined this
//! way too: on the average of the workers' pseudo-gradients.
//!
//! This type only accumulates; the coordinator decides when a round closes (every member
//! reported, or the round waited long enough) and applies it under its model lock.

use bitnet_framework::protocol::TaskRef;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

/// Which workers' updates wait in the open round, readable without the model lock, and the
/// wakers of the asynchronous claims waiting for that round to close.
///
/// A worker whose update waits in the round cannot get its next task before the round closes.
/// An async transport parks such a claim on a [`Waker`] instead of a thread; the round wakes
/// it in the same critical section that empties it, so a claim is answered as soon as the
/// weights it needs exist, not at the next tick of a polling timer (which used to add half its
/// 20-ms period to every round). The set mirrors [`Round`]'s entries and is only changed by
/// [`Round::add`] and [`Round::finish`], under the model lock.
#[derive(Default)]
pub struct ClaimGate {
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    /// Workers with an update in the open round.
    waiting: HashSet<String>,
    /// One waker per waiting claim (the newest poll's).
    wakers: HashMap<String, Waker>,
}

impl ClaimGate {
    fn state(&self) -> MutexGuard<'_, GateState> {
        // The state is two sets updated in single statements; a panic elsewhere while it was
        // held leaves nothing half-done.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `worker`'s claim must wait for the open round; if so and `waker` is given, it
    /// is woken when the round closes.
    pub fn would_wait(&self, worker: &str, waker: Option<&Waker>) -> bool {
        let mut state = self.state();
        let wait = state.waiting.contains(worker);
        if let (true, Some(w)) = (wait, waker) {
            match state.wakers.get_mut(worker) {
                Some(old) if old.will_wake(w) => {}
                Some(old) => old.clone_from(w),
                None => {
                    state.wakers.insert(worker.to_string(), w.clone());
                }
            }
        }
        wait
    }

    fn join(&self, worker: &str) {
        let mut state = self.state();
        if !state.waiting.contains(worker) {
            state.waiting.insert(worker.to_string());
        }
    }

    fn close(&self) {
        let wakers = {
            let mut state = self.state();
            state.waiting.clear();
            std::mem::take(&mut state.wakers)
        };
        for w in wakers.into_values() {
            w.wake();
        }
    }
}

/// One update waiting in a round.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Task and lease.
    pub task: TaskRef,
    /// Worker that computed it.
    pub worker: String,
    /// Mean training loss over the task.
    pub loss: f32,
    /// Tokens trained on (the update's weight in the average).
    pub tokens: u64,
    /// Worker's compute seconds.
    pub seconds: f64,
    /// Versions between the update's base and the version it joined the round on.
    pub staleness: u64,
    /// The staleness policy's learning-rate scale.
    pub scale: f32,
}

/// The open round: a token-weighted sum of updates plus the tasks still expected.
#[derive(Default)]
pub struct Round {
    /// `sum(tokens_i * update_i)`, or, while only one update carries tokens (`single`), that
    /// update as it came: a one-update round (one worker, or `sync_rounds = false`) then costs
    /// no pass over the arena and steps on the update exactly. Empty between rounds.
    sum: Vec<f32>,
    single: bool,
    /// `sum(tokens_i)`.
    tokens: u64,
    /// `sum(tokens_i * scale_i)`.
    scaled: f64,
    entries: Vec<Entry>,
    /// Tasks leased on this round's version that have not reported: task id to lease.
    members: HashMap<u64, u64>,
    opened: Option<Instant>,
    /// Rounds closed so far (waiters compare it to see that theirs closed).
    generation: u64,
    /// The entries' workers, for claims that wait without the model lock.
    gate: Arc<ClaimGate>,
}

/// What a closed round hands to the optimizer.
#[derive(Debug)]
pub struct Closed<'a> {
    /// The token-weighted mean update, or `None` when no update carried tokens.
    pub update: Option<&'a [f32]>,
    /// Token-weighted mean of the staleness scales.
    pub lr_scale: f32,
    /// Tokens the step covers.
    pub tokens: u64,
}

impl Round {
    /// Expects an update for `task` (leased on this round's version).
    pub fn expect(&mut self, task: TaskRef) {
        self.members.insert(task.task_id, task.lease);
    }

    /// Stops expecting `task` (handed back, lease lost); a newer lease of the same task stays.
    pub fn forget(&mut self, task: TaskRef) {
        if self.members.get(&task.task_id) == Some(&task.lease) {
            self.members.remove(&task.task_id);
        }
    }

    /// Tasks still expected, as (task id, lease).
    pub fn members(&self) -> impl Iterator<Item = TaskRef> + '_ {
        self.members.iter().map(|(&task_id, &lease)| TaskRef { task_id, lease })
    }

    /// Whether `task` already has its update in this round.
    pub fn holds(&self, task: TaskRef) -> bool {
        self.entries.iter().any(|e| e.task == task)
    }

    /// The gate that mirrors this round's workers (shared: read without the model lock).
    pub fn gate(&self) -> Arc<ClaimGate> {
        Arc::clone(&self.gate)
    }

    /// Whether `worker` has an update in this round.
    pub fn has_update_from(&self, worker: &str) -> bool {
        self.entries.iter().any(|e| e.worker == worker)
    }

    /// Updates waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no update waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The updates waiting in the round, in arrival order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Tokens of the updates waiting (0: closing takes no step).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Tasks still expected.
    pub fn missing(&self) -> usize {
        self.members.len()
    }

    /// When the first waiting update arrived.
    pub fn opened(&self) -> Option<Instant> {
        self.opened
    }

    /// Rounds closed so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Adds `update` (weighted by `entry.tokens`). The caller has checked its length against
    /// the layout.
    pub fn add(&mut self, entry: Entry, update: Vec<f32>) {
        if entry.tokens > 0 {
            if self.tokens == 0 {
                self.sum = update;
                self.single = true;
            } else {
                let w = entry.tokens as f32;
                if self.single {
                    // Weigh the first update and add the second in one pass over the arena.
                    let w0 = self.tokens as f32;
                    for (s, u) in self.sum.iter_mut().zip(&update) {
                        *s = *s * w0 + w * u;
                    }
                    self.single = false;
                } else {
                    for (s, u) in self.sum.iter_mut().zip(&update) {
                        *s += w * u;
                    }
                }
            }
            self.tokens += entry.tokens;
            self.scaled += entry.tokens as f64 * f64::from(entry.scale);
        }
        self.members.remove(&entry.task.task_id);
        self.opened.get_or_insert_with(Instant::now);
        self.gate.join(&entry.worker);
        self.entries.push(entry);
    }

    /// Turns the sum into the mean and returns it; call [`Self::finish`] after the step.
    pub fn close(&mut self) -> Closed<'_> {
        if self.tokens == 0 {
            return Closed { update: None, lr_scale: 1.0, tokens: 0 };
        }
        if !self.single {
            let inv = 1.0 / self.tokens as f32;
            self.sum.iter_mut().for_each(|s| *s *= inv);
        }
        Closed {
            update: Some(&self.sum),
            lr_scale: (self.scaled / self.tokens as f64) as f32,
            tokens: self.tokens,
        }
    }

    /// Empties the round for the next version and returns its entries. Members are dropped:
    /// tasks leased on the old version are no longer waited for (their updates arrive stale).
    pub fn finish(&mut self) -> Vec<Entry> {
        // Release the arena-sized buffer between rounds; the next round's first update is
        // moved in.
        self.sum = Vec::new();
        self.single = false;
        self.tokens = 0;
        self.scaled = 0.0;
        self.members.clear();
        self.opened = None;
        self.generation += 1;
        self.gate.close();
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(task_id: u64, worker: &str, tokens: u64, scale: f32) -> Entry {
        Entry {
            task: TaskRef { task_id, lease: 1 },
            worker: worker.into(),
            loss: 1.0,
            tokens,
            seconds: 1.0,
            staleness: 0,
            scale,
        }
    }

    #[test]
    fn the_step_is_the_token_weighted_mean() {
        let mut r = Round::default();
        r.expect(TaskRef { task_id: 1, lease: 1 });
        r.expect(TaskRef { task_id: 2, lease: 1 });
        r.add(entry(1, "a", 100, 1.0), vec![1.0, 2.0]);
        assert_eq!(r.missing(), 1);
        assert!(r.has_update_from("a") && !r.has_update_from("b"));
        r.add(entry(2, "b", 300, 0.5), vec![5.0, -2.0]);
        assert_eq!(r.missing(), 0);
        let closed = r.close();
        assert_eq!(closed.tokens, 400);
        assert_eq!(closed.update, Some(&[4.0f32, -1.0][..]));
        assert!((closed.lr_scale - 0.625).abs() < 1e-6);
        let entries = r.finish();
        assert_eq!(entries.len(), 2);
        assert_eq!(r.generation(), 1);
        assert!(r.is_empty() && r.opened().is_none());
        // The next round starts from zero.
        r.add(entry(3, "a", 10, 1.0), vec![3.0, 3.0]);
        assert_eq!(r.close().update, Some(&[3.0f32, 3.0][..]));
    }

    #[test]
    fn a_round_of_tokenless_updates_takes_no_step() {
        let mut r = Round::default();
        r.add(entry(1, "a", 0, 1.0), vec![1.0]);
        assert!(r.close().update.is_none());
        assert_eq!(r.finish().len(), 1);
    }

    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_claim_is_woken_when_its_round_closes() {
        let mut r = Round::default();
        let gate = r.gate();
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(Arc::clone(&count));
        assert!(!gate.would_wait("a", Some(&waker)), "no update from a yet");
        r.add(entry(1, "a", 10, 1.0), vec![1.0; 2]);
        assert!(gate.would_wait("a", Some(&waker)) && !gate.would_wait("b", Some(&waker)));
        // Polled again with the same waker: registered once, woken once.
        assert!(gate.would_wait("a", Some(&waker)));
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 0);
        r.close();
        r.finish();
        assert_eq!(count.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(!gate.would_wait("a", None), "the next round starts empty");
    }

    #[test]
    fn forgotten_members_are_not_waited_for() {
        let mut r = Round::default();
        r.expect(TaskRef { task_id: 7, lease: 2 });
        assert_eq!(r.members().collect::<Vec<_>>(), vec![TaskRef { task_id: 7, lease: 2 }]);
        r.forget(TaskRef { task_id: 7, lease: 1 });
        assert_eq!(r.missing(), 1, "an older lease does not remove the current one");
        r.forget(TaskRef { task_id: 7, lease: 2 });
        assert_eq!(r.missing(), 0);
    }
}
