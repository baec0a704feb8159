//! Cutting a task's token slice into training batches.

use crate::data::BatchBuffer;
use crate::model::IGNORE_INDEX;

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
/// of the slice is trained on exactly once. The last batch may hold fewer windows.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
    }
}
