"""Tuning cost of the fused MoE kernel against vLLM's grid: the trials and wall time the service
needs to reach 0.97 of the best configuration vLLM's full grid finds for the same key, against the
grid's own count and time; on a GPU also the tuned kernel against vLLM's shipped configuration.

    .venv/bin/python bench/moe_tuning_cost.py                         # the interpreter, one small key
    python bench/moe_tuning_cost.py --device cuda:0 --batch-sizes 1,16,64,256,1024,4096 \\
        --grid-batch-sizes 16                                           # an H100: Mixtral-8x7B at TP 1

Per batch size M:
1. the grid, as vLLM's `benchmark_moe.py --tune` runs it: every configuration of its
   get_configs_compute_bound (1,920), one after another in this process, each compiled on first
   launch and timed; blocks larger than the problem too, which the service's `check` refuses. On
   the interpreter warps and stages do not change the program and the group size only the order of
   programs it runs one after another, so the 1,920 points are 60 distinct computations: those are
   measured once each, and the grid's time is 1,920 points at the cost measured for their computation.
2. the service: `tuner tune fused_moe` (the default strategy, a fresh database, the real harness)
   with --trials trials; each trial's configuration and the moment it was stored are read back.
3. the reckoning: the grid's five fastest, every configuration the service held as its best after
   some trial, the kernel's default and (with --vllm-file) vLLM's shipped configuration for M are
   timed again together, in --rounds interleaved rounds (the fastest round counts), so that "0.97
   of the grid's best" (the fastest of its five, timed again) is judged on one footing. The service reaches it at the first
   trial after which its best is within 0.97.
Targets: 0.97 of the grid's best within 5% of the grid's trials; on a GPU, tuned at least as fast as
vLLM's shipped configuration at every batch size, and faster in geometric mean. Writes
bench/results/moe_tuning_cost-<device class>.{json,md}. Interpreter times are not GPU figures.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

if "cuda" not in " ".join(sys.argv):  # the interpreter, chosen before triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # one thread for numpy's and torch's CPU kernels, here and in the service's processes: on a
    # shared 2-core host, worker threads waiting for a core spin and bill CPU time to the process
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_FRACTION, TARGET_SHARE = 0.97, 0.05
# the grid's leaders timed again beside the service's: its one pick (what vLLM would write) can be a
# lucky measurement on a noisy host, and the service's final pick is re-measured too
GRID_TOP = 5


def timer(device: str, reps: int):
    """The median of reps timed launches: on a GPU device time (CUDA events, L2 flushed); on the
    interpreter this process's CPU time, since the other processes of a shared host slow its wall
    clock by several times in bursts (seen here: one configuration's rounds at 122 and 1,007 ms)."""
    from harness.timing import summarize, time_cuda

    def measure(launch) -> float:
        if device != "cpu":
            return summarize(time_cuda(launch, 3, reps, 0.05, device=device)[0])[0]
        samples = []
        for _ in range(reps):
            t = time.process_time()
            launch()
            samples.append((time.process_time() - t) * 1e3)
        return summarize(samples)[0]
    return measure


def run_grid(spec, key, inputs, device: str, reps: int) -> dict:
    """vLLM's grid as its script runs it, in this process: each configuration's first launch
    (compile, and the output check a trial makes) and its timing; wall time per point."""
    from search_spaces.fused_moe_vllm import grid_configs

    grid = grid_configs(amd=False)
    if device == "cpu":
        distinct: dict[tuple, dict] = {}
        for c in grid:
            distinct.setdefault((c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"]), c)
        runs = list(distinct.values())
    else:
        runs = grid
    import torch

    measure, ref = timer(device, reps), spec.reference(inputs)
    atol, rtol = spec.tolerances[key.dtype]
    rows = []
    for c in runs:
        t = time.perf_counter()
        try:
            ok = torch.allclose(spec.launch(c, inputs).float(), ref.float(), atol=atol, rtol=rtol)
            ms, error = (measure(lambda c=c: spec.launch(c, inputs)), None) if ok else (None, "wrong result")
        except Exception as exc:  # noqa: BLE001 - vLLM's loop skips what fails to build (OutOfResources)
            ms, error = None, type(exc).__name__
        rows.append({"config": c, "ms": ms, "error": error, "wall_s": time.perf_counter() - t})
    if device == "cpu":  # each distinct computation stands for the 32 grid points that run it
        tiles = {tuple(r["config"][b] for b in ("BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K")): r for r in rows}
        wall = sum(tiles[(c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"], c["BLOCK_SIZE_K"])]["wall_s"] for c in grid)
    else:
        wall = sum(r["wall_s"] for r in rows)
    ranked = sorted((r for r in rows if r["ms"] is not None), key=lambda r: r["ms"])
    return {"points": len(grid), "measured": len(rows), "wall_s": round(wall, 1),
            "measured_wall_s": round(sum(r["wall_s"] for r in rows), 1), "best": ranked[0]["config"],
            "best_ms": ranked[0]["ms"], "top": [r["config"] for r in ranked[:GRID_TOP]],
            "failed": sum(r["ms"] is None for r in rows)}


def run_service(kernel: str, shape: str, dtype: str, trials: int, device: str, seed: int) -> dict:
    """`tuner tune` in a fresh TUNER_HOME; each trial's config and when it was stored."""
    home = tempfile.mkdtemp(prefix="tuner-moe-cost-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env.update(TUNER_HOME=home, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "tune", kernel, "--shape", shape, "--dtype", dtype,
                           "--trials", str(trials), "--device", device, "--seed", str(seed), "--json"],
                          env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stderr[-2000:])
    doc = json.loads(proc.stdout)
    with sqlite3.connect(Path(home) / "tuner.db") as conn:
        started = conn.execute("select started_at from jobs").fetchone()[0]
        rows = conn.execute("select created_at, config, status, median_ms from tuning_trials "
                            "where status != 'invalid' order by id").fetchall()
    t0 = datetime.fromisoformat(started)
    trials_out = [{"at_s": (datetime.fromisoformat(at) - t0).total_seconds(), "config": json.loads(c), "status": s,
                   "ms": ms} for at, c, s, ms in rows]
    return {"process_wall_s": round(wall, 1), "startup_s": doc["startup_s"], "trials": trials_out,
            "final": doc["keys"][0]}


def reckon(spec, inputs, device: str, configs: dict[str, dict], rounds: int, reps: int) -> dict[str, float]:
    """Each named configuration timed again, in interleaved rounds of a shuffled order; its fastest
    round's median. A shared host slows a process in phases, which only ever adds time, so the
    quietest round is the estimate (the rule bench/search_efficiency.py records sweeps by)."""
    measure = timer(device, reps)
    times: dict[str, list[float]] = {n: [] for n in configs}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(configs)
        rng.shuffle(order)
        for n in order:
            times[n].append(measure(lambda c=configs[n]: spec.launch(c, inputs)))
    return {n: min(v) for n, v in times.items()}


def one_batch(args, spec, m: int, grid: bool) -> dict:
    from keys import config_hash
    from devices.targets import target_for
    from tuner.formats.vllm import vllm_config

    dims = {**json.loads(args.key), "M": m}
    key = spec.make_key(dims, args.dtype)
    shape = ",".join(f"{k}={v}" for k, v in dims.items())
    inputs = spec.make_inputs(key, args.device, 0)
    out: dict = {"M": m, "shape": shape}
    print(f"M={m}: the service, {args.trials} trials", flush=True)
    svc = run_service(args.kernel, shape, args.dtype, args.trials, args.device, args.seed)
    incumbents, best, order = {}, None, []
    for i, t in enumerate(svc["trials"]):
        if t["status"] == "ok" and (best is None or t["ms"] < best["ms"]):
            best = t
            incumbents[config_hash(t["config"])] = t["config"]
        order.append(config_hash(best["config"]) if best else None)
    named = {f"service:{h}": c for h, c in incumbents.items()}
    target = target_for("interpreter" if args.device == "cpu" else "sm_90")
    named["default"] = spec.default(key, target)
    if grid:
        print(f"M={m}: vLLM's grid", flush=True)
        out["grid"] = run_grid(spec, key, inputs, args.device, args.reps)
        named.update({f"grid:{i}": c for i, c in enumerate(out["grid"]["top"])})
    if args.vllm_file:
        table = {int(k): v for k, v in json.loads(Path(args.vllm_file).read_text()).items() if k.isdigit()}
        named["vllm_shipped"] = vllm_config(table[min(table, key=lambda x: abs(x - m))])
    print(f"M={m}: re-timing {len(named)} configurations together, {args.rounds} rounds", flush=True)
    ms = reckon(spec, inputs, args.device, named, args.rounds, args.reps)
    final = ms[f"service:{order[-1]}"]
    out.update(service_trials=len(svc["trials"]), service_wall_s=svc["process_wall_s"], service_startup_s=svc["startup_s"],
               tuned_ms=final, default_ms=ms["default"], tuned_config=incumbents[order[-1]], reckoned_ms=ms)
    if grid:
        # the grid's best: the fastest of its leaders timed again; its own pick: the first of them
        ref = min(v for n, v in ms.items() if n.startswith("grid:"))
        out.update(grid_pick_ms=ms["grid:0"])
        reach = next((i + 1 for i, h in enumerate(order) if h and ref / ms[f"service:{h}"] >= TARGET_FRACTION), None)
        out.update(grid_best_ms=ref, fraction_of_grid_best=round(ref / final, 4), trials_to_target=reach,
                   service_s_to_target=round(svc["trials"][reach - 1]["at_s"], 1) if reach else None,
                   target_trials=math.floor(TARGET_SHARE * out["grid"]["points"]),
                   target_met=bool(reach and reach <= TARGET_SHARE * out["grid"]["points"]))
    if "vllm_shipped" in ms:
        out.update(vllm_shipped_ms=ms["vllm_shipped"], speedup_over_vllm=round(ms["vllm_shipped"] / final, 4))
    return out


def markdown(doc: dict) -> str:
    lines = [f"# Tuning cost against vLLM's grid ({doc['date'][:10]}, {doc['device_class']})", "",
             f"Key {doc['key']} {doc['dtype']}; timings: {doc['timing']}. Command: `{doc['command']}`", "",
             "| M | grid points (measured) | grid wall s | grid best ms (its own pick) | service trials to 0.97 "
             "(target <= 5%) | service s to 0.97 | grid best / tuned | default ms | tuned ms | vLLM shipped ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["batches"]:
        g = r.get("grid", {})
        lines.append(f"| {r['M']} | {g.get('points', '-')} ({g.get('measured', '-')}) | {g.get('wall_s', '-')} | "
                     f"{r.get('grid_best_ms', float('nan')):.3f} ({r.get('grid_pick_ms', float('nan')):.3f}) | "
                     f"{r.get('trials_to_target')} of {r['service_trials']} "
                     f"({r.get('target_trials', '-')}) | {r.get('service_s_to_target')} | {r.get('fraction_of_grid_best', '-')} | "
                     f"{r['default_ms']:.3f} | {r['tuned_ms']:.3f} | {r.get('vllm_shipped_ms', float('nan')):.3f} |")
    lines += ["", *doc["notes"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu (the interpreter) or cuda:N")
    ap.add_argument("--kernel", default="fused_moe", help="fused_moe, or fused_moe_quant with a quantized --dtype "
                    "(e.g. fp8_w8a8_block128) and that scheme's vLLM file; its grid is vLLM's unquantized one")
    ap.add_argument("--key", default=None, help='E, N, K, topk as JSON (default: {"E": 8, "N": 64, "K": 128, '
                    '"topk": 2} on the interpreter, Mixtral-8x7B at TP 1 on a GPU)')
    ap.add_argument("--dtype", default=None, help="default float32 on the interpreter, bfloat16 on a GPU")
    ap.add_argument("--batch-sizes", default="32", help="comma-separated M")
    ap.add_argument("--grid-batch-sizes", default=None, help="the M to run vLLM's grid for (default: all on the "
                    "interpreter, none on a GPU, where one batch size takes vLLM's script about 45 minutes on an H100)")
    ap.add_argument("--trials", type=int, default=None, help="the service's budget (default 24 on the interpreter, 96 on a GPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3, help="timed launches per measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vllm-file", default=None, help="vLLM's shipped file to compare with (default on a GPU: "
                    "tests/data/vllm/E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cpu = args.device == "cpu"
    args.key = args.key or json.dumps({"E": 8, "N": 64, "K": 128, "topk": 2} if cpu else {"E": 8, "N": 14336, "K": 4096, "topk": 2})
    args.dtype = args.dtype or ("float32" if cpu else "bfloat16")
    args.trials = args.trials or (24 if cpu else 96)
    if not cpu and args.vllm_file is None:
        args.vllm_file = str(ROOT / "tests/data/vllm/E=8,N=14336,device_name=NVIDIA_H100_80GB_HBM3.json")
    from devices.probe import probe
    from search_spaces import registry

    spec = registry.get(args.kernel)
    dc, _ = probe(args.device)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    chosen = args.grid_batch_sizes if args.grid_batch_sizes is not None else (args.batch_sizes if cpu else "")
    grid_sizes = {int(x) for x in chosen.split(",") if x.strip()}
    doc = {"date": datetime.now(timezone.utc).isoformat(), "device_class": dc.slug, "kernel": args.kernel,
           "key": args.key, "dtype": args.dtype,
           "timing": "triton-interpreter, CPU time of the benchmark process (not GPU figures); the service's "
                     "own trials: wall time" if cpu else "cuda events, L2 flushed",
           "command": "python bench/moe_tuning_cost.py " + " ".join(sys.argv[1:]),
           "batches": [one_batch(args, spec, m, m in grid_sizes) for m in sizes]}
    notes = []
    if cpu:
        notes.append("- On the interpreter the grid's 1,920 points are 60 distinct computations (warps and stages "
                     "are ignored, the group only orders the programs): each was measured once; the grid's wall "
                     "time counts every point at its computation's measured cost, and `measured` is what ran.")
    shipped = [r["speedup_over_vllm"] for r in doc["batches"] if "speedup_over_vllm" in r]
    if shipped:
        geo = math.exp(sum(math.log(s) for s in shipped) / len(shipped))
        notes.append(f"- tuned vs vLLM's shipped configuration: geometric mean {geo:.3f}x, at least as fast at "
                     f"{sum(s >= 1 for s in shipped)} of {len(shipped)} batch sizes")
    for r in doc["batches"]:
        if "target_met" in r:
            notes.append(f"- M={r['M']}: 0.97 of the grid's best {'reached' if r['trials_to_target'] else 'NOT reached'}"
                         f"{' after ' + str(r['trials_to_target']) + ' trials' if r['trials_to_target'] else ''}; "
                         f"target (<= {r['target_trials']} trials) {'met' if r['target_met'] else 'NOT met'}")
    doc["notes"] = notes
    out = Path(args.out) if args.out else RESULTS / f"moe_tuning_cost-{dc.slug}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(doc) + "\n")
    print(markdown(doc))


if __name__ == "__main__":
    main()
