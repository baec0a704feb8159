//! A fixed pool of inference models, one per OS thread, behind one bounded queue.
//!
//! Each model runs on its own thread (the kernels' products run on that thread alone) and
//! decodes up to `decode_batch` utterances together (continuous batching): before each step it
//! takes utterances waiting in the queue into its free places, first come first served; each step
//! runs the uncached positions of every utterance it holds (a new one's prompt, one position of
//! the others) through each layer as one batch of rows, each with its own key/value cache slot,
//! so the weights are read once per step for all of them; an utterance is answered as soon as it
//! finishes. Every answer is the one its utterance gets alone. Admission is counted in
//! utterances: a request of `n` utterances takes `n` places or is refused whole ([`PoolFull`]),
//! so the pool never holds more than `capacity` utterances, decoding or waiting.

use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_truckmate::answer::{Answer, ClassifyError, answer_decoded, prepare};
use bitnet_truckmate::confidence::{BatchDecoder, decode_alone};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError, mpsc};
use tokio::sync::oneshot;

/// The pool holds `capacity` utterances already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolFull {
    /// Its capacity.
    pub capacity: usize,
}

/// The reply for one utterance.
pub type Reply = oneshot::Receiver<Result<Answer, ClassifyError>>;

struct Job {
    utterance: String,
    reply: oneshot::Sender<Result<Answer, ClassifyError>>,
}

/// Releases one place of the pool when dropped (also when a model panics).
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the models decode with.
#[derive(Clone)]
pub struct Decoding {
    /// The models' tokenizer.
    pub tokenizer: Arc<dyn Tokenizer>,
    /// Their context length.
    pub seq_len: usize,
    /// Abstention threshold.
    pub threshold: f64,
}

/// The running pool.
pub struct ModelPool {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    held: Arc<AtomicUsize>,
    capacity: usize,
    models: usize,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl ModelPool {
    /// Starts one thread per model; at most `capacity` utterances are admitted at once, and a
    /// model decodes at most `decode_batch` (and at most its [`InferenceModel::slots`]) together.
    pub fn start(
        models: Vec<Box<dyn InferenceModel>>,
        decoding: Decoding,
        capacity: usize,
        decode_batch: usize,
    ) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let held = Arc::new(AtomicUsize::new(0));
        let count = models.len();
        let mut threads = Vec::with_capacity(count);
        for (i, mut model) in models.into_iter().enumerate() {
            let receiver = Arc::clone(&receiver);
            let held = Arc::clone(&held);
            let d = decoding.clone();
            threads.push(std::thread::Builder::new().name(format!("bitnet-model-{i}")).spawn(
                move || {
                    // This thread is the only worker of its own rayon pool, so the kernels'
                    // parallel products stay on it instead of waking the global pool, which
                    // every model thread would share.
                    let own =
                        rayon::ThreadPoolBuilder::new().num_threads(1).use_current_thread().build();
                    if let Err(e) = &own {
                        tracing::warn!("model thread {i}: no thread pool of its own ({e})");
                    }
                    decode(model.as_mut(), &d, &receiver, &held, decode_batch);
                },
            )?);
        }
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            held,
            capacity,
            models: count,
            threads: Mutex::new(threads),
        })
    }

    /// Queues `utterances` (all or none); their replies come in the same order.
    pub fn submit(&self, utterances: Vec<String>) -> Result<Vec<Reply>, PoolFull> {
        let n = utterances.len();
        let full = PoolFull { capacity: self.capacity };
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                (h + n <= self.capacity).then_some(h + n)
            })
            .map_err(|_| full)?;
        let sender = self.sender.lock().unwrap_or_else(PoisonError::into_inner);
        let mut replies = Vec::with_capacity(n);
        for (i, utterance) in utterances.into_iter().enumerate() {
            let (reply, receiver) = oneshot::channel();
            match sender.as_ref().map(|s| s.send(Job { utterance, reply })) {
                Some(Ok(())) => replies.push(receiver),
                // Shutting down: give back the places of the jobs not sent.
                _ => {
                    self.held.fetch_sub(n - i, Ordering::SeqCst);
                    return Err(full);
                }
            }
        }
        Ok(replies)
    }

    /// Utterances decoding or waiting now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Most utterances decoding or waiting at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Models (threads) in the pool.
    pub fn models(&self) -> usize {
        self.models
    }

    /// Refuses new work, lets the models finish what was queued, and joins their threads.
    pub fn shutdown(&self) {
        self.sender.lock().unwrap_or_else(PoisonError::into_inner).take();
        let threads =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("an inference thread panicked");
            }
        }
    }
}

/// What [`take_job`] found in the queue.
enum Take {
    Job(Job),
    /// No job now (or the queue busy, when not waiting).
    Nothing,
    /// The queue is closed.
    Closed,
}

/// The next job of the queue, waiting for one when `wait`. The lock is held only while taking a
/// job, never while decoding: a thread that waits holds it meanwhile, and one that does not
/// wait does not wait for the lock either (an idle thread is there to take the next job).
fn take_job(receiver: &Mutex<mpsc::Receiver<Job>>, wait: bool) -> Take {
    if wait {
        let queue = receiver.lock().unwrap_or_else(PoisonError::into_inner);
        return queue.recv().map_or(Take::Closed, Take::Job);
    }
    let queue = match receiver.try_lock() {
        Ok(queue) => queue,
        Err(TryLockError::WouldBlock) => return Take::Nothing,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
    };
    match queue.try_recv() {
        Ok(job) => Take::Job(job),
        Err(mpsc::TryRecvError::Empty) => Take::Nothing,
        Err(mpsc::TryRecvError::Disconnected) => Take::Closed,
    }
}

/// A model thread's loop: takes jobs into its free places between steps (waiting only when it
/// holds none), steps them together and answers each as it finishes, until the queue closes and
/// every job it holds is answered.
fn decode(
    model: &mut dyn InferenceModel,
    d: &Decoding,
    receiver: &Mutex<mpsc::Receiver<Job>>,
    held: &Arc<AtomicUsize>,
    decode_batch: usize,
) {
    let tok = d.tokenizer.as_ref();
    let mut decoder = BatchDecoder::new(&*model, tok, d.seq_len);
    let places = decode_batch.clamp(1, decoder.capacity());
    // The job of each decoder slot, with its place in the pool and its prompt.
    let mut jobs: Vec<Option<(Job, Place, Vec<u32>)>> =
        (0..decoder.capacity()).map(|_| None).collect();
    let mut open = true;
    loop {
        let mut holding = jobs.iter().filter(|j| j.is_some()).count();
        while open && holding < places {
            // A thread that holds no job waits for one; a thread that is decoding only takes
            // what is there.
            let job = match take_job(receiver, holding == 0) {
                Take::Job(job) => job,
                Take::Nothing => break,
                Take::Closed => {
                    open = false;
                    break;
                }
            };
            let place = Place(Arc::clone(held));
            match prepare(tok, &job.utterance, d.seq_len) {
                Ok(Some(prompt)) => {
                    let Ok(slot) = decoder.add(prompt.clone()) else {
                        unreachable!("fewer jobs than decoder slots")
                    };
                    jobs[slot] = Some((job, place, prompt));
                    holding += 1;
                }
                // The client may have gone; its answer is dropped.
                Ok(None) => drop(job.reply.send(Ok(Answer::abstain(0.0)))),
                Err(e) => drop(job.reply.send(Err(e))),
            }
        }
        if decoder.is_idle() {
            if open {
                continue;
            }
            return;
        }
        match decoder.step(model, tok) {
            Ok(finished) => {
                for (slot, decoded) in finished {
                    if let Some((job, _place, _)) = jobs[slot].take() {
                        let _ = job.reply.send(answer_decoded(tok, decoded, d.threshold));
                    }
                }
            }
            // The decoder dropped every sequence. One job gets the error; of several, which
            // one the model failed on is not known, so each is decoded again alone and gets its
            // own answer or error.
            Err(e) => {
                let mut held: Vec<_> = jobs.iter_mut().filter_map(Option::take).collect();
                if held.len() == 1 {
                    let (job, _place, _) = held.remove(0);
                    let _ = job.reply.send(Err(ClassifyError::Eval(e)));
                    continue;
                }
                for (job, _place, prompt) in held {
                    let decoded = decode_alone(model, tok, prompt, d.seq_len);
                    let _ = job.reply.send(answer_decoded(tok, decoded, d.threshold));
                }
            }
        }
    }
}
