//! Packs tokenized examples from shards into training windows.
//!
//! An *example* is the run of tokens from one `[BOS]` up to (not including) the next `[BOS]` or
//! the end of its shard; tokenized TruckMate examples are
//! `[BOS] [USER] utterance [INTENT] json [EOS]`.
//!
//! Each epoch, [`PackedLoader`] shuffles the examples it owns with a ChaCha8 generator seeded
//! from `(seed, epoch, stream)` (`stream` identifies the worker or shard assignment), then packs
//! them greedily, in that order, into windows of `seq_len` positions: an example starts a new
//! window when it does not fit in what is left of the current one, so every window starts at
//! `[BOS]`, no example is ever split, and the unused tail is `[PAD]` with target
//! [`IGNORE_INDEX`]. Targets are next-token ids inside each example; the last token of an example
//! (and, with [`LoaderOptions::mask_prompt`], every position before `[INTENT]`) has target
//! [`IGNORE_INDEX`]. Examples longer than `seq_len` cannot be packed and are skipped (counted by
//! [`PackedLoader::skipped_examples`]). Every example appears at most once per epoch.
//!
//! A [`Slice`] is `(shard, token offset, token count)` aligned to example boundaries: the unit
//! of data a coordinator hands to a worker. [`plan_slices`] cuts shards into slices; a loader
//! built from a set of slices only ever reads those tokens, so disjoint slices give disjoint
//! data.

use super::shard::ShardReader;
use super::{BatchBuffer, BatchSource, DataError, SourcePosition};
use bitnet_framework::model::IGNORE_INDEX;
use bitnet_framework::tokenizer::SpecialTokens;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// A run of whole examples inside one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slice {
    /// Index of the shard in the list the slices were planned over.
    pub shard: usize,
    /// First token (an example's `[BOS]`).
    pub offset: u64,
    /// Number of tokens (ends at an example boundary).
    pub count: u64,
}

/// One example's place in the shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Example {
    shard: u32,
    offset: u64,
    len: u32,
}

/// Offsets of every `[BOS]` in `shard`. A non-empty shard must start with `[BOS]`.
pub fn example_starts(shard: &ShardReader, bos: u32) -> Result<Vec<u64>, DataError> {
    let starts: Vec<u64> =
        (0..shard.len()).filter(|&i| shard.token(i) == bos).map(|i| i as u64).collect();
    if !shard.is_empty() && starts.first() != Some(&0) {
        return Err(DataError::Invalid {
            path: shard.path().display().to_string(),
            reason: format!("shard does not start with the [BOS] token (id {bos})"),
        });
    }
    Ok(starts)
}

/// Cuts every shard into consecutive slices of whole examples of at most `max_tokens` tokens
/// each (a single longer example gets a slice of its own). Slices are disjoint and cover every
/// token; they are listed shard by shard, in order.
pub fn plan_slices(
    shards: &[Arc<ShardReader>],
    bos: u32,
    max_tokens: u64,
) -> Result<Vec<Slice>, DataError> {
    let max_tokens = max_tokens.max(1);
    let mut out = Vec::new();
    for (si, shard) in shards.iter().enumerate() {
        let starts = example_starts(shard, bos)?;
        let end = shard.len() as u64;
        let mut slice_start: Option<u64> = None;
        for (k, &s) in starts.iter().enumerate() {
            let next = starts.get(k + 1).copied().unwrap_or(end);
            let begin = *slice_start.get_or_insert(s);
            if next - begin > max_tokens && s > begin {
                out.push(Slice { shard: si, offset: begin, count: s - begin });
                slice_start = Some(s);
            }
        }
        if let Some(begin) = slice_start {
            out.push(Slice { shard: si, offset: begin, count: end - begin });
        }
    }
    Ok(out)
}

/// The slices of worker `worker` out of `workers` (round robin): disjoint across workers.
pub fn worker_slices(slices: &[Slice], worker: usize, workers: usize) -> Vec<Slice> {
    let workers = workers.max(1);
    slices.iter().enumerate().filter(|(i, _)| i % workers == worker).map(|(_, s)| *s).collect()
}

/// Greedy packing of examples of lengths `lens` (in packing order, each at most `seq_len`) into
/// windows of `seq_len` positions: an example starts a new window when it does not fit in what
/// is left of the current one. Returns the index of each window's first example, plus a final
/// sentinel (the number of examples); no example gives `[0]`, no window. Shared by
/// [`PackedLoader`] and the distributed worker.
pub fn pack_window_bounds(lens: impl IntoIterator<Item = usize>, seq_len: usize) -> Vec<u32> {
    let mut bounds = vec![0u32];
    let mut used = 0usize;
    let mut count = 0u32;
    for (k, len) in lens.into_iter().enumerate() {
        if used + len > seq_len && used > 0 {
            bounds.push(k as u32);
            used = 0;
        }
        used += len;
        count = k as u32 + 1;
    }
    if count > 0 {
        bounds.push(count);
    }
    bounds
}

/// Writes one example (`[BOS] ... [EOS]`) at the start of `inputs` and its next-token targets
/// at the start of `targets` (the example's last position predicts nothing, so its target is
/// left alone: callers fill windows with [`IGNORE_INDEX`] first). With `answer_marker`, only
/// positions from that token on (e.g. `[INTENT]`) get targets. Returns the example's length.
/// Shared by [`PackedLoader`] and the distributed worker.
pub fn write_example(
    example: &[u32],
    answer_marker: Option<u32>,
    inputs: &mut [u32],
    targets: &mut [u32],
) -> usize {
    let n = example.len();
    inputs[..n].copy_from_slice(example);
    let answer_from = answer_marker.and_then(|m| example.iter().position(|&t| t == m)).unwrap_or(0);
    if answer_from + 1 < n {
        targets[answer_from..n - 1].copy_from_slice(&example[answer_from + 1..n]);
    }
    n
}

/// How a loader orders and masks its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Base seed of the shuffle.
    pub seed: u64,
    /// Identifies the worker or shard assignment; different streams shuffle differently.
    pub stream: u64,
    /// Shuffle each epoch (`false`: examples in shard order, for evaluation).
    pub shuffle: bool,
    /// Only count the loss from `[INTENT]` on (the answer), not on the utterance.
    pub mask_prompt: bool,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self { seed: 0, stream: 0, shuffle: true, mask_prompt: false }
    }
}

/// One epoch's packing, rebuilt on demand from `(epoch, seq_len)`.
#[derive(Debug, Clone)]
struct EpochPlan {
    epoch: u64,
    seq_len: usize,
    /// Example indices in packing order (examples too long are left out).
    order: Vec<u32>,
    /// Start of each window in `order`, plus a final sentinel `order.len()`.
    window_bounds: Vec<u32>,
    skipped: usize,
}

/// A deterministic, resumable [`BatchSource`] over token shards. See the module docs.
#[derive(Debug)]
pub struct PackedLoader {
    shards: Vec<Arc<ShardReader>>,
    examples: Vec<Example>,
    specials: SpecialTokens,
    options: LoaderOptions,
    position: SourcePosition,
    plan: Option<EpochPlan>,
    scratch: Vec<u32>,
}

impl PackedLoader {
    /// A loader over every example of `shards`.
    pub fn new(
        shards: Vec<Arc<ShardReader>>,
        specials: SpecialTokens,
        options: LoaderOptions,
    ) -> Result<Self, DataError> {
        let slices: Vec<Slice> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| Slice { shard: i, offset: 0, count: s.len() as u64 })
            .collect();
        Self::from_slices(shards, &slices, specials, options)
    }

    /// A loader over the examples of `slices` only. Each slice must lie inside its shard, start
    /// at `[BOS]` and end at an example boundary.
    pub fn from_slices(
        shards: Vec<Arc<ShardReader>>,
        slices: &[Slice],
        specials: SpecialTokens,
        options: LoaderOptions,
    ) -> Result<Self, DataError> {
        let mut examples = Vec::new();
        for sl in slices {
            let shard = shards.get(sl.shard).ok_or_else(|| {
                DataError::Empty(format!(
                    "slice names shard {} but only {} shard(s) are open",
                    sl.shard,
                    shards.len()
                ))
            })?;
            let bad = |reason: String| DataError::Invalid {
                path: shard.path().display().to_string(),
                reason,
            };
            let end = sl.offset.checked_add(sl.count).filter(|&e| e <= shard.len() as u64);
            let Some(end) = end else {
                return Err(bad(format!(
                    "slice at {} of {} tokens is outside the shard of {} tokens",
                    sl.offset,
                    sl.count,
                    shard.len()
                )));
            };
            if sl.count == 0 {
                continue;
            }
            if shard.token(sl.offset as usize) != specials.bos {
                return Err(bad(format!("slice at token {} does not start at [BOS]", sl.offset)));
            }
            if end < shard.len() as u64 && shard.token(end as usize) != specials.bos {
                return Err(bad(format!(
                    "slice at {} of {} tokens does not end at an example boundary",
                    sl.offset, sl.count
                )));
            }
            let mut start = sl.offset;
            for i in sl.offset + 1..=end {
                if i == end || shard.token(i as usize) == specials.bos {
                    let len = u32::try_from(i - start)
                        .map_err(|_| bad(format!("example at {start} is too long")))?;
                    examples.push(Example { shard: sl.shard as u32, offset: start, len });
                    start = i;
                }
            }
        }
        if examples.is_empty() {
            return Err(DataError::Empty("the shards or slices hold no example".into()));
        }
        Ok(Self {
            shards,
            examples,
            specials,
            options,
            position: SourcePosition::default(),
            plan: None,
            scratch: Vec::new(),
        })
    }

    /// Examples this loader owns.
    pub fn examples(&self) -> usize {
        self.examples.len()
    }

    /// Windows in one epoch at `seq_len`.
    pub fn windows_per_epoch(&mut self, seq_len: usize) -> Result<u64, DataError> {
        let epoch = self.position.epoch;
        let plan = self.plan_for(epoch, seq_len)?;
        Ok(plan.window_bounds.len() as u64 - 1)
    }

    /// Examples left out because they are longer than `seq_len`.
    pub fn skipped_examples(&mut self, seq_len: usize) -> Result<usize, DataError> {
        let epoch = self.position.epoch;
        Ok(self.plan_for(epoch, seq_len)?.skipped)
    }

    fn shuffle_rng(&self, epoch: u64) -> rand_chacha::ChaCha8Rng {
        let mut h = Sha256::new();
        h.update(b"bitnet-packed-loader-v1");
        h.update(self.options.seed.to_le_bytes());
        h.update(epoch.to_le_bytes());
        h.update(self.options.stream.to_le_bytes());
        rand_chacha::ChaCha8Rng::from_seed(h.finalize().into())
    }

    fn plan_for(&mut self, epoch: u64, seq_len: usize) -> Result<&EpochPlan, DataError> {
        let fresh = matches!(&self.plan, Some(p) if p.epoch == epoch && p.seq_len == seq_len);
        if !fresh {
            if seq_len == 0 {
                return Err(DataError::Empty("seq_len is zero".into()));
            }
            let mut order: Vec<u32> = (0..self.examples.len() as u32)
                .filter(|&i| self.examples[i as usize].len as usize <= seq_len)
                .collect();
            let skipped = self.examples.len() - order.len();
            if order.is_empty() {
                return Err(DataError::Empty(format!(
                    "all {} examples are longer than seq_len {seq_len}",
                    self.examples.len()
                )));
            }
            if self.options.shuffle {
                order.shuffle(&mut self.shuffle_rng(epoch));
            }
            let window_bounds = pack_window_bounds(
                order.iter().map(|&e| self.examples[e as usize].len as usize),
                seq_len,
            );
            self.plan = Some(EpochPlan { epoch, seq_len, order, window_bounds, skipped });
        }
        self.plan.as_ref().ok_or_else(|| DataError::Empty("no epoch plan".into()))
    }

    /// Writes window `index` of `epoch` into `inputs`/`targets` (each `seq_len` long).
    fn fill_window(
        &mut self,
        epoch: u64,
        index: usize,
        seq_len: usize,
        inputs: &mut [u32],
        targets: &mut [u32],
    ) -> Result<(), DataError> {
        let plan = self.plan_for(epoch, seq_len)?;
        let (a, b) = (plan.window_bounds[index] as usize, plan.window_bounds[index + 1] as usize);
        let members: Vec<u32> = plan.order[a..b].to_vec();
        inputs.fill(self.specials.pad);
        targets.fill(IGNORE_INDEX);
        let mut at = 0usize;
        for e in members {
            let ex = self.examples[e as usize];
            let shard = &self.shards[ex.shard as usize];
            self.scratch.clear();
            let start = ex.offset as usize;
            shard.extend_into(start..start + ex.len as usize, &mut self.scratch);
            let answer_marker = self.options.mask_prompt.then_some(self.specials.intent);
            at +=
                write_example(&self.scratch, answer_marker, &mut inputs[at..], &mut targets[at..]);
        }
        Ok(())
    }

    /// Every window of one pass over the data, in order, `batch` windows at a time; the last
    /// batch may be short (its `batch` field says how many). For evaluation: use a loader with
    /// `shuffle: false`; the loader's position is not moved.
    pub fn epoch_batches(
        &mut self,
        batch: usize,
        seq_len: usize,
    ) -> Result<Vec<BatchBuffer>, DataError> {
        let epoch = self.position.epoch;
        let windows = self.plan_for(epoch, seq_len)?.window_bounds.len() - 1;
        let batch = batch.max(1);
        let mut out = Vec::new();
        let mut w = 0;
        while w < windows {
            let n = batch.min(windows - w);
            let mut buf = BatchBuffer {
                inputs: vec![0; n * seq_len],
                targets: vec![0; n * seq_len],
                batch: n,
                seq_len,
            };
            for b in 0..n {
                let range = b * seq_len..(b + 1) * seq_len;
                self.fill_window(
                    epoch,
                    w + b,
                    seq_len,
                    &mut buf.inputs[range.clone()],
                    &mut buf.targets[range],
                )?;
            }
            out.push(buf);
            w += n;
        }
        Ok(out)
    }
}

impl BatchSource for PackedLoader {
    fn next_batch(
        &mut self,
        batch: usize,
        seq_len: usize,
        out: &mut BatchBuffer,
    ) -> Result<(), DataError> {
        out.batch = batch;
        out.seq_len = seq_len;
        out.inputs.resize(batch * seq_len, 0);
        out.targets.resize(batch * seq_len, 0);
        let mut inputs = std::mem::take(&mut out.inputs);
        let mut targets = std::mem::take(&mut out.targets);
        let result = (|| {
            for b in 0..batch {
                let windows = self.plan_for(self.position.epoch, seq_len)?.window_bounds.len() - 1;
                if self.position.cursor >= windows as u64 {
                    self.position = SourcePosition { epoch: self.position.epoch + 1, cursor: 0 };
                }
                let range = b * seq_len..(b + 1) * seq_len;
                let epoch = self.position.epoch;
                let cursor = self.position.cursor as usize;
                self.fill_window(
                    epoch,
                    cursor,
                    seq_len,
                    &mut inputs[range.clone()],
                    &mut targets[range],
                )?;
                self.position.cursor += 1;
            }
            Ok(())
        })();
        out.inputs = inputs;
        out.targets = targets;
        result
    }

    fn position(&self) -> SourcePosition {
        self.position
    }

    fn seek(&mut self, position: SourcePosition) -> Result<(), DataError> {
        self.position = position;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::{VocabHash, write_shard};
    use std::collections::HashMap;

    const SP: SpecialTokens = SpecialTokens { pad: 0, unk: 1, bos: 2, eos: 3, user: 4, intent: 5 };

    /// Example `k`: [BOS] [USER] w.. [INTENT] j [EOS], with words unique per example so the
    /// tests can tell examples apart.
    fn example(k: u32, words: usize) -> Vec<u32> {
        let mut v = vec![2, 4];
        v.extend((0..words as u32).map(|i| 10 + (k * 7 + i) % 90));
        v.extend([5, 100 + k, 3]);
        v
    }

    fn shards(dir: &std::path::Path, per_shard: &[usize]) -> Vec<Arc<ShardReader>> {
        let h = VocabHash([9; 32]);
        let mut k = 0;
        per_shard
            .iter()
            .enumerate()
            .map(|(si, &n)| {
                let mut toks = Vec::new();
                for _ in 0..n {
                    toks.extend(example(k, 1 + (k as usize * 5) % 9));
                    k += 1;
                }
                let p = dir.join(format!("train-{si:04}.bin"));
                write_shard(&p, &toks, 1000, h).expect("write");
                Arc::new(ShardReader::open(&p, &h).expect("open"))
            })
            .collect()
    }

    /// The example id (the token after [INTENT]) of every example in a batch, checking the
    /// window invariants on the way.
    fn examples_in(buf: &BatchBuffer) -> Vec<u32> {
        let mut ids = Vec::new();
        for w in 0..buf.batch {
            let inp = &buf.inputs[w * buf.seq_len..(w + 1) * buf.seq_len];
            let tgt = &buf.targets[w * buf.seq_len..(w + 1) * buf.seq_len];
            assert_eq!(inp[0], SP.bos, "every window starts at [BOS]");
            for i in 0..buf.seq_len {
                if inp[i] == SP.pad {
                    assert_eq!(tgt[i], IGNORE_INDEX, "pad positions are ignored");
                }
                if inp[i] == SP.eos {
                    assert_eq!(tgt[i], IGNORE_INDEX, "nothing is predicted after [EOS]");
                } else if tgt[i] != IGNORE_INDEX {
                    assert_eq!(tgt[i], inp[i + 1], "targets are the next token");
                }
                if inp[i] == SP.intent {
                    ids.push(inp[i + 1] - 100);
                }
            }
            // Never split: every [BOS] in the window is followed by its [EOS] in the window.
            let bos = inp.iter().filter(|&&t| t == SP.bos).count();
            let eos = inp.iter().filter(|&&t| t == SP.eos).count();
            assert_eq!(bos, eos, "an example is never split across windows");
        }
        ids
    }

    #[test]
    fn one_epoch_sees_every_example_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = shards(dir.path(), &[30, 20]);
        let mut l = PackedLoader::new(s, SP, LoaderOptions { seed: 1, ..Default::default() })
            .expect("loader");
        let windows = l.windows_per_epoch(24).expect("plan") as usize;
        let mut buf = BatchBuffer::default();
        let mut seen = Vec::new();
        for _ in 0..windows {
            l.next_batch(1, 24, &mut buf).expect("batch");
            seen.extend(examples_in(&buf));
        }
        assert_eq!(l.position(), SourcePosition { epoch: 0, cursor: windows as u64 });
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        l.next_batch(1, 24, &mut buf).expect("next epoch");
        assert_eq!(l.position(), SourcePosition { epoch: 1, cursor: 1 });
    }

    #[test]
    fn deterministic_and_seekable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = shards(dir.path(), &[40]);
        let opts = LoaderOptions { seed: 5, stream: 2, ..Default::default() };
        let mut a = PackedLoader::new(s.clone(), SP, opts).expect("a");
        let mut b = PackedLoader::new(s.clone(), SP, opts).expect("b");
        let mut ba = BatchBuffer::default();
        let mut bb = BatchBuffer::default();
        let mut saved = None;
        let mut after = Vec::new();
        for step in 0..12 {
            a.next_batch(3, 20, &mut ba).expect("a");
            b.next_batch(3, 20, &mut bb).expect("b");
            assert_eq!(ba.inputs, bb.inputs);
            assert_eq!(ba.targets, bb.targets);
            if step == 5 {
                saved = Some(a.position());
            }
            if step > 5 {
                after.push(ba.inputs.clone());
            }
        }
        let mut c = PackedLoader::new(s.clone(), SP, opts).expect("c");
        c.seek(saved.expect("saved")).expect("seek");
        for expected in after {
            c.next_batch(3, 20, &mut ba).expect("c");
            assert_eq!(ba.inputs, expected, "seek resumes exactly");
        }
        // Another stream or epoch shuffles differently.
        let mut d = PackedLoader::new(s, SP, LoaderOptions { stream: 3, ..opts }).expect("d");
        let mut e = PackedLoader::new(shards(dir.path(), &[40]), SP, opts).expect("e");
        d.next_batch(4, 20, &mut ba).expect("d");
        e.next_batch(4, 20, &mut bb).expect("e");
        assert_ne!(ba.inputs, bb.inputs);
    }

    #[test]
    fn slices_are_disjoint_aligned_and_cover_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = shards(dir.path(), &[25, 17]);
        let slices = plan_slices(&s, SP.bos, 60).expect("plan");
        let total: u64 = s.iter().map(|r| r.len() as u64).sum();
        assert_eq!(slices.iter().map(|x| x.count).sum::<u64>(), total);
        for x in &slices {
            assert_eq!(s[x.shard].token(x.offset as usize), SP.bos);
            assert!(x.count <= 60);
        }
        let mut count: HashMap<u32, usize> = HashMap::new();
        for w in 0..3 {
            let mine = worker_slices(&slices, w, 3);
            let mut l = PackedLoader::from_slices(
                s.clone(),
                &mine,
                SP,
                LoaderOptions { stream: w as u64, ..Default::default() },
            )
            .expect("loader");
            let batches = l.epoch_batches(4, 30).expect("epoch");
            for b in &batches {
                for id in examples_in(b) {
                    *count.entry(id).or_default() += 1;
                }
            }
        }
        assert_eq!(count.len(), 42, "every example reaches some worker");
        assert!(count.values().all(|&c| c == 1), "no example reaches two workers");
    }

    #[test]
    fn misaligned_slice_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = shards(dir.path(), &[5]);
        let bad = Slice { shard: 0, offset: 1, count: 4 };
        let err = PackedLoader::from_slices(s.clone(), &[bad], SP, LoaderOptions::default())
            .expect_err("misaligned");
        assert!(err.to_string().contains("[BOS]"), "{err}");
        let outside = Slice { shard: 0, offset: 0, count: 10_000 };
        assert!(PackedLoader::from_slices(s, &[outside], SP, LoaderOptions::default()).is_err());
    }

    #[test]
    fn long_examples_are_skipped_and_prompt_can_be_masked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = shards(dir.path(), &[20]);
        let mut l = PackedLoader::new(
            s,
            SP,
            LoaderOptions { shuffle: false, mask_prompt: true, ..Default::default() },
        )
        .expect("loader");
        // Examples are 6..=14 tokens; at seq_len 10 the longer ones cannot be packed.
        let skipped = l.skipped_examples(10).expect("plan");
        assert!(skipped > 0 && skipped < 20);
        for b in l.epoch_batches(2, 10).expect("epoch") {
            for w in 0..b.batch {
                let inp = &b.inputs[w * 10..(w + 1) * 10];
                let tgt = &b.targets[w * 10..(w + 1) * 10];
                // Only the answer ([INTENT] and the id token after it) predicts something.
                for i in 0..10 {
                    if tgt[i] != IGNORE_INDEX {
                        assert!(inp[i] == SP.intent || (i > 0 && inp[i - 1] == SP.intent));
                    }
                }
            }
        }
    }
}
