# Sourced by the Makefile and by hand: the environment every cargo call shares, so torch-sys is
# never rebuilt because one call saw different variables (tch-rs issue #596).
CKPT_SCAN_CACHE="${CKPT_SCAN_CACHE:-$HOME/.cache/ckpt-scan}"
export CKPT_SCAN_CACHE
export VIRTUAL_ENV="$CKPT_SCAN_CACHE/venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CKPT_SCAN_CACHE/target}"
export CKPT_SCAN_DATA="${CKPT_SCAN_DATA:-$CKPT_SCAN_CACHE/data}"
