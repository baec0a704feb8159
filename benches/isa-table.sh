#!/usr/bin/env bash
# The per-instruction-set training table of the kernel chapter: `bitnet bench train` with the
# kernel capped at each path (BITNET_ISA=scalar|avx2|avx512, avx-vnni and amx where the CPU
# has them) against the PyTorch reference
# (../shared/reference/torch_bitnet.py) capped the same way (ATEN_CPU_CAPABILITY for ATen's
# own kernels, ONEDNN_MAX_CPU_ISA for oneDNN's and MKL_ENABLE_INSTRUCTIONS for MKL's: on an
# Intel CPU, PyTorch's fp32 matmuls go to MKL, which ignores the other two), and PyTorch's best
# CPU configuration (torch.compile + bf16 autocast), in alternating passes on one machine. Only ratios of the same pass mean anything on a machine whose
# speed drifts; run it on a quiet one.
#
#   benches/isa-table.sh [PASSES] [OUT_DIR]     (defaults: 2, runs/isa-table)
#
# Needs a release build (`cargo build --release -p bitnet-cli`) and `pip install torch`.
# Writes OUT_DIR/results.jsonl (one line per run, both tools) and OUT_DIR/table.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PASSES=${1:-2}
OUT=${2:-runs/isa-table}
BITNET=${BITNET:-target/release/bitnet}
TORCH=${TORCH:-../shared/reference/torch_bitnet.py}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
JSON="$OUT/results.jsonl"
: >"$JSON"
[ -x "$BITNET" ] || { echo "no $BITNET: cargo build --release -p bitnet-cli" >&2; exit 1; }
python3 -c 'import torch' || { echo "PyTorch is missing: pip install torch" >&2; exit 1; }

ours() { # PRESET ISA STEPS WARMUP PASS [THREADS]
  local t=${6:-$THREADS}
  echo "== pass $5: bitnet $1 b8 isa=$2 threads=$t"
  BITNET_ISA=$2 "$BITNET" bench train --preset "$1" --batch 8 --threads "$t" --steps "$3" \
    --warmup "$4" --json "$JSON" --label "pass=$5 tool=bitnet isa=$2" --log warn | tail -2
}
torch_run() { # PRESET CAP STEPS WARMUP PASS [extra args]
  local preset=$1 cap=$2 steps=$3 warmup=$4 pass=$5
  shift 5
  echo "== pass $pass: torch $preset b8 cap=$cap $*"
  local env=()
  if [ "$cap" = avx2 ]; then env=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2); fi
  env "${env[@]}" python3 "$TORCH" --preset "$preset" --batch 8 --threads "$THREADS" \
    --steps "$steps" --warmup "$warmup" --json "$JSON" \
    --label "pass=$pass tool=torch cap=$cap $*" "$@" | grep RESULT
}

# The AMX level runs only where the CPU has AMX tiles and the OS grants them, the AVX-VNNI one
# only where it has AVX-VNNI (`avx2` alone is what AMD Zen 2 and Zen 3 run).
has_level() {
  BITNET_ISA=$1 "$BITNET" bench train --preset tiny --steps 1 --warmup 0 --log error >/dev/null 2>&1
}
AMX=0
if has_level amx; then AMX=1; fi
VNNI=0
if has_level avx-vnni; then VNNI=1; fi
for pass in $(seq 1 "$PASSES"); do
  if [ "$AMX" = 1 ]; then ours small amx 10 3 "$pass"; fi
  ours small avx512 10 3 "$pass"
  torch_run small default 20 3 "$pass"
  ours small avx2 10 3 "$pass"
  if [ "$VNNI" = 1 ]; then ours small avx-vnni 10 3 "$pass"; fi
  torch_run small avx2 20 3 "$pass"
  torch_run small default 20 5 "$pass" --compile --amp-bf16
  ours small avx512 10 3 "$pass" 1
  if [ "$AMX" = 1 ]; then ours medium amx 5 2 "$pass"; fi
  ours medium avx512 5 2 "$pass"
  torch_run medium default 5 2 "$pass"
  ours medium avx2 5 2 "$pass"
  if [ "$VNNI" = 1 ]; then ours medium avx-vnni 5 2 "$pass"; fi
  torch_run medium avx2 5 2 "$pass"
  torch_run medium default 5 3 "$pass" --compile --amp-bf16
done
# The scalar path (what a CPU without AVX2 or NEON runs) once: it is 20-100x slower.
ours small scalar 2 1 1
ours medium scalar 1 0 1

python3 - "$JSON" >"$OUT/table.md" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def key(r):
    label = dict(kv.split("=", 1) for kv in r.get("label", "").split() if "=" in kv)
    extra = " ".join(w for w in r.get("label", "").split() if "=" not in w)
    return label, extra
table = {}
for r in rows:
    label, extra = key(r)
    preset = r.get("preset")
    name = f"bitnet {label.get('isa')}" if label.get("tool") == "bitnet" else \
        f"torch {label.get('cap')}{' ' + extra if extra else ''}"
    threads = r.get("threads")
    table.setdefault((preset, threads), {}).setdefault(name, {})[label.get("pass")] = float(r["tokens_per_s"])
print("| preset b8, threads | run | " + " | ".join(f"pass {p}" for p in sorted({p for c in table.values() for n in c.values() for p in n})) + " |")
for (preset, threads), runs in sorted(table.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
    for name, by_pass in sorted(runs.items()):
        cells = " | ".join(f"{v:,.0f}" for _, v in sorted(by_pass.items()))
        print(f"| {preset}, {threads} | {name} | {cells} |")
print()
print("Ratios, per pass (median over passes):")
for (preset, threads), runs in sorted(table.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
    pairs = [("bitnet avx2", "torch avx2"), ("bitnet avx-vnni", "torch avx2"), ("bitnet avx512", "torch default"),
             ("bitnet avx512", "torch default --compile --amp-bf16"),
             ("bitnet amx", "torch default"), ("bitnet amx", "torch default --compile --amp-bf16"),
             ("bitnet amx", "bitnet avx512"), ("bitnet scalar", "torch avx2")]
    for a, b in pairs:
        if a in runs and b in runs:
            common = sorted(set(runs[a]) & set(runs[b]))
            if not common:
                # scalar runs once: compare with the first pass of the other
                common_b = sorted(runs[b])
                if not common_b:
                    continue
                rs = [runs[a][p] / runs[b][common_b[0]] for p in runs[a]]
            else:
                rs = [runs[a][p] / runs[b][p] for p in common]
            print(f"- {preset}, {threads} threads: {a} / {b}: " + ", ".join(f"{x:.2f}x" for x in rs)
                  + f" (median {statistics.median(rs):.2f}x)")
EOF
cat "$OUT/table.md"
