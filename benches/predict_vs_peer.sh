#!/usr/bin/env bash
# ckpt-scan `predict` against the Python peer (benches/peer/predict_peer.py) on the same checkpoint
# and the same token ids, alternating tool and peer runs in one sitting; prints each run and the
# medians (wall, CPU = user + sys, peak RSS) with the ratio peer ÷ tool, and the load average
# before and after. Both runs' R² are compared (max |Δ|) so the timing compares equal work.
#
# usage: benches/predict_vs_peer.sh MODEL [RUNS] [-- predict flags...]
#   MODEL: an HF folder or a .gguf file (both tools read either)
#   RUNS:  pairs of runs (default 3)
#   flags: passed to `ckpt-scan predict` (default: --tokens 32768 --seq-len 256 --max-refs 5)
# env: CKPT_SCAN_BIN (default: the release build), CKPT_SCAN_THREADS (default: the tool's own choice)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
model=$1
runs=${2:-3}
shift $(( $# >= 2 ? 2 : 1 ))
[[ ${1:-} == -- ]] && shift
flags=("$@")
((${#flags[@]})) || flags=(--tokens 32768 --seq-len 256 --max-refs 5)
bin=${CKPT_SCAN_BIN:-$CARGO_TARGET_DIR/release/ckpt-scan}
[[ -x $bin ]] || { echo "no binary at $bin (cargo build --release)" >&2; exit 1; }
max_refs=5
for ((i = 0; i < ${#flags[@]}; i++)); do
  [[ ${flags[i]} == --max-refs ]] && max_refs=${flags[i + 1]}
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure NAME CMD...: appends "wall cpu rss_mb" to $work/NAME.
measure() {
  local name=$1
  shift
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$@" >"$work/$name.log" 2>&1 ||
    { cat "$work/$name.log" >&2; exit 1; }
  awk '{ printf "%.2f %.2f %.0f\n", $1, $2 + $3, $4 / 1024 }' "$work/time" >>"$work/$name"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo); bin $bin"
echo "model: $model; predict ${flags[*]}; $runs pairs"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((run = 1; run <= runs; run++)); do
  rm -rf "$work/out"
  measure tool "$bin" --quiet --device cpu predict "$model" "${flags[@]}" --out "$work/out"
  measure peer python benches/peer/predict_peer.py "$model" "$work/out/tokens.safetensors" \
    --max-refs "$max_refs" --out "$work/peer.csv"
  diff=$(python - "$work/out/predictability.csv" "$work/peer.csv" <<'PY'
import csv, sys
tool = {(r["kind"], r["layer"], r["target_head"], r["k"]): r for r in csv.DictReader(open(sys.argv[1]))}
worst, same = 0.0, True
for r in csv.DictReader(open(sys.argv[2])):
    t = tool[(r["kind"], r["layer"], r["target_head"], r["k"])]
    same &= t["reference_heads"] == r["reference_heads"]
    for c in ("r2_insample", "r2_heldout"):
        worst = max(worst, abs(float(t[c]) - float(r[c])))
print(f"{worst:.1e}{'' if same else ' (references differ)'}")
PY
)
  echo "run $run: tool $(tail -1 "$work/tool") | peer $(tail -1 "$work/peer") (wall s, cpu s, rss MB) | max |ΔR²| $diff | peer phases $(tail -1 "$work/peer.log")"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for col in 1 2 3; do
  t=$(cut -d' ' -f$col "$work/tool" | median)
  p=$(cut -d' ' -f$col "$work/peer" | median)
  name=$(echo "wall_s cpu_s rss_mb" | cut -d' ' -f$col)
  awk -v n="$name" -v t="$t" -v p="$p" 'BEGIN { printf "median %s: tool %s, peer %s, peer/tool %.1f×\n", n, t, p, p / t }'
done
