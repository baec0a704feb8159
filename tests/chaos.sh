#!/usr/bin/env bash
# The chaos harness, long form: kill -9 the coordinator of a two-worker tiny run many times at
# random points and check, from the final snapshot's ledger, that nothing was lost or applied
# twice. Usage: tests/chaos.sh [KILLS] [CORPUS_UTTERANCES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export CHAOS_KILLS="${1:-50}" CHAOS_CORPUS="${2:-6000}" CHAOS_SEED="${3:-$RANDOM}"
exec cargo test -p bitnet-tests --test integration -- --exact \
  chaos::kill_9_the_coordinator_at_random_points_and_nothing_is_lost_or_applied_twice --nocapture
