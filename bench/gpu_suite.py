"""The LLM shape suite: the tuned matmul vs its default, vs triton.autotune, vs torch.matmul.

    .venv/bin/python bench/gpu_suite.py --device cuda:0 [--trials 200] [--dtype bfloat16]
    .venv/bin/python bench/gpu_suite.py --device cuda:0 --shapes 16x4096x4096,4096x4096x4096 --append
    .venv/bin/python bench/gpu_suite.py --device cpu --smoke   # the interpreter, small shapes

Shapes: M in {16, 128, 1024, 4096} against the (N, K) of Llama-3-8B's projections:
(4096, 4096) q/o, (14336, 4096) gate/up, (4096, 14336) down. Per shape:
  tuned     `tuner tune` (the harness, the default `auto` strategy, --trials, the final top-k
            re-benchmark), in a fresh database; tuning_s is its wall time, process start included
  default   the kernel's default configuration; no tuning
  autotune  @triton.autotune over the Triton matmul tutorial's configuration list (the same
            list the kernel's known_good holds, unfiltered), key M, N, K; tuning_s is the wall
            time of its first call, which benchmarks every configuration
  torch     torch.matmul (cuBLAS, or hipBLASLt on ROCm); no tuning
Then all four are timed here by the same timer on the same inputs (CUDA events with the L2
flushed before every repetition; perf_counter on the interpreter) in --rounds interleaved rounds,
and each reports the median of its round medians; every output is checked against an fp32
reference. Writes bench/results/gpu_suite-<device class>.{json,md}; `tuner report suite FILE
--plot PNG` prints and plots it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LLAMA3_8B_NK = ((4096, 4096), (14336, 4096), (4096, 14336))
MS = (16, 128, 1024, 4096)
SMOKE_SHAPES = ((32, 128, 128), (64, 256, 128))


def shapes(smoke: bool, only: str | None) -> list[tuple[int, int, int]]:
    if only:  # "16x4096x4096,128x4096x4096": a part of the suite (one device call is 10 minutes)
        return [tuple(int(v) for v in s.split("x")) for s in only.split(",")]
    return list(SMOKE_SHAPES) if smoke else [(m, n, k) for n, k in LLAMA3_8B_NK for m in MS]


def tune(key, trials: int, device: str) -> dict:
    """`tuner tune` for one shape (in-process, the CLI's code path): best config and wall time."""
    from tuner import settings as settings_mod
    from tuner.request import TuneRequest
    from tuner.tune import prepare, tune_local

    t0 = time.perf_counter()
    plan = prepare(TuneRequest(kernel="matmul", keys=(key,), trials=trials), settings_mod.get(), device)
    (key_outcome,) = tune_local(plan).keys
    return {"config": key_outcome.config, "tuning_s": time.perf_counter() - t0, "trials": key_outcome.trials,
            "tuner_ms": key_outcome.median_ms}


def autotuner(device: str, target):
    """A fresh @triton.autotune over the tutorial's list, as a kernel author writes it."""
    import triton

    from harness.timing import interpreter_do_bench
    from search_spaces import registry
    from devices.targets import target_for
    from search_spaces.matmul import matmul_kernel, tutorial_configs

    spec = registry.get("matmul")
    # the interpreter's smoke run autotunes over the CUDA list too: the script as it runs on a GPU
    written_for = target_for("sm_90") if target.is_interpreter else target
    configs = [spec.triton_config(c, target.vendor) for c in tutorial_configs(written_for)]
    if device == "cpu":  # the interpreter has no device timer: do_bench's call counts on perf_counter
        return triton.autotune(configs=configs, key=["M", "N", "K"], do_bench=interpreter_do_bench)(matmul_kernel)
    return triton.autotune(configs=configs, key=["M", "N", "K"])(matmul_kernel)


def launchers(spec, key, target, inputs, tuned_config: dict, device: str) -> tuple[dict, dict]:
    """({contender: launch()}, {contender: tuning facts}) for one shape."""
    import torch
    import triton

    a, b = inputs
    (m, k), n = a.shape, b.shape[1]
    kernel = autotuner(device, target)
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    interpret = device == "cpu"

    def autotuned():
        kernel[grid](a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                     DOT_IN_FP32=interpret and a.dtype == torch.bfloat16)
        return c

    t0 = time.perf_counter()
    autotuned()  # benchmarks every configuration, then launches the best
    sync(device)
    best = kernel.best_config
    facts = {"autotune": {"tuning_s": time.perf_counter() - t0, "trials": len(kernel.configs),
                          "config": {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}},
             "default": {"config": spec.default(key, target), "tuning_s": 0.0}, "torch": {"tuning_s": 0.0}}
    default = facts["default"]["config"]
    return {"tuned": lambda: spec.launch(tuned_config, inputs), "default": lambda: spec.launch(default, inputs),
            "autotune": autotuned, "torch": lambda: torch.matmul(a, b)}, facts


def sync(device: str) -> None:
    if device != "cpu":
        import torch
        torch.cuda.synchronize()


def run_shape(m, n, k, target, args) -> dict:
    import torch

    from harness.timing import interleaved
    from search_spaces import registry

    spec = registry.get("matmul")
    key = spec.make_key({"M": m, "N": n, "K": k}, args.dtype)
    tuned = tune(key, args.trials, args.device)
    if tuned["config"] is None:
        sys.exit(f"tuning M={m},N={n},K={k} stored no best configuration (every trial failed?): see `tuner status`")
    inputs = spec.make_inputs(key, args.device, 0)
    launch, facts = launchers(spec, key, target, inputs, tuned["config"], args.device)
    facts["tuned"] = {kk: tuned[kk] for kk in ("config", "tuning_s", "trials", "tuner_ms")}
    expected = spec.reference(inputs).float()
    rtol, atol = spec.tolerances[args.dtype]
    row = {"M": m, "N": n, "K": k}
    for name, fn in launch.items():
        got = fn().float()
        sync(args.device)
        facts[name]["correct"] = bool(torch.allclose(got, expected, rtol=rtol, atol=atol))
        facts[name]["max_abs_err"] = float((got - expected).abs().max())
    for name, rounds in interleaved(launch, args.device, args.rounds).items():
        ms = statistics.median(rounds)
        row[name] = {**facts[name], "ms": ms, "round_ms": rounds, "tflops": spec.flops(key) / (ms * 1e-3) / 1e12}
    print(json.dumps({kk: (v["ms"] if isinstance(v, dict) else v) for kk, v in row.items()}), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on a GPU, float32 on the interpreter")
    ap.add_argument("--trials", type=int, default=None, help="tuner budget per shape (default 200; smoke 12)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="two small shapes: checks the script on the interpreter")
    ap.add_argument("--shapes", default=None, help="MxNxK,... instead of the whole suite")
    ap.add_argument("--out", default=None)
    ap.add_argument("--append", action="store_true",
                    help="merge into --out's rows (a shape measured again replaces its row)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.trials = args.trials or (12 if args.smoke else 200)
    # a fresh database: the suite measures tuning from nothing, never a previous run's study
    os.environ["TUNER_HOME"] = tempfile.mkdtemp(prefix="tuner-gpu-suite-")
    os.environ.pop("TUNER_DB_URL", None)

    from devices.fingerprint import live_fingerprint
    from devices.probe import probe
    from tuner.reports import suite

    dc, _ = probe(args.device)
    fp = live_fingerprint(dc)
    result = {"format": "tuner-suite", "version": 1, "date": datetime.now(timezone.utc).isoformat(),
              "device_class": dc.slug, "device_name": dc.name, "fingerprint": fp.to_json() | {"hash": fp.hash},
              "timing": "triton-interpreter (CPU; not GPU figures)" if dc.target.is_interpreter
              else "CUDA events, L2 flushed, median of 50+ reps per round",
              "dtype": args.dtype, "trials": args.trials, "rounds": args.rounds,
              "rows": [run_shape(m, n, k, dc.target, args) for m, n, k in shapes(args.smoke, args.shapes)]}
    out = Path(args.out) if args.out else RESULTS / f"gpu_suite-{dc.slug}{'-smoke' if args.smoke else ''}.json"
    if args.append and out.exists():
        new = {(r["M"], r["N"], r["K"]) for r in result["rows"]}
        old = [r for r in suite.load(str(out))["rows"] if (r["M"], r["N"], r["K"]) not in new]
        result["rows"] = sorted(old + result["rows"], key=lambda r: (r["N"], r["K"], r["M"]))
    result["summary"] = suite.summary(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(suite.markdown(result) + "\n")
    print(suite.markdown(result))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
