#!/usr/bin/env bash
# The failover harness, long form (issue 19): two coordinator replicas on one PostgreSQL and one
# S3 bucket, four workers given both URLs; kill -9 the leader at KILLS random points, restart it
# as a follower each time, then pause the leader past its lease (SIGSTOP) and check it steps down.
# Prints the takeover times (kill to the follower's /health/leader answering 200) and checks,
# from the head snapshot's ledger, that nothing was lost or applied twice.
# Needs PostgreSQL's server binaries and moto (`pip install 'moto[server]'`), as .ci/run installs.
# Usage: tests/failover.sh [KILLS] [CORPUS_UTTERANCES] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export FAILOVER_KILLS="${1:-20}" FAILOVER_CORPUS="${2:-3000}" FAILOVER_SEED="${3:-$RANDOM}"
exec cargo test -p bitnet-tests --test integration -- --exact \
  replicas::kill_9_the_leader_replica_and_a_follower_takes_over_with_nothing_lost_or_applied_twice \
  --nocapture
