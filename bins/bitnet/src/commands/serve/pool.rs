//! A fixed pool of inference models, one per OS thread, behind one bounded queue.
//!
//! Each model runs on its own thread (the kernels' products run on that thread alone) and takes
//! the utterances waiting in the queue when it is free, up to `decode_batch` of them, first come
//! first served, and decodes them together: each step runs the next position of every unfinished
//! one through each layer as one batch of rows (each with its own key/value cache slot), so the
//! weights are read once per step for all of them. Every answer is the one its utterance gets
//! alone. Utterances that arrive while a model decodes wait for the next free model. Admission is
//! counted in utterances: a request of `n` utterances takes `n` places or is refused whole
//! ([`PoolFull`]), so the pool never holds more than `capacity` utterances, decoding or waiting.

use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_truckmate::answer::{Answer, ClassifyError, classify_batch};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
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
                    let wave = decode_batch.clamp(1, model.slots().max(1));
                    loop {
                        // The lock is held only while taking jobs, never while decoding: the
                        // first job is waited for, the others are those already queued.
                        let jobs = {
                            let queue = receiver.lock().unwrap_or_else(PoisonError::into_inner);
                            let Ok(first) = queue.recv() else { break };
                            let mut jobs = vec![first];
                            jobs.extend(
                                std::iter::from_fn(|| queue.try_recv().ok()).take(wave - 1),
                            );
                            jobs
                        };
                        let _places: Vec<Place> =
                            jobs.iter().map(|_| Place(Arc::clone(&held))).collect();
                        let utterances: Vec<&str> =
                            jobs.iter().map(|j| j.utterance.as_str()).collect();
                        let answers = classify_batch(
                            model.as_mut(),
                            d.tokenizer.as_ref(),
                            &utterances,
                            d.seq_len,
                            d.threshold,
                        );
                        for (job, answer) in jobs.into_iter().zip(answers) {
                            // The client may have gone; its answer is dropped.
                            let _ = job.reply.send(answer);
                        }
                    }
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
