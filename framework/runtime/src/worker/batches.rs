//! Cutting a task's token slice into training batches.
//!
//! A slice of a shard of tokenized examples (`[BOS] ... [EOS]`, as `bitnet tokenize-corpus`
//! writes them) is packed exactly like the single-process loader packs a shard
//! ([`crate::data::loader`]): the task owns every example whose `[BOS]` lies inside its slice
//! (the example may run past the slice's end; the tokens before the slice's first `[BOS]` belong
//! to the previous task), so an epoch of tasks trains every example exactly once wherever the
//! coordinator cut the shard. The examples are shuffled deterministically from
//! `(seed, task id)`, packed greedily into windows that each start at `[BOS]`, and the unused
//! tail of a window is `[PAD]` with target [`IGNORE_INDEX`]. A plain token stream (no examples)
//! is cut into consecutive windows instead ([`windows`]).

use crate::data::BatchBuffer;
use crate::data::loader::{pack_window_bounds, write_example};
use bitnet_framework::model::IGNORE_INDEX;
use bitnet_framework::protocol::Packing;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use sha2::{Digest, Sha256};
use std::ops::Range;

/// Iterator over the batches of a slice; see [`windows`].
#[derive(Debug)]
pub struct Windows<'a> {
    slice: &'a [u32],
    seq_len: usize,
    batch: usize,
    next: usize,
}

/// Batches of `batch` windows of `seq_len` next-token pairs over `slice`: window `i` reads
/// inputs `slice[i*seq_len ..][..seq_len]` and targets shifted by one. The last window may be
/// short: its inputs are padded with id 0 and its targets with [`IGNORE_INDEX`], so every token
/// of the slice is trained on exactly once. The last batch may hold fewer windows. For plain
/// token streams; shards of examples are packed with [`PackedTask`].
pub fn windows(slice: &[u32], seq_len: usize, batch: usize) -> Windows<'_> {
    Windows { slice, seq_len: seq_len.max(1), batch: batch.max(1), next: 0 }
}

impl Iterator for Windows<'_> {
    type Item = BatchBuffer;

    fn next(&mut self) -> Option<BatchBuffer> {
        // A position needs a following token to have a target.
        let positions = self.slice.len().saturating_sub(1);
        if self.next >= positions {
            return None;
        }
        let mut out = BatchBuffer { seq_len: self.seq_len, ..BatchBuffer::default() };
        while out.batch < self.batch && self.next < positions {
            let start = self.next;
            let end = (start + self.seq_len).min(positions);
            out.inputs.extend_from_slice(&self.slice[start..end]);
            out.targets.extend_from_slice(&self.slice[start + 1..end + 1]);
            let pad = self.seq_len - (end - start);
            out.inputs.extend(std::iter::repeat_n(0, pad));
            out.targets.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            out.batch += 1;
            self.next = end;
        }
        Some(out)
    }
}

/// The examples a task owns: one per `[BOS]` at a position in `start..end` of the shard's
/// `tokens`, each running to the next `[BOS]` (possibly past `end`) or the end of the shard.
pub fn task_examples(tokens: &[u32], start: usize, end: usize, bos: u32) -> Vec<Range<usize>> {
    let end = end.min(tokens.len());
    let starts: Vec<usize> = (start.min(end)..end).filter(|&i| tokens[i] == bos).collect();
    starts
        .iter()
        .map(|&s| {
            let stop =
                tokens[s + 1..].iter().position(|&t| t == bos).map_or(tokens.len(), |k| s + 1 + k);
            s..stop
        })
        .collect()
}

/// A task's examples packed into windows and served `batch` windows at a time (the last batch
/// may hold fewer). Built by [`PackedTask::new`]; iterate for the batches.
#[derive(Debug)]
pub struct PackedTask<'a> {
    tokens: &'a [u32],
    examples: Vec<Range<usize>>,
    bounds: Vec<u32>,
    pad: u32,
    seq_len: usize,
    batch: usize,
    /// `Some(h)`: serve the windows as `h` batches of nearly equal size ([`PackedTask::in_steps`]).
    steps: Option<usize>,
    /// Batches served so far.
    served: usize,
    next_window: usize,
    skipped: usize,
}

impl<'a> PackedTask<'a> {
    /// Packs the examples of `tokens[start..end)` (see [`task_examples`]) in an order shuffled
    /// from `(seed, task_id)`; examples longer than `seq_len` cannot be packed and are skipped,
    /// as the single-process loader skips them.
    pub fn new(
        tokens: &'a [u32],
        start: usize,
        end: usize,
        packing: Packing,
        seq_len: usize,
        batch: usize,
        (seed, task_id): (u64, u64),
    ) -> Self {
        let seq_len = seq_len.max(1);
        let all = task_examples(tokens, start, end, packing.bos);
        let before = all.len();
        let mut examples: Vec<Range<usize>> =
            all.into_iter().filter(|r| r.len() <= seq_len).collect();
        let skipped = before - examples.len();
        let mut h = Sha256::new();
        h.update(b"bitnet-task-shuffle-v1");
        h.update(seed.to_le_bytes());
        h.update(task_id.to_le_bytes());
        examples.shuffle(&mut rand_chacha::ChaCha8Rng::from_seed(h.finalize().into()));
        let bounds = pack_window_bounds(examples.iter().map(Range::len), seq_len);
        Self {
            tokens,
            examples,
            bounds,
            pad: packing.pad,
            seq_len,
            batch: batch.max(1),
            steps: None,
            served: 0,
            next_window: 0,
            skipped,
        }
    }

    /// Serves the windows as `steps` batches whose sizes differ by at most one window, instead
    /// of `batch` windows at a time (steps that would be empty, when there are fewer windows
    /// than steps, are left out). DiLoCo's inner loop: a task of `H * batch * seq_len` example
    /// tokens packs into about `H * batch / fill` windows, and served `batch` at a time its last
    /// step would take a full-sized optimizer step on a sliver of a batch; spread over `H`
    /// steps, every step holds about `batch / fill` windows.
    pub fn in_steps(mut self, steps: usize) -> Self {
        self.steps = Some(steps.max(1));
        self
    }

    /// Examples packed.
    pub fn examples(&self) -> usize {
        self.examples.len()
    }

    /// Examples left out because they are longer than `seq_len`.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Windows in all.
    pub fn windows(&self) -> usize {
        self.bounds.len() - 1
    }
}

impl Iterator for PackedTask<'_> {
    type Item = BatchBuffer;

    fn next(&mut self) -> Option<BatchBuffer> {
        let windows = self.windows();
        if self.next_window >= windows {
            return None;
        }
        let n = match self.steps {
            // The first `served + 1` of `h` steps end at window `(served + 1) * windows / h`.
            Some(h) => loop {
                if self.served >= h {
                    return None;
                }
                self.served += 1;
                let end = self.served * windows / h;
                if end > self.next_window {
                    break end - self.next_window;
                }
            },
            None => {
                self.served += 1;
                self.batch.min(windows - self.next_window)
            }
        };
        let t = self.seq_len;
        let mut out = BatchBuffer {
            inputs: vec![self.pad; n * t],
            targets: vec![IGNORE_INDEX; n * t],
            batch: n,
            seq_len: t,
        };
        for b in 0..n {
            let w = self.next_window + b;
            let (first, last) = (self.bounds[w] as usize, self.bounds[w + 1] as usize);
            let mut at = b * t;
            let window_end = at + t;
            for r in &self.examples[first..last] {
                at += write_example(
                    &self.tokens[r.clone()],
                    None,
                    &mut out.inputs[at..window_end],
                    &mut out.targets[at..window_end],
                );
            }
        }
        self.next_window += n;
        Some(out)
    }
}

/// A task's batches: packed examples, or plain windows of a token stream.
#[derive(Debug)]
pub enum TaskBatches<'a> {
    /// Examples packed like the single-process loader.
    Packed(PackedTask<'a>),
    /// Consecutive windows of a plain token stream.
    Plain(Windows<'a>),
}

impl Iterator for TaskBatches<'_> {
    type Item = BatchBuffer;

    fn next(&mut self) -> Option<BatchBuffer> {
        match self {
            TaskBatches::Packed(p) => p.next(),
            TaskBatches::Plain(w) => w.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const PACK: Packing = Packing { bos: 2, pad: 0 };
    const EOS: u32 = 3;

    #[test]
    fn windows_shift_targets_and_pad_the_tail() {
        let slice: Vec<u32> = (10..17).collect(); // 7 tokens = 6 positions
        let batches: Vec<BatchBuffer> = windows(&slice, 4, 1).collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].inputs, [10, 11, 12, 13]);
        assert_eq!(batches[0].targets, [11, 12, 13, 14]);
        assert_eq!(batches[1].inputs, [14, 15, 0, 0]);
        assert_eq!(batches[1].targets, [15, 16, IGNORE_INDEX, IGNORE_INDEX]);
    }

    /// A shard of examples `[BOS] id w.. [EOS]` with the given body lengths; example `k` has id
    /// `100 + k` so the tests can tell examples apart.
    fn shard(lens: &[usize]) -> Vec<u32> {
        let mut t = Vec::new();
        for (k, &n) in lens.iter().enumerate() {
            t.push(PACK.bos);
            t.push(100 + k as u32);
            t.extend((0..n as u32).map(|i| 10 + i % 50));
            t.push(EOS);
        }
        t
    }

    /// Example ids in a batch, checking the window invariants on the way.
    fn ids_in(b: &BatchBuffer) -> Vec<u32> {
        let mut ids = Vec::new();
        for w in 0..b.batch {
            let inp = &b.inputs[w * b.seq_len..(w + 1) * b.seq_len];
            let tgt = &b.targets[w * b.seq_len..(w + 1) * b.seq_len];
            assert_eq!(inp[0], PACK.bos, "every window starts at [BOS]");
            for i in 0..b.seq_len {
                if inp[i] == PACK.pad || inp[i] == EOS {
                    assert_eq!(tgt[i], IGNORE_INDEX, "pad and [EOS] predict nothing");
                } else {
                    assert_eq!(tgt[i], inp[i + 1], "targets are the next token");
                }
                if inp[i] == PACK.bos {
                    ids.push(inp[i + 1]);
                }
            }
            let eos = inp.iter().filter(|&&t| t == EOS).count();
            assert_eq!(eos, inp.iter().filter(|&&t| t == PACK.bos).count(), "never split");
        }
        ids
    }

    #[test]
    fn packing_matches_the_loader_layout_and_is_deterministic() {
        let tokens = shard(&[3, 1, 5, 2, 4, 0, 6]);
        let all = |id| PackedTask::new(&tokens, 0, tokens.len(), PACK, 12, 2, (7, id));
        let a: Vec<BatchBuffer> = all(1).collect();
        let b: Vec<BatchBuffer> = all(1).collect();
        assert_eq!(
            a.iter().map(|x| &x.inputs).collect::<Vec<_>>(),
            b.iter().map(|x| &x.inputs).collect::<Vec<_>>(),
            "same seed and task, same batches"
        );
        let mut ids: Vec<u32> = a.iter().flat_map(ids_in).collect();
        ids.sort_unstable();
        assert_eq!(ids, (100..107).collect::<Vec<_>>());
        let other: Vec<u32> = all(2).flat_map(|x| ids_in(&x)).collect();
        let first: Vec<u32> = a.iter().flat_map(ids_in).collect();
        assert_ne!(other, first, "another task shuffles differently");
    }

    #[test]
    fn long_examples_are_skipped() {
        let tokens = shard(&[2, 20, 2]);
        let p = PackedTask::new(&tokens, 0, tokens.len(), PACK, 10, 4, (0, 0));
        assert_eq!((p.examples(), p.skipped()), (2, 1));
    }

    proptest! {
        #[test]
        fn every_position_is_counted_once(len in 0usize..200, seq in 1usize..9, batch in 1usize..5) {
            let slice: Vec<u32> = (0..len as u32).collect();
            let mut counted = 0;
            for b in windows(&slice, seq, batch) {
                prop_assert!(b.batch <= batch);
                prop_assert_eq!(b.inputs.len(), b.batch * seq);
                let v = b.view();
                counted += v.counted_targets();
                for (i, t) in v.inputs.iter().zip(v.targets) {
                    if *t != IGNORE_INDEX { prop_assert_eq!(*t, i + 1); }
                }
            }
            prop_assert_eq!(counted, len.saturating_sub(1));
        }

        /// However the shard is cut into slices, every example that starts in some slice is
        /// trained exactly once, whole, with every one of its next-token targets.
        #[test]
        fn a_partition_of_slices_trains_every_example_once(
            lens in proptest::collection::vec(0usize..12, 1..40),
            cuts in proptest::collection::vec(0usize..10_000, 0..12),
            seq in 15usize..40,
            batch in 1usize..4,
        ) {
            let tokens = shard(&lens);
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (tokens.len() + 1)).collect();
            bounds.extend([0, tokens.len()]);
            bounds.sort_unstable();
            bounds.dedup();
            let mut seen: HashMap<u32, usize> = HashMap::new();
            let mut counted = 0;
            for (task, w) in bounds.windows(2).enumerate() {
                let p = PackedTask::new(&tokens, w[0], w[1], PACK, seq, batch, (3, task as u64));
                prop_assert_eq!(p.skipped(), 0);
                for b in p {
                    prop_assert!(b.batch <= batch);
                    counted += b.view().counted_targets();
                    for id in ids_in(&b) {
                        *seen.entry(id).or_default() += 1;
                    }
                }
            }
            prop_assert_eq!(seen.len(), lens.len(), "every example is trained");
            prop_assert!(seen.values().all(|&n| n == 1), "no example is trained twice");
            // An example of n body tokens is n + 3 tokens with n + 2 targets.
            prop_assert_eq!(counted, lens.iter().map(|n| n + 2).sum::<usize>());
        }

        /// Spread over `h` steps, the same windows come out in the same order, as at most `h`
        /// non-empty batches whose sizes differ by at most one window.
        #[test]
        fn in_steps_spreads_the_same_windows_evenly(
            lens in proptest::collection::vec(0usize..12, 0..60),
            seq in 15usize..40,
            h in 1usize..9,
        ) {
            let tokens = shard(&lens);
            let new = || PackedTask::new(&tokens, 0, tokens.len(), PACK, seq, 1, (5, 9));
            let windows = new().windows();
            let plain: Vec<BatchBuffer> = new().collect();
            let spread: Vec<BatchBuffer> = new().in_steps(h).collect();
            prop_assert_eq!(spread.len(), h.min(windows));
            let sizes: Vec<usize> = spread.iter().map(|b| b.batch).collect();
            prop_assert!(sizes.iter().all(|&n| n >= 1));
            prop_assert!(sizes.iter().max().unwrap_or(&0) - sizes.iter().min().unwrap_or(&0) <= 1);
            let cat = |v: &[BatchBuffer]| v.iter().flat_map(|b| b.inputs.clone()).collect::<Vec<_>>();
            prop_assert_eq!(cat(&spread), cat(&plain));
        }
    }

    #[test]
    fn in_steps_example() {
        // 19 windows of one example each over 4 steps: 4, 5, 5, 5.
        let tokens = shard(&[10; 19]);
        let p = PackedTask::new(&tokens, 0, tokens.len(), PACK, 16, 4, (0, 0));
        assert_eq!(p.windows(), 19);
        let sizes: Vec<usize> = p.in_steps(4).map(|b| b.batch).collect();
        assert_eq!(sizes, [4, 5, 5, 5]);
    }
}
