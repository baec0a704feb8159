//! Seeding the queue: tasks are slices of token shards, so an epoch covers the corpus once
//! whatever the number of workers.

use bitnet_framework::coordinator_store::NewTask;
use bitnet_framework::protocol::ShardInfo;

/// Tasks covering `token_budget` tokens (0 = one epoch) by walking the shards in order,
/// wrapping around for further epochs; each task is at most `chunk_tokens` long (claims split
/// them further to fit each worker).
pub fn plan_tasks(shards: &[ShardInfo], token_budget: u64, chunk_tokens: u64) -> Vec<NewTask> {
    let epoch: u64 = shards.iter().map(|s| s.tokens).sum();
    if epoch == 0 {
        return Vec::new();
    }
    let budget = if token_budget == 0 { epoch } else { token_budget };
    let chunk = chunk_tokens.max(1);
    let mut left = budget;
    let mut out = Vec::new();
    'epochs: loop {
        for s in shards {
            let mut offset = 0;
            while offset < s.tokens {
                if left == 0 {
                    break 'epochs;
                }
                let n = chunk.min(s.tokens - offset).min(left);
                out.push(NewTask { shard: s.name.clone(), offset, tokens: n });
                offset += n;
                left -= n;
            }
        }
    }
    out
}

/// The tasks of [`plan_tasks`] for `token_budget` after the first `seeded` tokens of that
/// plan: what tops a queue that already holds `seeded` tokens up to the budget, continuing the
/// walk through the shards where it stopped.
pub fn plan_more_tasks(
    shards: &[ShardInfo],
    seeded: u64,
    token_budget: u64,
    chunk_tokens: u64,
) -> Vec<NewTask> {
    let mut skip = seeded;
    let mut out = Vec::new();
    for mut t in plan_tasks(shards, token_budget, chunk_tokens) {
        if skip >= t.tokens {
            skip -= t.tokens;
            continue;
        }
        t.offset += skip;
        t.tokens -= skip;
        skip = 0;
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, tokens: u64) -> ShardInfo {
        ShardInfo { name: name.into(), tokens, sha256: String::new() }
    }

    #[test]
    fn one_epoch_covers_every_token_once() {
        let tasks = plan_tasks(&[shard("a", 25), shard("b", 7)], 0, 10);
        let covered: u64 = tasks.iter().map(|t| t.tokens).sum();
        assert_eq!(covered, 32);
        assert_eq!(tasks.len(), 4);
        assert_eq!((tasks[2].offset, tasks[2].tokens), (20, 5));
    }

    #[test]
    fn budget_wraps_into_further_epochs() {
        let tasks = plan_tasks(&[shard("a", 10)], 25, 100);
        assert_eq!(tasks.iter().map(|t| t.tokens).collect::<Vec<_>>(), [10, 10, 5]);
        assert!(plan_tasks(&[], 10, 10).is_empty());
    }

    #[test]
    fn more_tasks_continue_where_the_queue_stopped() {
        let shards = [shard("a", 25), shard("b", 7)];
        let more = plan_more_tasks(&shards, 15, 40, 10);
        let spans: Vec<(&str, u64, u64)> =
            more.iter().map(|t| (t.shard.as_str(), t.offset, t.tokens)).collect();
        assert_eq!(spans, [("a", 15, 5), ("a", 20, 5), ("b", 0, 7), ("a", 0, 8)]);
        assert!(plan_more_tasks(&shards, 40, 40, 10).is_empty());
        assert!(plan_more_tasks(&shards, 50, 40, 10).is_empty());
    }
}
