# Two commands are the contract (README): `make demo` and `make test`. Both do all set-up on a fresh
# machine: the Python venv that provides libtorch, the packaged data, the golden fixtures, the build.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
ENV := source scripts/env.sh &&
# The one cache root (venv, data, golden fixtures, cargo target, series, units): exported so that
# scripts/env.sh and the tool itself read the same value.
export CKPT_SCAN_CACHE ?= $(HOME)/.cache/ckpt-scan
CACHE := $(CKPT_SCAN_CACHE)
GOLDEN := $(CACHE)/golden
GOLDEN_STAMP := $(GOLDEN)/.stamp-$(shell sha256sum tests/fixtures/make_golden.py tests/fixtures/make_gguf.py tests/fixtures/harness_reference.py scripts/setup-venv.sh | sha256sum | cut -c1-16)
# The demo and the benches run the optimised build (profile.release: opt-level 3, line tables);
# `make test` stays on the dev profile (benches/README.md, "Build profiles", measures both).
BIN = $$CARGO_TARGET_DIR/release/ckpt-scan

.PHONY: demo example test venv data fixtures build lint gpu-check clean-cache

demo: venv data build series
	$(ENV) $(BIN) forward gguf:$$CKPT_SCAN_DATA/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --text "The capital of France is" --generate 8
	# The theory first: the scan's report reads its init-time check from reports/tiny/theory.
	$(ENV) $(BIN) --threads 1 --hub-cache $(SERIES_DIR) theory --no-default-sources \
	  --init hf:ckpt-scan/olmo2-tiny@stage1-step0-tokens0K --trained hf:ckpt-scan/olmo2-tiny@main \
	  --out reports/tiny/theory
	$(ENV) $(BIN) scan tiny --out reports/tiny
	@echo "report: reports/tiny/report.md (init-time check in full: reports/tiny/theory/verification.md)"

# The committed example report: the demo's scan of the built-in series, copied into the repo without
# its per-row tables (about 20 MB; `make demo` writes them to reports/tiny).
example: demo
	rm -rf reports/example.tmp && cp -r reports/tiny reports/example.tmp \
	  && cp $(SERIES_DIR)/runs/olmo2-tiny/loss.{png,svg,csv} reports/example.tmp/ \
	  && rm reports/example.tmp/{alignment_pairs,predictability,weight_r2,weight_vs_measured}.csv \
	  && cp scripts/example-readme.md reports/example.tmp/README.md \
	  && rm -rf reports/example && mv reports/example.tmp reports/example

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
	$(ENV) cargo build --release --quiet

gpu-check: build
	$(ENV) scripts/gpu-check.sh

# The built-in checkpoint series (issue 3): trained once into the per-user cache, kept afterwards.
# `train` is idempotent: a finished run of the same config returns at once, an interrupted one
# resumes, and a series trained with another config is refused (delete it to retrain).
SERIES_DIR := $(CACHE)/series
.PHONY: series
series: venv data build
	$(ENV) $(BIN) train --config tiny --out $(SERIES_DIR)
# Regenerates the checked-in verification of the init-time bound (theory/verification.md, its CSVs,
# plots and manifest): Monte Carlo grid, init:olmo2-1b (both schemes) and SmolLM2 per layer.
# One libtorch thread: the many small solves ran 4x slower per layer with two OpenMP threads on a
# loaded 2-core machine (benches/README.md).
.PHONY: theory
theory: venv data build
	$(ENV) $(BIN) --threads 1 theory --out theory
