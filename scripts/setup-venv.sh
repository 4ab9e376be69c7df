#!/usr/bin/env bash
# Creates (once) the Python venv that provides libtorch (torch wheel) for tch, plus the
# golden-reference stack (transformers, gguf). Kept in a per-user cache so clones and CI reuse it.
set -euo pipefail
CACHE="${CKPT_SCAN_CACHE:-$HOME/.cache/ckpt-scan}"
VENV="$CACHE/venv"
STAMP="$VENV/.ckpt-scan-ready-v1"
PINS=(torch==2.11.0 transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 safetensors==0.8.0 numpy==2.4.6)
if [ -f "$STAMP" ]; then exit 0; fi
mkdir -p "$CACHE"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
"$VENV/bin/python" - <<'PY'
import torch, transformers, gguf
assert torch.__version__.split('+')[0] == "2.11.0", torch.__version__
print("venv ok: torch", torch.__version__, "transformers", transformers.__version__)
PY
touch "$STAMP"
