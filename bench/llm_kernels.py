"""Tuned multi-LoRA shrink and expand against vLLM's default configurations, and tuned flash
attention against torch's scaled_dot_product_attention (which picks FlashAttention, cuDNN or
the memory-efficient kernel).

    .venv/bin/python bench/llm_kernels.py --device cuda:0 --part lora --rank 16 [--trials 40]
    .venv/bin/python bench/llm_kernels.py --device cuda:0 --part lora --rank 64 --append
    .venv/bin/python bench/llm_kernels.py --device cuda:0 --part attention --append
    .venv/bin/python bench/llm_kernels.py --device cpu --smoke      # the interpreter, tiny shapes

LoRA: Llama-3-8B's projections at tensor parallelism 1 (hidden 4096, intermediate 14336):
qkv (shrink K=4096 into 3 slices; expand into 3 slices of the widest, 4096: vLLM looks up GQA's
q, k and v by their widest), o (4096 -> 4096), gate_up (4096 -> 2 x 14336), down (14336 ->
4096), for batches of M = 1, 8, 32, 128 and 512 tokens over min(M, 4) adapters. Each key is tuned
with `tuner tune`'s code path (the harness, the default strategy, --trials, the final
re-measurement) in a fresh database, then the tuned configuration and vLLM's default (this
kernel's default(): `get_lora_op_configs` without a tuned file) are timed here by one timer
(CUDA events with the L2 flushed; perf_counter on the interpreter) in --rounds interleaved
rounds, each output checked against the reference. Both run this project's kernels, which follow
vLLM's (search_spaces/lora_*.py); vLLM itself is not installed here.

Attention: batch 4 x 32 heads, HEAD_DIM 128, N_CTX 512 to 8192, causal and full: tuned, the
kernel's default and SDPA on the same q, k, v.

Writes bench/results/llm_kernels-<device class>.{json,md}; --append merges into them (one GPU call
is 10 minutes: run the parts one by one).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
# Llama-3-8B at TP 1: (projection, shrink K, expand N, slices)
LLAMA3_8B = (("qkv", 4096, 4096, 3), ("o", 4096, 4096, 1), ("gate_up", 4096, 14336, 2), ("down", 14336, 4096, 1))
MS = (1, 8, 32, 128, 512)
ATTENTION = [{"BH": 4 * 32, "N_CTX": n, "HEAD_DIM": 128, "STAGE": st} for n in (512, 1024, 2048, 4096, 8192)
             for st in (3, 1)]
SMOKE = {"lora_shrink": [{"M": 8, "K": 64, "RANK": 16, "SLICES": 2, "LORAS": 2}],
         "lora_expand": [{"M": 8, "N": 64, "RANK": 16, "SLICES": 2, "LORAS": 2}],
         "flash_attention": [{"BH": 2, "N_CTX": 64, "HEAD_DIM": 16, "STAGE": 3}]}


def keys_for(args) -> dict[str, list[dict]]:
    if args.smoke:
        return SMOKE
    if args.part == "attention":
        return {"flash_attention": ATTENTION}
    lora = [(m, proj) for proj in LLAMA3_8B for m in MS]
    return {"lora_shrink": [{"M": m, "K": k, "RANK": args.rank, "SLICES": s, "LORAS": min(m, 4)} for m, (_, k, _, s) in lora],
            "lora_expand": [{"M": m, "N": n, "RANK": args.rank, "SLICES": s, "LORAS": min(m, 4)} for m, (_, _, n, s) in lora]}


def tune(kernel: str, keys: list, trials: int, device: str) -> dict:
    """`tuner tune` (in-process, the CLI's code path) for the kernel's keys: key hash -> outcome."""
    from tuner import settings as settings_mod
    from tuner.request import TuneRequest
    from tuner.tune import prepare, tune_local

    plan = prepare(TuneRequest(kernel=kernel, keys=tuple(keys), trials=trials), settings_mod.get(), device)
    return {o.key.stable_hash: o for o in tune_local(plan).keys}


def contenders(spec, key, target, inputs, tuned_config: dict) -> dict:
    launch = {"tuned": lambda: spec.launch(tuned_config, inputs),
              "default": lambda: spec.launch(spec.default(key, target), inputs)}
    if spec.name == "flash_attention":
        import torch

        q, k, v, causal = inputs
        launch["sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return launch


def run_key(spec, key, outcome, target, args) -> dict:
    import torch

    from harness.timing import interleaved

    inputs = spec.make_inputs(key, args.device, 0)
    launch = contenders(spec, key, target, inputs, outcome.config)
    expected = spec.reference(inputs).float()
    atol, rtol = spec.tolerances[key.dtype]
    row: dict = {"kernel": spec.name, "dims": key.dim_map, "dtype": key.dtype}
    facts = {"tuned": {"config": outcome.config, "trials": outcome.trials, "tuning_s": outcome.search_s + outcome.finalize_s},
             "default": {"config": spec.default(key, target)}, "sdpa": {}}
    for name, fn in launch.items():
        got = fn().float()
        if args.device != "cpu":
            torch.cuda.synchronize()
        facts[name]["correct"] = bool(torch.allclose(got, expected, atol=atol, rtol=rtol))
    for name, rounds in interleaved(launch, args.device, args.rounds).items():
        row[name] = {**facts[name], "ms": statistics.median(rounds), "round_ms": rounds}
    row["speedup_over_default"] = row["default"]["ms"] / row["tuned"]["ms"]
    if "sdpa" in row:
        row["speedup_over_sdpa"] = row["sdpa"]["ms"] / row["tuned"]["ms"]
    print(json.dumps({"kernel": spec.name, **key.dim_map, **{n: row[n]["ms"] for n in launch}}), flush=True)
    return row


def markdown(doc: dict) -> str:
    out = [f"# Tuned LLM kernels on {doc['device_class']} ({doc['date'][:10]})", "",
           f"Timing: {doc['timing']}; {doc['dtype']}, {doc['trials']} trials a key, {doc['rounds']} interleaved rounds "
           "(median of the round medians). *default* is vLLM's configuration for the LoRA kernels "
           "(`get_lora_op_configs` without a tuned file) and the tutorial's for attention.", "",
           "| kernel | key | tuned ms | default ms | sdpa ms | tuned vs default | tuned vs sdpa | all correct |",
           "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in doc["rows"]:
        key = ",".join(f"{k}={v}" for k, v in r["dims"].items())
        sdpa = r.get("sdpa", {})
        correct = all(r[n]["correct"] for n in ("tuned", "default", "sdpa") if n in r)
        sdpa_ms, vs_sdpa = (f"{sdpa['ms']:.4f}", f"{r['speedup_over_sdpa']:.2f}x") if sdpa else ("-", "-")
        out.append(f"| {r['kernel']} | {key} | {r['tuned']['ms']:.4f} | {r['default']['ms']:.4f} | {sdpa_ms} | "
                   f"{r['speedup_over_default']:.2f}x | {vs_sdpa} | {correct} |")
    for kernel in sorted({r["kernel"] for r in doc["rows"]}):
        sp = [r["speedup_over_default"] for r in doc["rows"] if r["kernel"] == kernel]
        out.append(f"\n{kernel}: geometric mean speedup over the default {statistics.geometric_mean(sp):.2f}x "
                   f"over {len(sp)} keys")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--part", choices=("lora", "attention"), default="lora")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the interpreter")
    ap.add_argument("--trials", type=int, default=None, help="per key (default 40; smoke 3)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one tiny key per kernel on the interpreter")
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true", help="merge into --out's rows (a key measured again replaces its row)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.trials = args.trials or (3 if args.smoke else 40)
    # a fresh database: tuning from nothing, never a previous run's study
    os.environ["TUNER_HOME"] = tempfile.mkdtemp(prefix="tuner-llm-kernels-")
    os.environ.pop("TUNER_DB_URL", None)

    from devices.probe import probe
    from search_spaces import registry

    dc, _ = probe(args.device)
    rows = []
    for kernel, dims_list in keys_for(args).items():
        spec = registry.get(kernel)
        keys = [spec.make_key(d, args.dtype) for d in dims_list]
        outcomes = tune(kernel, keys, args.trials, args.device)
        for key in keys:
            if outcomes[key.stable_hash].config is None:
                sys.exit(f"tuning {kernel} {key.label()} stored no best configuration: see `tuner status`")
            rows.append(run_key(spec, key, outcomes[key.stable_hash], dc.target, args))
    doc = {"format": "tuner-llm-kernels", "version": 1, "date": datetime.now(timezone.utc).isoformat(),
           "device_class": dc.slug, "device_name": dc.name, "dtype": args.dtype, "trials": args.trials,
           "rounds": args.rounds, "timing": "triton-interpreter (CPU; not GPU figures)" if dc.target.is_interpreter
           else "CUDA events, L2 flushed", "rows": rows}
    out = Path(args.out) if args.out else RESULTS / f"llm_kernels-{dc.slug}{'-smoke' if args.smoke else ''}.json"
    if args.append and out.exists():
        new = {(r["kernel"], json.dumps(r["dims"], sort_keys=True)) for r in rows}
        doc["rows"] = [r for r in json.loads(out.read_text())["rows"]
                       if (r["kernel"], json.dumps(r["dims"], sort_keys=True)) not in new] + rows
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
