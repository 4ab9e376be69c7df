#!/usr/bin/env bash
# Creates (once) the Python venv that provides libtorch (torch wheel) for tch, plus the
# golden-reference stack (transformers, gguf) and the benchmark peer (scikit-learn, benches/peer).
# Kept in the per-user cache (scripts/env.sh) so clones and CI reuse it. The ready-stamp is named by
# a hash of the pins and the Python version, so changing a pin rebuilds the venv instead of reusing
# an old one.
set -euo pipefail
# The interpreter the venv is made from, found before env.sh puts the venv itself first on PATH
# (readlink also turns a venv's python symlink back into the base interpreter).
PYTHON=$(readlink -f "$(command -v python3)")
source "$(dirname "$0")/env.sh"
VENV="$VIRTUAL_ENV"
PINS=(torch==2.11.0 transformers==5.24.0 gguf==0.19.0 accelerate==1.15.0 safetensors==0.8.0 numpy==2.4.6
      scikit-learn==1.9.1)
KEY=$({ printf '%s\n' "${PINS[@]}"; "$PYTHON" --version; } | sha256sum | cut -c1-16)
STAMP="$VENV/.ckpt-scan-ready-$KEY"
if [ -f "$STAMP" ]; then exit 0; fi
if [ -d "$VENV" ]; then
  echo "setup-venv: $VENV was built from other pins (or not finished); rebuilding it" >&2
  rm -rf "$VENV"
fi
echo "setup-venv: installing ${PINS[*]} into $VENV (about 5 GB, a few minutes on first use)" >&2
mkdir -p "$CKPT_SCAN_CACHE"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "${PINS[@]}"
"$VENV/bin/python" - <<'PY'
import torch, transformers, gguf, sklearn
assert torch.__version__.split('+')[0] == "2.11.0", torch.__version__
print("venv ok: torch", torch.__version__, "transformers", transformers.__version__)
PY
touch "$STAMP"
