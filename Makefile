# Two commands are the contract (README): `make demo` and `make test`. Both do all set-up on a fresh
# machine: the Python venv that provides libtorch, the packaged data, the golden fixtures, the build.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/env.sh &&
CACHE ?= $(HOME)/.cache/ckpt-scan
GOLDEN := $(CACHE)/golden
GOLDEN_STAMP := $(GOLDEN)/.stamp-$(shell sha256sum tests/fixtures/make_golden.py tests/fixtures/make_gguf.py scripts/setup-venv.sh | sha256sum | cut -c1-16)
BIN = $$CARGO_TARGET_DIR/debug/ckpt-scan

.PHONY: demo test venv data fixtures build lint gpu-check clean-cache

demo: venv data build
	$(ENV) $(BIN) inspect gguf:$$CKPT_SCAN_DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | head -20
	$(ENV) $(BIN) forward gguf:$$CKPT_SCAN_DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --text "The capital of France is" --generate 8
	$(ENV) $(BIN) inspect 'init:olmo2-1b?seed=0&scheme=olmo' --headers-only | head -12
	$(ENV) $(BIN) forward 'init:olmo2-1b?seed=0&scheme=olmo' --text "The capital of France is" --generate 0
	$(ENV) $(BIN) predict gguf:$$CKPT_SCAN_DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --text mix --tokens 16384 --seq-len 128 --kinds q,k --max-refs 2 --out reports/demo/smollm2-predict
	$(ENV) $(BIN) align gguf:$$CKPT_SCAN_DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --kinds k --max-refs 2 --partners 2 --predictions reports/demo/smollm2-predict/predictability.csv --out reports/demo/smollm2-align | tail -8

test: venv data fixtures
	$(ENV) cargo fmt --check
	$(ENV) cargo clippy --all-targets --quiet -- -D warnings
	$(ENV) CKPT_SCAN_REQUIRE_FIXTURES=1 CKPT_SCAN_GOLDEN=$(GOLDEN) cargo test --all-targets

venv:
	scripts/setup-venv.sh

data:
	$(ENV) scripts/fetch-data.sh

fixtures: venv $(GOLDEN_STAMP)

# The stamp name carries the scripts' hash, so no file prerequisites: a fresh clone's newer mtimes
# must not regenerate fixtures that are already current.
$(GOLDEN_STAMP):
	$(ENV) rm -rf $(GOLDEN).tmp && mkdir -p $(GOLDEN).tmp \
	  && python tests/fixtures/make_golden.py $(GOLDEN).tmp > /dev/null 2>&1 \
	  && python tests/fixtures/make_gguf.py $(GOLDEN).tmp \
	  && touch $(GOLDEN).tmp/$(notdir $@) && rm -rf $(GOLDEN) && mv $(GOLDEN).tmp $(GOLDEN)

build: venv
	$(ENV) cargo build --quiet

gpu-check: build
	$(ENV) scripts/gpu-check.sh

# Regenerates the checked-in verification of the init-time bound (theory/verification.md, its CSVs,
# plots and manifest): Monte Carlo grid, init:olmo2-1b (both schemes) and SmolLM2 per layer.
# One libtorch thread: the many small solves ran 4x slower per layer with two OpenMP threads on a
# loaded 2-core machine (benches/README.md).
.PHONY: theory
theory: venv data build
	$(ENV) $(BIN) --threads 1 theory --out theory
