#!/usr/bin/env bash
# Training over a slow link (issue 19): a coordinator in one network namespace, 4 workers (one
# thread each) in four others, each worker behind its own emulated link; wall-clock time and
# bytes on the wire until the run's validation loss reaches a target, against one process.
# Not part of CI: needs root (namespaces, TAP devices) and takes about an hour.
#
# The links come from bins/linkem (`bitnet-linkem`, a userspace netem: rate, delay, loss and a
# drop-tail queue between TAP devices), since some kernels (Firecracker's) lack the netem qdisc.
# Topology: TAP pair wN (wNc, wNw) per worker; the wNc ends sit in a bridge in namespace
# bnwan-c (10.77.0.1/24, the coordinator), wNw is the only interface of bnwan-wN (10.77.0.1N).
#
# Usage: tests/wan.sh [CASE...]
#   CASE: probe:RATE | single | async:RATE | diloco-H:RATE, RATE like 50mbit. Default: every case
#   of the book's table. Environment: WAN_TARGET_LOSS (validation loss to reach), WAN_CAP_SECS
#   (per case), WAN_RTT, WAN_LOSS, WAN_CC (the namespaces' TCP congestion control), WAN_OUT
#   (results), WAN_EVAL_LIMIT (examples decoded for intent accuracy), BITNET, LINKEM (binaries).
# Every row is printed and appended to $WAN_OUT/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
TARGET="${WAN_TARGET_LOSS:-1.0}"
CAP="${WAN_CAP_SECS:-720}"
RTT="${WAN_RTT:-40ms}"
LOSS="${WAN_LOSS:-0.1%}"
# Empty: the namespaces inherit the machine's default congestion control (bbr on the machine
# of the book's table). A namespace may only pick one of tcp_allowed_congestion_control, so
# another choice is added to that list (in the root namespace) for the run and restored after.
CC="${WAN_CC:-}"
ALLOWED_CC="$(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)"
OUT="${WAN_OUT:-$ROOT/runs/wan}"
EVAL_LIMIT="${WAN_EVAL_LIMIT:-500}"
# Validation windows per measurement (the first 48 of the split, whatever the batch size).
EVAL_WINDOWS=48
WORKERS=4
PORT=8700
PROBE="$ROOT/tests/wan-probe.py"
if [ $# -eq 0 ]; then
  set -- probe:50mbit single async:50mbit diloco-4:50mbit diloco-16:50mbit diloco-64:50mbit \
    async:10mbit diloco-16:10mbit
fi
[ "$(id -u)" = 0 ] || { echo "wan.sh needs root (network namespaces, TAP devices)" >&2; exit 1; }
if [ -z "${BITNET:-}" ]; then
  nice -n 19 cargo build -q --release -p bitnet-cli
  BITNET="$ROOT/target/release/bitnet"
fi
if [ -z "${LINKEM:-}" ]; then
  nice -n 19 cargo build -q --release -p bitnet-linkem
  LINKEM="$ROOT/target/release/bitnet-linkem"
fi
mkdir -p "$OUT"
DATA="$OUT/data"
NAMESPACES=(bnwan-c)
for i in $(seq "$WORKERS"); do NAMESPACES+=("bnwan-w$i"); done
PIDS=()
LINKEM_PID=""

teardown() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  if [ -n "$LINKEM_PID" ]; then
    kill -TERM "$LINKEM_PID" 2>/dev/null || true
    wait "$LINKEM_PID" 2>/dev/null || true
    LINKEM_PID=""
  fi
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  echo "$ALLOWED_CC" >/proc/sys/net/ipv4/tcp_allowed_congestion_control
}
trap teardown EXIT
if [ -n "$CC" ] && ! grep -qw "$CC" <<<"$ALLOWED_CC"; then
  echo "$ALLOWED_CC $CC" >/proc/sys/net/ipv4/tcp_allowed_congestion_control
fi

now_ms() { date +%s%3N; }

# Starts the emulator with one link per worker at RATE and wires up the namespaces.
network_up() {
  local rate="$1" dir="$2" links=()
  for i in $(seq "$WORKERS"); do links+=(--link "w$i:w${i}c:w${i}w"); done
  for ns in "${NAMESPACES[@]}"; do
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    if [ -n "$CC" ]; then ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$CC"; fi
  done
  # The emulator is not niced: it is the network, and uses a few percent of a core.
  "$LINKEM" "${links[@]}" --rate "$rate" --rtt "$RTT" --loss "$LOSS" --stats "$dir/links.json" \
    >"$dir/linkem.out" 2>"$dir/linkem.err" &
  LINKEM_PID=$!
  for _ in $(seq 100); do grep -q ready "$dir/linkem.out" 2>/dev/null && break; sleep 0.1; done
  grep -q ready "$dir/linkem.out" || { cat "$dir/linkem.err" >&2; exit 1; }
  ip -n bnwan-c link add br0 type bridge
  ip -n bnwan-c addr add 10.77.0.1/24 dev br0
  ip -n bnwan-c link set br0 up
  for i in $(seq "$WORKERS"); do
    ip link set "w${i}c" netns bnwan-c
    ip -n bnwan-c link set "w${i}c" master br0 up
    ip link set "w${i}w" netns "bnwan-w$i"
    ip -n "bnwan-w$i" addr add "10.77.0.1$i/24" dev "w${i}w"
    ip -n "bnwan-w$i" link set "w${i}w" up
  done
}

# Stops the emulator (it writes links.json) and removes the namespaces.
network_down() {
  kill -TERM "$LINKEM_PID"
  wait "$LINKEM_PID" || true
  LINKEM_PID=""
  for ns in "${NAMESPACES[@]}"; do ip netns del "$ns"; done
}

# Round trip and TCP goodput from worker 1 to the coordinator's namespace, loss-free and lossy,
# with CUBIC and BBR.
probe_case() {
  local rate="$1" dir="$OUT/probe-$1"
  rm -rf "$dir" && mkdir -p "$dir"
  local mbytes=$((${rate%mbit} / 2))
  for loss in 0% "$LOSS"; do
    LOSS="$loss" network_up "$rate" "$dir"
    ip netns exec bnwan-c python3 "$PROBE" serve 10.77.0.1 9000 &
    PIDS+=($!)
    sleep 0.5
    {
      echo "link $rate, rtt $RTT, loss $loss:"
      ip netns exec bnwan-w1 python3 "$PROBE" rtt 10.77.0.1 9000 40
      ip netns exec bnwan-w1 python3 "$PROBE" get 10.77.0.1 9000 "$mbytes" cubic
      ip netns exec bnwan-w1 python3 "$PROBE" get 10.77.0.1 9000 "$mbytes" bbr
    } | tee -a "$dir/probe.txt"
    kill -TERM "${PIDS[@]}"
    wait "${PIDS[@]}" 2>/dev/null || true
    PIDS=()
    network_down
  done
}

# Seconds from START_MS to the first validation row at or below the target, or "".
time_to_target() {
  python3 - "$1" "$2" "$TARGET" <<'EOF'
import json, sys
path, start, target = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    rows = [json.loads(l) for l in open(path) if l.strip()]
except (FileNotFoundError, json.JSONDecodeError):
    rows = []
hits = [r for r in rows if r.get("val_loss") is not None and r["val_loss"] <= target]
print(f"{(hits[0]['time_ms'] - start) / 1000:.0f}" if hits else "")
EOF
}

# The newest training checkpoint of a run directory.
newest_checkpoint() { ls -t "$1"/checkpoints/step-*.safetensors 2>/dev/null | head -1; }

# Appends one row of the table: loss and intent accuracy of CHECKPOINT, the link's bytes.
report() {
  local dir="$1" mode="$2" h="$3" link="$4" reached="$5" versions="$6" ckpt
  ckpt="$(newest_checkpoint "$dir/run")"
  nice -n 19 "$BITNET" eval --checkpoint "$ckpt" --limit "$EVAL_LIMIT" --out "$dir/eval.json" \
    >"$dir/eval.log" 2>&1
  python3 - "$dir" "$mode" "$h" "$link" "$reached" "$versions" "$CAP" <<'EOF' | tee -a "$OUT/table.md"
import json, os, sys
d, mode, h, link, reached, versions, cap = sys.argv[1:]
ev = json.load(open(os.path.join(d, "eval.json")))
wire = "n/a"
if os.path.exists(os.path.join(d, "links.json")):
    links = json.load(open(os.path.join(d, "links.json")))["links"]
    on_wire = lambda h: h["offered_bytes"] - h["overflow_bytes"]
    down = sum(on_wire(l["a_to_b"]) for l in links) / len(links) / 1e6
    up = sum(on_wire(l["b_to_a"]) for l in links) / len(links) / 1e6
    wire = f"{down + up:,.0f} ({down:,.0f} down, {up:,.0f} up)"
time = f"{reached} s" if reached else f"not reached in {cap} s"
intent = ev.get("intent_accuracy")
intent = f"{intent * 100:.2f}%" if isinstance(intent, (int, float)) else "n/a"
print(f"| {mode} | {h} | {link} | {time} | {wire} | {ev.get('val_loss', ev.get('loss')):.4f} "
      f"| {intent} | {versions} |")
EOF
}

# Polls until the target, the cap, or the end of the run (PIDS_TO_WATCH all gone).
wait_for_target() {
  local metrics="$1" start="$2" reached=""
  shift 2
  while true; do
    reached="$(time_to_target "$metrics" "$start")"
    [ -n "$reached" ] && break
    [ $(($(now_ms) - start)) -ge $((CAP * 1000)) ] && break
    local alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 1
  done
  echo "$reached"
}

single_case() {
  local dir="$OUT/single"
  rm -rf "$dir" && mkdir -p "$dir"
  local start
  start="$(now_ms)"
  # One process, 2 threads: validation and a checkpoint every 100 steps (about 10 s here).
  nice -n 19 "$BITNET" train configs/truckmate-small.toml --no-env --quiet \
    --set data.dir="$DATA" --set run.dir="$dir/run" --set train.threads=2 \
    --set train.eval_every=100 --set train.checkpoint_every=100 --set train.keep_checkpoints=2 \
    --eval-batches $((EVAL_WINDOWS / 8)) >"$dir/train.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local reached
  reached="$(wait_for_target "$dir/run/metrics.jsonl" "$start" "$pid")"
  # The checkpoint of the step that reached the target follows its validation row.
  sleep 3
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  PIDS=()
  local steps
  steps="$(python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(r[-1]["step"])' "$dir/run/metrics.jsonl")"
  report "$dir" "one process (2 threads)" "" "none" "$reached" "$steps steps"
}

fleet_case() {
  local mode="$1" h="$2" rate="$3" name dir base batch
  name="$mode${h:+-$h}-$rate"
  dir="$OUT/$name"
  rm -rf "$dir" && mkdir -p "$dir"
  local sets=(--set data.dir="$DATA" --set run.dir="$dir/run" --set train.threads=1
    --set transport.bind="10.77.0.1:$PORT" --set transport.allow_plain_http=true
    --set coordinator.eval_every_secs=10 --set coordinator.checkpoint_every_secs=0
    --set run.local_workers=0)
  if [ "$mode" = async ]; then
    base=configs/truckmate-small.toml batch=8
  else
    base=configs/experiments/diloco.toml batch=3
    sets+=(--set train.inner_steps="$h")
  fi
  sets+=(--set coordinator.eval_batches=$((EVAL_WINDOWS / batch)))
  "$BITNET" config show "$base" --no-env "${sets[@]}" --toml >"$dir/run.toml"
  for i in $(seq "$WORKERS"); do
    "$BITNET" keys add "$dir/run.toml" --no-env --id "w$i" --out "$dir/w$i.json" >/dev/null
  done
  network_up "$rate" "$dir"
  ip netns exec bnwan-c nice -n 19 "$BITNET" coordinator "$dir/run.toml" --no-env \
    >"$dir/coordinator.log" 2>&1 &
  local coord=$!
  PIDS+=("$coord")
  for _ in $(seq 600); do [ -f "$dir/run/coordinator.url" ] && break; sleep 0.1; done
  local start workers=()
  start="$(now_ms)"
  for i in $(seq "$WORKERS"); do
    ip netns exec "bnwan-w$i" nice -n 19 "$BITNET" worker "$dir/run.toml" --no-env \
      --coordinator "http://10.77.0.1:$PORT" --credentials "$dir/w$i.json" --exit-when-done \
      >"$dir/w$i.log" 2>&1 &
    workers+=($!)
    PIDS+=($!)
  done
  local reached
  reached="$(wait_for_target "$dir/run/metrics.jsonl" "$start" "$coord" "${workers[@]}")"
  # Workers first (each hands its task back), then the coordinator (a snapshot and a checkpoint).
  for w in "${workers[@]}"; do kill -TERM "$w" 2>/dev/null || true; done
  for w in "${workers[@]}"; do wait "$w" 2>/dev/null || true; done
  kill -TERM "$coord" 2>/dev/null || true
  wait "$coord" 2>/dev/null || true
  PIDS=()
  network_down
  local versions
  versions="$(python3 -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(r[-1]["step"])' "$dir/run/metrics.jsonl")"
  local label="async-sgd"
  [ "$mode" = diloco ] && label="DiLoCo"
  report "$dir" "$label" "${h:-}" "$rate, $RTT, $LOSS" "$reached" "$versions versions"
}

nice -n 19 "$BITNET" tokenize-corpus configs/truckmate-small.toml --no-env \
  --set data.dir="$DATA" >"$OUT/tokenize.log" 2>&1
if [ ! -s "$OUT/table.md" ]; then
  {
    echo "| mode | H | link | wall-clock to val loss $TARGET | MB per worker on the wire | val loss (whole split) | intent ($EVAL_LIMIT examples) | optimizer steps |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
  } >"$OUT/table.md"
fi
for case in "$@"; do
  echo "== $case ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  case "$case" in
    probe:*) probe_case "${case#probe:}" ;;
    single) single_case ;;
    async:*) fleet_case async "" "${case#async:}" ;;
    diloco-*:*) h="${case#diloco-}"; fleet_case diloco "${h%%:*}" "${case#*:}" ;;
    *) echo "unknown case $case" >&2; exit 1 ;;
  esac
done
