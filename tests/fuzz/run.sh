#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS_PER_TARGET seconds (default 60), then prints
# executions and crashes per target. Exits non-zero when any target crashed (a panic, an
# allocation over the limit, a timeout or a sanitizer report); the input that did it is kept in
# tests/fuzz/artifacts/<target>/.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Corpora grow in
# tests/fuzz/corpus/<target>/ (ignored by git); each run first writes the target's seeds there,
# made by the real encoders. Environment: FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT (seconds per
# input, default 25), FUZZ_HTTP=0 (leave out the HTTP transport's targets, half the build).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
secs="${1:-60}"
shift || true
rss_mb="${FUZZ_RSS_MB:-2048}"
timeout_s="${FUZZ_TIMEOUT:-25}"

# Longest input per target: a few times its seeds, so mutations can grow them but every run
# stays fast. Default 4096.
max_len() {
  case "$1" in
    http_range) echo 256 ;;
    http_token | credentials) echo 2048 ;;
    checkpoint | weight_blob | tokenizer_word) echo 16384 ;;
    tokenizer_bpe) echo 65536 ;;
    *) echo 4096 ;;
  esac
}

features=()
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd "$here/fuzz_targets" && ls *.rs | sed 's/\.rs$//' | sort)
fi
if [ "${FUZZ_HTTP:-1}" = 0 ]; then
  features=(--no-default-features)
  mapfile -t targets < <(printf '%s\n' "${targets[@]}" | grep -v '^http_')
fi

echo "== building ${#targets[@]} fuzz targets (nightly, address sanitizer)"
(cd "$root" && cargo +nightly fuzz build --fuzz-dir tests/fuzz --codegen-units 16 "${features[@]}") || {
  echo "build failed" >&2
  exit 2
}
bin_dir="$here/target/x86_64-unknown-linux-gnu/release"
mkdir -p "$here/logs"

failed=0
rows=()
for t in "${targets[@]}"; do
  corpus="$here/corpus/$t"
  artifacts="$here/artifacts/$t"
  log="$here/logs/$t.log"
  mkdir -p "$corpus" "$artifacts"
  before=$(find "$artifacts" -type f | wc -l)
  echo "== $t: ${secs}s (max_len $(max_len "$t"), rss limit ${rss_mb} MB)"
  start=$(date +%s)
  BITNET_FUZZ_SEEDS="$corpus" "$bin_dir/$t" "$corpus" \
    -artifact_prefix="$artifacts/" \
    -max_total_time="$secs" \
    -max_len="$(max_len "$t")" \
    -rss_limit_mb="$rss_mb" \
    -timeout="$timeout_s" \
    -print_final_stats=1 >"$log" 2>&1
  rc=$?
  took=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  if [ -z "$execs" ]; then
    # Killed before the final stats: the last status line says how far it got.
    execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
  fi
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  units=$(find "$corpus" -type f | wc -l)
  crashes=$(($(find "$artifacts" -type f | wc -l) - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes=1; fi
  if [ "$crashes" -ne 0 ]; then
    failed=1
    echo "   CRASH (exit $rc), see $log and $artifacts/"
    grep -m3 -E 'panicked|ERROR: (libFuzzer|AddressSanitizer)|out-of-memory|timeout' "$log" | sed 's/^/   /'
  fi
  rows+=("$(printf '%-16s %6ss %12s %10s %8s %8s' "$t" "$took" "${execs:-?}" "${speed:-?}" "$units" "$crashes")")
done

echo
printf '%-16s %7s %12s %10s %8s %8s\n' target time executions exec/s corpus crashes
printf '%s\n' "${rows[@]}"
exit "$failed"
