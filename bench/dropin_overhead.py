"""The warm dispatch of a drop-in launch (tuner.runtime.autotune) beside triton.autotune's cached
path, in one run, and on the interpreter the trials a fleet search needs to reach the best of the
config list against timing the whole list.

    .venv/bin/python bench/dropin_overhead.py      # writes bench/results/dropin_overhead.{json,md}

Dispatch: the tutorial matmul (tests/kernels/dropin.py's config list, 8 configs) wrapped both
ways, each launch's kernel run replaced by a no-op, so what is timed is what either wrapper does
before the launch: key, cache, chosen config. The drop-in is timed on a key stored in a bundle
(exact) and on a miss (the first config, the miss counted); triton.autotune after its one timing
of the key. Medians of interleaved repeats (min, max beside). Target: within 1 us of
triton.autotune's cached path.

Trials to best (`--trials-to-best`, minutes): one shape on the interpreter, every configuration of
the list timed as triton.autotune times it (the list's best and its cost, in launches), then
`tuner tune --from-misses` with growing budgets, with the default strategy (which starts from the
list) and with random search (which knows nothing of it), the trials after which its stored best
is at least as fast as the list's best, re-measured together. The interpreter ignores num_warps
and num_stages: configurations that differ only there time alike.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dropin_overhead"
SHAPE = (64, 80, 48)  # M, N, K of the dispatch and the tuning (fp16)
NUMBER = 10_000  # launches per repeat of the dispatch timing


def interleaved_ns(stmts: dict, number: int, repeat: int = 15) -> dict:
    runs: dict = {name: [] for name in stmts}
    for _ in range(repeat):
        for name, stmt in stmts.items():
            runs[name].append(timeit.timeit(stmt, number=number) / number * 1e9)
    return {name: {"median_ns": statistics.median(per), "min_ns": min(per), "max_ns": max(per),
                   "calls": number * repeat} for name, per in runs.items()}


class NoLaunch:
    """Stands for a compiled kernel: `run` does nothing, so only the wrapper's work is timed."""

    def __init__(self, fn):
        self.fn, self.arg_names = fn, fn.arg_names

    def run(self, *args, **kwargs):
        return None


def use(home: Path, **env: str) -> None:
    from tuner import runtime

    for k in ("TUNER_DB_URL", "TUNER_CONFIG_BUNDLE", "TUNER_CONFIG_URL", "TUNER_MISS_FILE"):
        os.environ.pop(k, None)
    os.environ.update({"TUNER_HOME": str(home), "TUNER_DEVICE": "cpu", "TUNER_RUNTIME_DEADLINE_MS": "60000", **env})
    runtime.clear_cache()


def dispatch(home: Path) -> dict:
    import torch
    import triton

    from devices.fingerprint import live_fingerprint
    from devices.probe import probe
    from search_spaces import registry
    from search_spaces.dropin import config_dict
    from tests.kernels import dropin
    from tuner import runtime

    m, n, k = SHAPE
    spec = registry.get(dropin.MATMUL)
    stored = config_dict(dropin.get_cuda_autotune_config()[2])
    key = spec.make_key({"M": m, "N": n, "K": k}, "float16")
    bundle = home / "bundle.json"
    bundle.write_text(json.dumps({"format": "tuner-bundle", "version": 1, "entries": [
        {"kernel": key.kernel, "kernel_version": key.version, "key_hash": key.stable_hash, "key": key.to_json(),
         "dtype": key.dtype, "device_class": "cpu-interpreter", "fingerprint": live_fingerprint(probe("cpu")[0]).hash,
         "config": stored, "tuned_at": None}]}))
    use(home, TUNER_CONFIG_BUNDLE=str(bundle), TUNER_MISS_FILE=str(home / "misses.jsonl"), TUNER_MISS_FLUSH_S="3600")

    drop = dropin.matmul_kernel
    jit, drop.fn = drop.fn, NoLaunch(drop.fn)
    plain = triton.autotune(configs=dropin.get_cuda_autotune_config(), key=["M", "N", "K"],
                            do_bench=lambda call, quantiles: [1.0, 1.0, 1.0])(drop.fn.fn)
    plain.fn = NoLaunch(plain.fn)
    a, b = torch.randn(m, k, dtype=torch.float16), torch.randn(k, n, dtype=torch.float16)
    c = torch.empty(m, n, dtype=torch.float16)
    grid = lambda META: (triton.cdiv(m, META['BLOCK_SIZE_M']) * triton.cdiv(n, META['BLOCK_SIZE_N']),)
    args = (a, b, c, m, n, k, *a.stride(), *b.stride(), *c.stride())
    miss = (a, b, c, m, n - 16, k, *a.stride(), *b.stride(), *c.stride())  # nothing stored for N=64
    ways = {"triton_autotune_cached": lambda: plain[grid](*args, ACTIVATION=""),
            "dropin_stored_exact": lambda: drop[grid](*args, ACTIVATION=""),
            "dropin_miss_counted": lambda: drop[grid](*miss, ACTIVATION="")}
    for fn in ways.values():
        fn(), fn()
    runtime.settle(60)
    levels = {"dropin_stored_exact": runtime.explain(dropin.MATMUL, M=m, N=n, K=k, dtype="float16").level,
              "dropin_miss_counted": runtime.explain(dropin.MATMUL, M=m, N=n - 16, K=k, dtype="float16").level}
    assert drop[grid] and (ways["dropin_stored_exact"](), config_dict(drop.best_config)) == (None, stored)
    out = interleaved_ns(ways, NUMBER)
    for name, level in levels.items():
        out[name]["level"] = level
    drop.fn = jit
    runtime.flush_misses()
    runtime.clear_cache()  # before the temporary home goes
    base = out["triton_autotune_cached"]["median_ns"]
    for name in levels:
        out[name]["over_triton_ns"] = out[name]["median_ns"] - base
    return out


def time_interleaved(spec, configs: list[dict], inputs, rounds: int) -> list[float]:
    """The median ms of each configuration over `rounds` rounds, each round launching every one once
    in turn (after one warm-up launch each), so that the shared machine's load weighs on all alike."""
    for c in configs:
        spec.launch(c, inputs)
    times: list[list[float]] = [[] for _ in configs]
    for _ in range(rounds):
        for i, c in enumerate(configs):
            t = time.perf_counter()
            spec.launch(c, inputs)
            times[i].append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def trials_to_best(home: Path, budgets: list[int], rounds: int, samplers: list[str]) -> dict:
    """The list timed whole (as triton.autotune does) against `tuner tune --from-misses` budgets,
    with each sampler (the default starts from the list, the kernel's known-good configurations;
    random knows nothing of it)."""
    import subprocess

    import torch

    from search_spaces import registry
    from search_spaces.dropin import config_dict
    from tests.kernels import dropin
    from tuner import runtime

    m, n, k = SHAPE
    out: dict = {"shape": {"M": m, "N": n, "K": k}, "dtype": "float16", "rounds": rounds, "budgets": {}}
    spec = registry.get(dropin.MATMUL)
    key = spec.make_key({"M": m, "N": n, "K": k}, "float16")
    listed = [config_dict(c) for c in dropin.get_cuda_autotune_config()]
    for sampler, budget in ((s, b) for s in samplers for b in budgets):
        h = home / f"t-{sampler}-{budget}"
        h.mkdir()
        use(h, TUNER_MISS_FLUSH_S="3600")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNER_KERNEL_MODULES": "tests.kernels.dropin"}

        def run(*a: str) -> str:
            done = subprocess.run([sys.executable, "-m", "tuner.cli", *a], env=env, cwd=ROOT, capture_output=True,
                                  text=True)
            if done.returncode:
                raise SystemExit(f"tuner {' '.join(a)} failed: {done.stderr[-500:]}")
            return done.stdout

        run("db", "upgrade")
        os.environ["TUNER_DB_URL"] = f"sqlite:///{h}/tuner.db"
        runtime.clear_cache()
        dropin.matmul(torch.randn(m, k, dtype=torch.float16), torch.randn(k, n, dtype=torch.float16))
        runtime.settle(60)
        runtime.flush_misses()
        t = time.perf_counter()
        doc = json.loads(run("tune", dropin.MATMUL, "--from-misses", "--trials", str(budget), "--sampler", sampler,
                             "--seed", "0", "--device", "cpu", "--json"))
        out["budgets"][f"{sampler}:{budget}"] = {"sampler": sampler, "trials": budget, "config": doc["keys"][0]["config"],
                                                 "tune_s": round(time.perf_counter() - t, 1)}
        os.environ.pop("TUNER_DB_URL")
    inputs = spec.make_inputs(key, "cpu", 0, _signature(dropin))
    # the list whole and each budget's best, in the same interleaved rounds
    bests = [r["config"] for r in out["budgets"].values()]
    t = time.perf_counter()
    ms = time_interleaved(spec, listed + bests, inputs, rounds)
    out["timing_s"] = round(time.perf_counter() - t, 1)
    best_i = min(range(len(listed)), key=lambda i: ms[i])
    out["list"] = {"best": listed[best_i], "best_ms": ms[best_i], "trials": len(listed), "ms": ms[:len(listed)]}
    for r, m_ in zip(out["budgets"].values(), ms[len(listed):]):
        r["ms"], r["vs_list_best"] = m_, m_ / out["list"]["best_ms"]
    return out


def _signature(dropin) -> dict:
    import torch
    import triton

    from search_spaces.dropin import signature_of

    m, n, k = SHAPE
    a, b = torch.randn(m, k, dtype=torch.float16), torch.randn(k, n, dtype=torch.float16)
    c = torch.empty(m, n, dtype=torch.float16)
    names = dropin.matmul_kernel.arg_names
    values = (a, b, c, m, n, k, *a.stride(), *b.stride(), *c.stride())
    grid = lambda META: (triton.cdiv(m, META['BLOCK_SIZE_M']) * triton.cdiv(n, META['BLOCK_SIZE_N']),)
    return signature_of(dropin.matmul_kernel, {**dict(zip(names, values)), "ACTIVATION": ""}, grid)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="results files, .json and .md (default: %(default)s)")
    ap.add_argument("--trials-to-best", default="", metavar="BUDGETS",
                    help="also tune on the interpreter with these budgets, e.g. 8,16,24 (minutes)")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved rounds when comparing (default 9)")
    ap.add_argument("--samplers", default="", help="with --trials-to-best: the strategies that tune, comma-separated "
                    "(default: the default one, and random, which starts from nothing of the list)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                  "python": platform.python_version(), "timing": "CPU, wrapper only (kernel run stubbed)",
                  "dispatch": dispatch(Path(tmp))}
        if args.trials_to_best:
            from search import strategies

            samplers = args.samplers.split(",") if args.samplers else [strategies.DEFAULT, "random"]
            result["trials_to_best"] = trials_to_best(Path(tmp), [int(b) for b in args.trials_to_best.split(",")],
                                                      args.rounds, samplers)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    rows = ["| path | median | min | max | over triton.autotune |", "|---|---|---|---|---|"]
    for name, r in result["dispatch"].items():
        over = f"{r['over_triton_ns'] / 1000:+.2f} µs" if "over_triton_ns" in r else "-"
        rows.append(f"| {name}{' (' + r['level'] + ')' if 'level' in r else ''} | {r['median_ns'] / 1000:.2f} µs | "
                    f"{r['min_ns'] / 1000:.2f} µs | {r['max_ns'] / 1000:.2f} µs | {over} |")
    args.out.with_suffix(".md").write_text(
        f"# Drop-in dispatch beside triton.autotune ({result['when']}, {result['timing']})\n\n"
        f"Tutorial matmul, M,N,K={SHAPE} fp16, 8 configs; medians of 15 interleaved repeats of {NUMBER:,} launches.\n\n"
        + "\n".join(rows) + "\n" + _trials_md(result.get("trials_to_best")))
    print(args.out.with_suffix(".md").read_text())


def _trials_md(t: dict | None) -> str:
    if not t:
        return ""
    lines = [f"\n## Trials to the list's best (triton-interpreter timings, medians of {t['rounds']} "
             "interleaved rounds)\n",
             f"Timing the whole list: {t['list']['trials']} configurations, best "
             f"{t['list']['best']} at {t['list']['best_ms']:.1f} ms.\n",
             "| tuner tune --from-misses --sampler | --trials | its best | ms | vs the list's best | tune wall s |",
             "|---|---|---|---|---|---|"]
    for r in t["budgets"].values():
        lines.append(f"| {r['sampler']} | {r['trials']} | {r['config']} | {r['ms']:.1f} | {r['vs_list_best']:.2f} | "
                     f"{r['tune_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
