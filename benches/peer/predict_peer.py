"""The peer ckpt-scan is timed against: the linear-predictability protocol as a researcher scripts it
with the standard Python stack (research/linear_predictability.md §4-5).

1. Capture with HF transformers in f32, eager attention: Q, K and V where they enter attention
   (after the family's QK-norm and RoPE; V as projected), by wrapping the model's
   `eager_attention_forward` - `--capture rope`, ckpt-scan's default.
2. For every layer, kind and ordered pair of distinct heads, one
   `sklearn.linear_model.LinearRegression` (OLS with intercept) fitted on the fit sequences, scored
   with `sklearn.metrics.r2_score` (uniform average over output dimensions) in-sample and on the
   held-out sequences.
3. Per target head: references ranked by single-reference in-sample R² (ties: lower head index),
   then for k = 1..K a refit on the concatenated top-k references, scored the same way.

It runs on exactly the tokens ckpt-scan used (`predict` writes them to tokens.safetensors, with the
fit/held-out split in the metadata), so both compute the same numbers (tests/it/peer.rs checks them
to 1e-4) and the timing compares equal work. Arrays are f64 before fitting, as numpy's defaults give.

Usage: predict_peer.py MODEL TOKENS.safetensors --kinds q,k,v --max-refs K --out peer.csv
MODEL: an HF folder, or a .gguf file (transformers dequantises it). Prints phase timings as JSON.
"""
import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from safetensors import safe_open
from sklearn.linear_model import LinearRegression
from sklearn.metrics import r2_score
from transformers import AutoModelForCausalLM

KINDS = ("q", "k", "v")


def load_model(path):
    path = Path(path)
    if path.suffix == ".gguf":
        return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                    attn_implementation="eager").eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()


def read_tokens(path):
    with safe_open(str(path), "pt") as f:
        ids = f.get_tensor("input_ids")
        fit = int(f.metadata()["fit_sequences"])
    return ids, fit


def capture(model, ids, batch):
    """Per layer, per kind: [rows, heads, head_dim] f32, rows in (sequence, position) order."""
    module = sys.modules[type(model.model.layers[0].self_attn).__module__]
    original = module.eager_attention_forward
    store = {}

    def recording(attn, query, key, value, *args, **kwargs):
        layer = attn.layer_idx
        for kind, states in zip(KINDS, (query, key, value)):
            # [batch, heads, seq, d] -> [batch * seq, heads, d]
            rows = states.detach().transpose(1, 2).reshape(-1, states.shape[1], states.shape[3])
            store.setdefault((layer, kind), []).append(rows.float().numpy())
        return original(attn, query, key, value, *args, **kwargs)

    module.eager_attention_forward = recording
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch):
                model(ids[start:start + batch])
    finally:
        module.eager_attention_forward = original
    return {key: np.concatenate(parts) for key, parts in store.items()}


def fit_and_score(x_fit, y_fit, x_held, y_held):
    model = LinearRegression().fit(x_fit, y_fit)
    return (r2_score(y_fit, model.predict(x_fit)), r2_score(y_held, model.predict(x_held)))


def regress(vectors, fit_rows, max_refs):
    """Rows of (target, k, references, r2_insample, r2_heldout) for one layer and kind."""
    fit, held = vectors[:fit_rows].astype(np.float64), vectors[fit_rows:].astype(np.float64)
    heads = vectors.shape[1]
    single = {}
    for source in range(heads):
        for target in range(heads):
            if source != target:
                single[(source, target)] = fit_and_score(fit[:, source], fit[:, target],
                                                         held[:, source], held[:, target])
    rows = []
    for target in range(heads):
        ranked = sorted((s for s in range(heads) if s != target),
                        key=lambda s: (-np.nan_to_num(single[(s, target)][0], nan=-np.inf), s))
        for k in range(1, min(max_refs, heads - 1) + 1):
            refs = ranked[:k]
            x_fit = fit[:, refs].reshape(fit.shape[0], -1)
            x_held = held[:, refs].reshape(held.shape[0], -1)
            r2_in, r2_out = fit_and_score(x_fit, fit[:, target], x_held, held[:, target])
            rows.append((target, k, refs, r2_in, r2_out))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("tokens")
    parser.add_argument("--kinds", default="q,k,v")
    parser.add_argument("--max-refs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    kinds = args.kinds.split(",")

    start = time.perf_counter()
    model = load_model(args.model)
    ids, fit_sequences = read_tokens(args.tokens)
    loaded = time.perf_counter()
    vectors = capture(model, ids, args.batch)
    captured = time.perf_counter()
    fit_rows = fit_sequences * ids.shape[1]
    out = Path(args.out)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["kind", "layer", "target_head", "k", "reference_heads", "r2_insample", "r2_heldout"])
        for layer in range(len(model.model.layers)):
            for kind in kinds:
                for target, k, refs, r2_in, r2_out in regress(vectors[(layer, kind)], fit_rows, args.max_refs):
                    writer.writerow([kind, layer, target, k, ";".join(map(str, refs)), repr(r2_in), repr(r2_out)])
    tmp.rename(out)
    done = time.perf_counter()
    print(json.dumps({"load_s": loaded - start, "capture_s": captured - loaded, "regression_s": done - captured,
                      "total_s": done - start, "rows": int(ids.numel()), "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
