"""Harness throughput: trials per minute of the service's harness vs triton.autotune, over the
same matmul and the same configuration list, and the harness's overhead over bare launches.

    .venv/bin/python bench/throughput.py                  # the interpreter: 128^3 fp32
    .venv/bin/python bench/throughput.py --device cuda    # a GPU: 4096^3 fp16

Writes bench/results/throughput.json (one entry per device label, so a GPU run keeps the CPU
one) and bench/results/throughput.md.

Every way of measuring runs in a fresh process with an empty TRITON_CACHE_DIR of its own, so
none finds binaries another one compiled (in memory or on disk):
  paired            the overhead measurement: every configuration is built first (not timed),
                    then for each one the bare launches and Harness.run alternate (which goes
                    first alternates too), so a drift of a shared machine hits both alike;
                    each pair is tried --pairs times and the fastest of each side kept;
                    overhead = harness time / bare time - 1, compilation excluded
  bare              each configuration launched in-process: one first launch (compiling on a
                    GPU), then the harness's timer with the harness's warm-up and repetitions;
                    no isolation, no correctness check: the floor the harness is compared with
  harness_run       Harness.run per configuration (what the search does today), persistent
                    benchmark process started before the clock (startup is reported apart)
  harness_run_many  Harness.run_many over the list: on a GPU, parallel compile processes ahead
                    of the benchmark and dedup by binary; on the interpreter, sequential
  harness_run_many_early_stop   the same with the search's early stop (3x the best so far)
  autotune          a fresh @triton.autotune over the same configurations, the first call timed
                    (it benchmarks every configuration serially, then launches the best). On a GPU
                    Triton's own benchmarker (do_bench: 25 ms warm-up, 100 ms of repetitions);
                    the interpreter has no driver to benchmark with, so there do_bench is ported
                    onto perf_counter with the same call counts
  autotune_equal_reps           triton.autotune with our timer and repetitions injected as
                    do_bench: the same measurement work as the harness, compiled serially
Trials per minute = configurations / wall seconds * 60. Every method runs --rounds times,
interleaved, and its fastest run is reported (other processes on a shared machine only ever add
time; all walls are kept in the JSON). paired reports the median of its rounds' overheads.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
METHODS = ("paired", "bare", "harness_run", "harness_run_many", "harness_run_many_early_stop", "autotune",
           "autotune_equal_reps")
EARLY_STOP_FACTOR = 3.0  # as search.loop
OVERHEAD_TARGET = 0.10  # interpreter: harness <= 10% over bare launches
SPEEDUP_TARGET = 3.0  # GPU: harness >= 3x the trials per minute of serial triton.autotune


def measurement(device: str) -> dict:
    """The harness's warm-up and repetitions, as search.loop.request_for sets them."""
    if device == "cpu":  # the correctness launch already warms the interpreter
        return {"warmup": 0, "reps": 3, "min_time_s": 0.0}
    return {"warmup": 3, "reps": 10, "min_time_s": 0.2}


def setup(device: str, size: int, dtype: str, n_configs: int):
    """(spec, key, target, configs): the Triton tutorial's list mapped to our parameters
    (matmul.tutorial_configs) topped up to n_configs with valid configurations in a seeded order."""
    from devices.probe import probe
    from search_spaces import registry
    from keys import config_hash
    from search_spaces.matmul import tutorial_configs

    spec = registry.get("matmul")
    key = spec.make_key({"M": size, "N": size, "K": size}, dtype)
    target = probe(device)[0].target
    configs = [c for c in tutorial_configs(target) if spec.check(c, key, target) is None]
    seen = {config_hash(c) for c in configs}
    rest = [c for c in spec.valid_configs(key, target) if config_hash(c) not in seen]
    random.Random(0).shuffle(rest)
    return spec, key, target, (configs + rest)[:n_configs]


def sync(device: str) -> None:
    if device != "cpu":
        import torch
        torch.cuda.synchronize()


def timer(device: str):
    from harness.timing import time_cpu, time_cuda
    return time_cpu if device == "cpu" else (lambda *a, **k: time_cuda(*a, device=device, **k))


# ---- one method, in its own process -------------------------------------------------
def run_bare(device, spec, key, target, configs) -> dict:
    m = measurement(device)
    inputs = spec.make_inputs(key, device, 0)
    first_s = timed_ms = 0.0
    t0 = time.perf_counter()
    for config in configs:
        t = time.perf_counter()
        spec.launch(config, inputs)
        sync(device)
        first_s += time.perf_counter() - t
        samples, _ = timer(device)(lambda: spec.launch(config, inputs), m["warmup"], m["reps"], m["min_time_s"])
        timed_ms += sum(samples)
    return {"wall_s": time.perf_counter() - t0, "first_launches_s": first_s, "timed_kernel_s": timed_ms / 1e3}


def run_paired(device, spec, key, target, configs, pairs: int) -> dict:
    from harness.harness import Harness

    m = measurement(device)
    inputs = spec.make_inputs(key, device, 0)
    for config in configs:  # build everything first: compilation is not what this measures
        spec.launch(config, inputs)
    sync(device)

    def bare(config) -> None:
        spec.launch(config, inputs)
        sync(device)
        timer(device)(lambda: spec.launch(config, inputs), m["warmup"], m["reps"], m["min_time_s"])

    reqs = requests(device, key, target, configs)
    bare_s, harness_s = [], []  # per configuration: the fastest of `pairs` tries (interference only adds)
    with Harness() as h:
        h.start(device, precompile=False)
        h.run(reqs[0])  # the benchmark process's per-key work (inputs, reference) is not per trial
        for config, req in zip(configs, reqs):
            tries: dict[int, list[float]] = {0: [], 1: []}
            for p in range(pairs):
                for which in ((0, 1) if p % 2 == 0 else (1, 0)):
                    t = time.perf_counter()
                    if which == 0:
                        bare(config)
                    else:
                        h.run(req)
                    tries[which].append(time.perf_counter() - t)
            bare_s.append(min(tries[0]))
            harness_s.append(min(tries[1]))
    b, hs = sum(bare_s), sum(harness_s)
    return {"wall_s": hs, "bare_s": b, "overhead": hs / b - 1, "pairs": pairs,
            "overhead_ms_per_trial": (hs - b) / len(configs) * 1e3}


def requests(device, key, target, configs):
    from harness.protocol import TrialRequest
    return [TrialRequest(kernel="matmul", key=key.to_json(), config=c, device=device, arch=target.arch,
                         timeout_s=600.0, **measurement(device)) for c in configs]


def run_harness(device, spec, key, target, configs, many: bool, early_stop: bool,
                compile_workers: int | None) -> dict:
    from harness.harness import Harness

    reqs = requests(device, key, target, configs)
    with Harness(compile_workers=compile_workers) as h:
        t = time.perf_counter()
        h.start(device, precompile=many)
        startup = time.perf_counter() - t
        pool = h._pool(device) if many else None
        workers = pool.size if pool is not None else 0
        t0 = time.perf_counter()
        if many:
            results = h.run_many(reqs, early_stop_factor=EARLY_STOP_FACTOR if early_stop else None)
        else:
            results = [h.run(r) for r in reqs]
        wall = time.perf_counter() - t0
        # where the wall goes: the benchmark process (its first launches load what the pool built)
        # vs waiting for builds
        benchmarked, bench_s, first_s = h.benchmarked, h.benchmark_s, h.first_launch_s
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    ok = [r for r in results if r.status == "ok"]
    best = min(ok, key=lambda r: r.median_ms) if ok else None
    return {"wall_s": wall, "startup_s": startup, "statuses": statuses, "benchmarked": benchmarked,
            "compile_workers": workers, "benchmark_process_s": bench_s, "first_launches_s": first_s,
            "pool_compile_s": sum(r.compile_s or 0 for r in ok) if workers else None,
            "early_stopped": sum(r.early_stopped for r in results),
            "timed_kernel_s": sum((r.median_ms or 0) * r.reps for r in ok) / 1e3,
            "best": {"config": best.config, "median_ms": best.median_ms} if best else None}


def _quantiles(xs: list[float]) -> list[float]:
    from harness.timing import summarize
    median, p20, p80, _ = summarize(xs)
    return [median, p20, p80]


def run_autotune(device, spec, key, target, configs, equal_reps: bool) -> dict:
    import triton

    from harness.timing import interpreter_do_bench
    from search_spaces.matmul import matmul_kernel

    m = measurement(device)

    def equal_do_bench(fn, quantiles=None):
        fn()  # the first launch: compiles on a GPU, as the harness's correctness launch does
        sync(device)
        samples, _ = timer(device)(fn, m["warmup"], m["reps"], m["min_time_s"])
        return _quantiles(samples)

    do_bench = equal_do_bench if equal_reps else (interpreter_do_bench if device == "cpu" else None)
    tconfigs = [spec.triton_config(c, target.vendor) for c in configs]
    kernel = triton.autotune(configs=tconfigs, key=["M", "N", "K"], do_bench=do_bench)(matmul_kernel)
    a, b = spec.make_inputs(key, device, 0)
    (mm, kk), nn = a.shape, b.shape[1]
    import torch
    c = torch.empty((mm, nn), device=a.device, dtype=a.dtype)
    grid = lambda meta: (triton.cdiv(mm, meta["BLOCK_M"]) * triton.cdiv(nn, meta["BLOCK_N"]),)  # noqa: E731
    t0 = time.perf_counter()
    kernel[grid](a, b, c, mm, nn, kk, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
                 DOT_IN_FP32=False)
    sync(device)
    wall = time.perf_counter() - t0
    timings = {str(cfg): t for cfg, t in kernel.configs_timings.items()}
    best = kernel.best_config
    return {"wall_s": wall, "autotuner_bench_time_s": kernel.bench_time,
            "failed_configs": sum(1 for t in timings.values() if t[0] == float("inf")),
            "best": {"config": {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages},
                     "median_ms": min(t[0] for t in timings.values())}}


def child(args) -> None:
    device = "cuda:0" if args.device == "cuda" else args.device
    spec, key, target, configs = setup(device, args.size, args.dtype, args.configs)
    if args.method == "bare":
        out = run_bare(device, spec, key, target, configs)
    elif args.method == "paired":
        out = run_paired(device, spec, key, target, configs, args.pairs)
    elif args.method.startswith("harness"):
        out = run_harness(device, spec, key, target, configs, many=args.method != "harness_run",
                          early_stop=args.method.endswith("early_stop"), compile_workers=args.compile_workers)
    else:
        out = run_autotune(device, spec, key, target, configs, equal_reps=args.method == "autotune_equal_reps")
    out["configs"] = configs
    if device != "cpu":
        import torch
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
        out["driver_cuda"] = torch.version.cuda or torch.version.hip
    print(json.dumps(out))


# ---- the parent ------------------------------------------------------------------------
def spawn(method: str, args) -> dict:
    cache = tempfile.mkdtemp(prefix="tuner-throughput-cache-")
    # ROOT first, and whatever the caller put on the path after it (a GPU machine's carried wheels)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_CACHE_DIR": cache, "PYTHONPATH": path}
    env.pop("TUNER_KERNEL_MODULES", None)
    if args.device == "cpu":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, __file__, "--child", "--method", method, "--device", args.device,
           "--size", str(args.size), "--dtype", args.dtype, "--configs", str(args.configs), "--pairs", str(args.pairs)]
    if args.compile_workers:
        cmd += ["--compile-workers", str(args.compile_workers)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        sys.exit(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def report(entry_by_label: dict) -> str:
    lines = ["# Harness throughput", "",
             "`bench/throughput.py`: trials per minute of the harness vs `triton.autotune` over the same "
             "matmul and configuration list; overhead of the harness over bare in-process launches. "
             "Each method runs in a fresh process with an empty Triton cache. See the script's docstring "
             "for what each row measures. A GPU section appears when the script is run with "
             "`--device cuda` (it keeps the other sections).", ""]
    for label, e in entry_by_label.items():
        lines += [f"## {label}", "", f"- date: {e['date']}", f"- machine: {e['machine']}",
                  f"- versions: {e['versions']}", f"- problem: {e['problem']}, {e['n_configs']} configurations",
                  f"- harness measurement per trial: {e['measurement']}",
                  f"- each method run {e['rounds']} times interleaved; the fastest run is shown "
                  f"(paired: the median overhead)", "",
                  "| method | wall s | trials/min | vs bare | vs autotune | notes |", "|---|---:|---:|---:|---:|---|"]
        for name, r in e["methods"].items():
            notes = []
            if "startup_s" in r:
                with_startup = e["n_configs"] / (r["wall_s"] + r["startup_s"]) * 60
                notes.append(f"startup {r['startup_s']:.1f} s (not in wall; {with_startup:.0f} trials/min with it)")
            if r.get("compile_workers"):
                notes.append(f"{r['compile_workers']} compile processes")
            if "benchmarked" in r:
                notes.append(f"{r['benchmarked']} benchmarked")
            if "benchmark_process_s" in r:
                parts = [f"{r[k]:.2f} s {what}" for k, what in (("first_launches_s", "first launches"),
                                                                  ("timed_kernel_s", "timed kernel")) if k in r]
                notes.append(f"{r['benchmark_process_s']:.2f} s in the benchmark process"
                             + (f" ({', '.join(parts)})" if parts else ""))
            if r.get("pool_compile_s"):
                notes.append(f"{r['pool_compile_s']:.1f} s of builds in the pool")
            if r.get("early_stopped"):
                notes.append(f"{r['early_stopped']} stopped early")
            if "overhead" in r:
                notes.append(f"harness {r['wall_s']:.2f} s vs bare {r['bare_s']:.2f} s: overhead {r['overhead']:+.1%}, "
                             f"{r['overhead_ms_per_trial']:.1f} ms a trial (wall = the harness's share)")
            if "first_launches_s" in r and "benchmark_process_s" not in r:
                notes.append(f"first launches {r['first_launches_s']:.2f} s")
            if r.get("failed_configs"):
                notes.append(f"{r['failed_configs']} failed")
            over = f"{r['overhead_vs_bare'] * 100:+.1f}%" if "overhead_vs_bare" in r else ""
            speed = f"{r['speedup_vs_autotune']:.2f}x" if "speedup_vs_autotune" in r else ""
            lines.append(f"| {name} | {r['wall_s']:.2f} | {r['trials_per_min']:.1f} | {over} | {speed} | "
                         f"{'; '.join(notes)} |")
        lines += [""] + [f"- {note}" for note in e.get("notes", [])]
        lines += ["", "Targets:"]
        for t in e["targets"]:
            lines.append(f"- {t['what']}: {t['value']} -> {'met' if t['met'] else 'NOT met'}")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--size", type=int, help="M=N=K (default 128 on cpu, 4096 on cuda)")
    ap.add_argument("--dtype", help="default float32 on cpu, float16 on cuda")
    ap.add_argument("--configs", type=int, default=16)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--rounds", type=int, default=3, help="runs of every method, interleaved; the fastest stands")
    ap.add_argument("--pairs", type=int, default=3, help="paired: tries of each configuration each way")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per method, seconds")
    ap.add_argument("--compile-workers", type=int, help="compile processes of run_many (default: the harness's)")
    ap.add_argument("--tag", default="", help="appended to the results' label, to keep a variant's run apart")
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.size = args.size or (128 if args.device == "cpu" else 4096)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "float16")
    if args.child:
        child(args)
        return

    names = args.methods.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(args.rounds):  # interleaved rounds: a drift of a shared machine hits every method
        for name in names:
            runs[name].append(spawn(name, args))
            brief = {k: v for k, v in runs[name][-1].items() if k != "configs"}  # kept if a later run dies
            print(f"round {r + 1}/{args.rounds} {name}: {json.dumps(brief)}", file=sys.stderr, flush=True)
    methods: dict[str, dict] = {}
    for name, rs in runs.items():  # the fastest run stands (paired: the median overhead); all are kept
        by = "overhead" if name == "paired" else "wall_s"
        ranked = sorted(rs, key=lambda x: x[by])
        pick = ranked[(len(ranked) - 1) // 2] if name == "paired" else ranked[0]
        methods[name] = {**pick, f"{by}_all": [round(x[by], 3) for x in rs]}
    configs = next(iter(methods.values()))["configs"]
    n = len(configs)
    bare = methods.get("bare", {}).get("wall_s")
    auto = methods.get("autotune", {}).get("wall_s")
    for name, r in methods.items():
        r.pop("configs", None)
        r["trials_per_min"] = n / r["wall_s"] * 60
        if name == "paired":
            continue  # its wall is the harness's share of an interleaved run: compared within the run only
        if bare:
            r["overhead_vs_bare"] = r["wall_s"] / bare - 1
        if auto:
            r["speedup_vs_autotune"] = auto / r["wall_s"]
    gpu = next((r.pop("gpu") for r in methods.values() if "gpu" in r), None)
    runtime = next((r.pop("driver_cuda") for r in methods.values() if "driver_cuda" in r), None)
    for r in methods.values():
        r.pop("gpu", None), r.pop("driver_cuda", None)
    import torch
    import triton
    label = "triton-interpreter (CPU)" if args.device == "cpu" else f"{gpu} (CUDA/ROCm {runtime})"
    label += f" [{args.tag}]" if args.tag else ""
    targets = []
    if args.device == "cpu" and "paired" in methods:
        o = methods["paired"]["overhead"]
        targets.append({"what": f"interpreter: Harness.run time over bare launches of the same configurations "
                                f"(paired) <= {OVERHEAD_TARGET:.0%}",
                        "value": f"{o:+.1%}", "met": o <= OVERHEAD_TARGET})
    if args.device != "cpu" and auto:
        for name in ("harness_run_many", "harness_run_many_early_stop"):
            if name in methods:
                s = methods[name]["speedup_vs_autotune"]
                targets.append({"what": f"{name} trials/min >= {SPEEDUP_TARGET:g}x serial triton.autotune",
                                "value": f"{s:.2f}x", "met": s >= SPEEDUP_TARGET})
    m = measurement("cpu" if args.device == "cpu" else "cuda")
    entry = {
        "date": datetime.now(timezone.utc).isoformat(), "machine": machine(),
        "versions": f"torch {torch.__version__}, triton {triton.__version__}",
        "timing": ("triton-interpreter (CPU; not GPU figures)" if args.device == "cpu" else "GPU, CUDA events"),
        "problem": f"matmul M=N=K={args.size} {args.dtype}", "n_configs": n, "configs": configs,
        "measurement": f"1 checked launch + warmup {m['warmup']} + reps {m['reps']} (min {m['min_time_s']} s)",
        "rounds": args.rounds, "methods": methods, "targets": targets,
        "notes": (["autotune: the interpreter has no driver to benchmark with, so triton.testing.do_bench "
                   "is ported onto perf_counter with its call counts (1 + 5 to estimate + warm-up for "
                   "25 ms + repetitions for 100 ms)",
                   "the interpreter ignores num_warps and num_stages, and has nothing to compile: "
                   "run_many runs sequentially here, with dedup by configuration only"]
                  if args.device == "cpu" else
                  [f"harness_run_many: {methods.get('harness_run_many', {}).get('compile_workers', 0)} "
                   "compile processes ahead of the benchmark process"]),
    }
    out_json = RESULTS / "throughput.json"
    data = json.loads(out_json.read_text()) if out_json.exists() else {"benchmark": "throughput", "runs": {}}
    data["runs"][label] = entry
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "throughput.md").write_text(report(data["runs"]))
    print(report({label: entry}))


if __name__ == "__main__":
    main()
