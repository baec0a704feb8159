#!/usr/bin/env bash
# Coordinator egress per task, with workers downloading weights and shards from the object
# store through presigned URLs against the coordinator serving them: the same tiny run (the
# `bitnet` binary, HTTP, the "s3" weight store on a local moto server) once with
# coordinator.direct_downloads = true and once with false. Prints one row per case, from the
# coordinator's /metrics and the workers' own counts. Not part of CI.
# Usage: tests/egress.sh [WORKERS] [CORPUS_UTTERANCES] [MODE] [SYNC_ROUNDS]
#   MODE: async-sgd (default) or diloco; SYNC_ROUNDS: true (default) or false.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS="${1:-4}" CORPUS="${2:-600}" MODE="${3:-async-sgd}" SYNC="${4:-true}"
cargo build -q -p bitnet-cli
BITNET="$PWD/target/debug/bitnet"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

S3_PORT="$(free_port)"
"${BITNET_MOTO_SERVER:-moto_server}" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3_PORT" && break; sleep 0.1; done
curl -s -X PUT -o /dev/null "http://127.0.0.1:$S3_PORT/egress"
export AWS_ACCESS_KEY_ID=egress AWS_SECRET_ACCESS_KEY=egress-secret

metric() { grep -E "^$1 " "$2" | awk '{print $2}'; }

run_case() {
  local direct="$1" dir="$WORK/$1" port
  port="$(free_port)"
  mkdir -p "$dir"
  cat >"$dir/run.toml" <<EOF
name = "egress"
preset = "tiny"
[model]
seq_len = 32
[optimizer]
type = "adamw"
lr = 0.01
warmup_steps = 0
[codec]
type = "int8-ef"
[weight_store]
type = "s3"
bucket = "egress"
prefix = "run-$direct"
endpoint = "http://127.0.0.1:$S3_PORT"
allow_http = true
[tokenizer]
type = "word-level"
max_vocab = 400
min_freq = 1
[transport]
type = "http"
bind = "127.0.0.1:$port"
[coordinator_store]
type = "sqlite"
[train]
mode = "$MODE"
batch_size = 4
threads = 1
inner_steps = 4
[data]
dir = "$dir/data"
corpus_count = $CORPUS
[run]
dir = "$dir/run"
[coordinator]
task_seconds = 0.005
heartbeat_secs = 0.5
snapshot_every_secs = 0
direct_downloads = $direct
sync_rounds = $SYNC
[worker]
calibration_steps = 1
idle_poll_ms = 50
EOF
  "$BITNET" tokenize-corpus "$dir/run.toml" --no-env >"$dir/tokenize.log" 2>&1
  for i in $(seq "$WORKERS"); do
    "$BITNET" keys add "$dir/run.toml" --no-env --id "w$i" --out "$dir/w$i.json" >/dev/null 2>&1
  done
  "$BITNET" coordinator "$dir/run.toml" --no-env >"$dir/coordinator.log" 2>&1 &
  local coord=$!
  PIDS+=("$coord")
  for _ in $(seq 300); do [ -f "$dir/run/coordinator.url" ] && break; sleep 0.1; done
  local base="http://127.0.0.1:$port" workers=()
  for i in $(seq "$WORKERS"); do
    "$BITNET" worker "$dir/run.toml" --no-env --coordinator "$base" --credentials "$dir/w$i.json" \
      --exit-when-done >"$dir/w$i.log" 2>&1 &
    workers+=($!)
  done
  for w in "${workers[@]}"; do wait "$w"; done
  local id secret token
  id="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client_id"])' "$dir/w1.json")"
  secret="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client_secret"])' "$dir/w1.json")"
  token="$(curl -s -X POST "$base/connect/token" \
    --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$id" \
    --data-urlencode "client_secret=$secret" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
  curl -s -H "Authorization: Bearer $token" "$base/metrics" >"$dir/metrics.txt"
  kill -TERM "$coord"
  wait "$coord" || true
  local m="$dir/metrics.txt" claims served_w served_s pub_w pub_s from_store from_coord fallbacks
  claims="$(metric bitnet_claims_total "$m")"
  served_w="$(metric 'bitnet_served_bytes_total\{what="weights"\}' "$m")"
  served_s="$(metric 'bitnet_served_bytes_total\{what="shards"\}' "$m")"
  pub_w="$(metric 'bitnet_published_bytes_total\{what="weights"\}' "$m")"
  pub_s="$(metric 'bitnet_published_bytes_total\{what="shards"\}' "$m")"
  read -r from_store from_coord fallbacks < <(cat "$dir"/w*.log | python3 -c '
import re, sys
d = c = f = 0
for line in sys.stdin:
    m = re.search(r"downloaded (\d+) bytes from the object store, (\d+) from the coordinator \((\d+) fallbacks\)", line)
    if m:
        d += int(m[1]); c += int(m[2]); f += int(m[3])
print(d, c, f)')
  python3 - "$direct" "$claims" "$served_w" "$served_s" "$pub_w" "$pub_s" "$from_store" "$from_coord" "$fallbacks" <<'EOF'
import sys
case, claims, sw, ss, pw, ps, d, c, f = sys.argv[1], *map(int, sys.argv[2:])
t = max(claims, 1)
print(f"| {case} | {claims} | {(sw + ss) / t:,.0f} | {sw / t:,.0f} | {ss / t:,.0f} "
      f"| {(pw + ps) / t:,.0f} | {d / t:,.0f} | {c / t:,.0f} | {f} |")
EOF
}

echo "$WORKERS workers, $CORPUS utterances, $MODE, sync_rounds = $SYNC, tiny preset; bytes per task (claims)"
echo "| direct_downloads | tasks | coordinator egress | of it weights | of it shards | uploaded to the store | workers from the store | workers from the coordinator | fallbacks |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
run_case true
run_case false
