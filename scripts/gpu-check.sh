#!/usr/bin/env bash
# The CUDA check, in two halves (CI has no GPU; run it when a GPU machine is lent):
#   here:            scripts/gpu-check.sh --prepare     builds and copies stripped binaries + golden
#                                                       fixtures into .gpu/ (git-ignored, < 64 MiB)
#   on the GPU host: scripts/gpu-check.sh               with .gpu/ beside it; uses that machine's own
#                                                       torch 2.11 libraries through LD_LIBRARY_PATH
# It checks that libtorch_cuda is really loaded, runs the golden fixtures on cuda (f32, same 1e-4
# bar as on the CPU), and measures forward throughput on cuda (bf16) vs cpu (f32); one summary.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=.gpu

if [ "${1:-}" = "--prepare" ]; then
  source scripts/env.sh
  make -s fixtures
  rm -rf "$OUT_DIR" && mkdir -p "$OUT_DIR"
  cargo build --quiet --bin ckpt-scan
  cargo test --quiet --no-run --test golden 2>/dev/null
  cargo bench --quiet --no-run --profile dev --bench forward_memory 2>/dev/null
  newest() { ls -t $CARGO_TARGET_DIR/debug/deps/$1-* | grep -v '\.d$' | head -1; }
  cp "$CARGO_TARGET_DIR/debug/ckpt-scan" "$OUT_DIR/ckpt-scan"
  cp "$(newest golden)" "$OUT_DIR/golden"
  cp "$(newest forward_memory)" "$OUT_DIR/forward_memory"
  strip "$OUT_DIR"/ckpt-scan "$OUT_DIR"/golden "$OUT_DIR"/forward_memory
  cp -r "$CKPT_SCAN_CACHE/golden" "$OUT_DIR/golden-fixtures"
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  du -sh "$OUT_DIR"
  exit 0
fi

[ -x "$OUT_DIR/ckpt-scan" ] || { echo "gpu-check: $OUT_DIR/ckpt-scan missing; run scripts/gpu-check.sh --prepare first" >&2; exit 2; }
TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
summary=()
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true

# 1. libtorch_cuda loaded and a device seen: --device cuda refuses to fall back to the CPU.
if "$OUT_DIR/ckpt-scan" --device cuda --quiet inspect 'init:olmo2-1b' --headers-only >/dev/null; then
  summary+=("cuda visible to ckpt-scan: yes")
else
  summary+=("cuda visible to ckpt-scan: NO"); printf '%s\n' "${summary[@]}"; exit 1
fi

# 2. Golden fixtures on cuda in f32.
if CKPT_SCAN_TEST_DEVICE=cuda CKPT_SCAN_REQUIRE_FIXTURES=1 CKPT_SCAN_GOLDEN="$OUT_DIR/golden-fixtures" \
   "$OUT_DIR/golden" --test-threads 1 > "$OUT_DIR/golden.log" 2>&1; then
  summary+=("golden on cuda (f32, tol 1e-4): $(grep -c ' ok$' "$OUT_DIR/golden.log") passed; $(grep 'logits max' "$OUT_DIR/golden.log" | tr '\n' ';')")
else
  summary+=("golden on cuda: FAILED (see $OUT_DIR/golden.log)"); tail -30 "$OUT_DIR/golden.log"
fi

# 3. Throughput of a resident init:olmo2-1b (weights loaded once): 16 × 2048 tokens on cuda bf16,
#    2 × 2048 on cpu f32; then the layer-streamed path on cuda, weights generated as it goes.
gpu=$(CKPT_SCAN_BENCH_DEVICE=cuda "$OUT_DIR/forward_memory" --bench init:olmo2-1b 32768 2048 --resident | tail -1)
cpu=$("$OUT_DIR/forward_memory" --bench init:olmo2-1b 4096 2048 --resident | tail -1)
streamed=$(CKPT_SCAN_BENCH_DEVICE=cuda "$OUT_DIR/forward_memory" --bench init:olmo2-7b 32768 2048 | tail -1)
summary+=("$gpu" "$cpu" "$streamed")
echo "=== gpu-check summary"
printf '%s\n' "${summary[@]}"
