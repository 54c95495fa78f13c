"""Runtime lookup overhead: warm lookup, @tuned launch vs fixed config vs triton.autotune, and a
cold lookup against 10,000 stored best configurations.

    .venv/bin/python bench/lookup_overhead.py            # writes bench/results/lookup_overhead.json

Launch timings run the Triton interpreter on the CPU (label: interpreter), so they measure the
dispatch layer's cost next to an interpreter launch, not GPU launch latency.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import timeit
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "lookup_overhead.json"
N_STORED = 10_000


def per_call_ns(stmt, number: int, repeat: int = 7) -> dict:
    runs = timeit.repeat(stmt, number=number, repeat=repeat)
    per = sorted(r / number * 1e9 for r in runs)
    return {"median_ns": statistics.median(per), "min_ns": per[0], "max_ns": per[-1], "calls": number * repeat}


def warm_lookup() -> dict:
    from tuner import runtime
    runtime.lookup("matmul", M=4096, N=4096, K=4096, dtype="float16")
    return per_call_ns(lambda: runtime.lookup("matmul", M=4096, N=4096, K=4096, dtype="float16"), 200_000)


def launches() -> dict:
    """A 64x64x64 fp32 matmul launched three ways in the interpreter (same config for all)."""
    import torch
    import triton

    from search_spaces import matmul
    from tuner import runtime

    cfg = runtime.lookup("matmul", M=64, N=64, K=64, dtype="float32")
    consts = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    a, b, c = torch.randn(64, 64), torch.randn(64, 64), torch.empty(64, 64)
    args = (a, b, c, 64, 64, 64, *a.stride(), *b.stride(), *c.stride())
    grid = (triton.cdiv(64, cfg["BLOCK_M"]) * triton.cdiv(64, cfg["BLOCK_N"]),)
    tuned = runtime.tuned("matmul", key=["M", "N", "K"])(matmul.matmul_kernel)
    autotuned = triton.autotune(configs=[triton.Config(consts, num_warps=cfg["num_warps"],
                                                       num_stages=cfg["num_stages"])],
                                key=["M", "N", "K"])(matmul.matmul_kernel)
    ways = {
        "fixed_config": lambda: matmul.matmul_kernel[grid](*args, **consts, DOT_IN_FP32=False,
                                                           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]),
        "tuned": lambda: tuned[grid](*args, DOT_IN_FP32=False),
        "triton_autotune_cached": lambda: autotuned[grid](*args, DOT_IN_FP32=False),
    }
    for fn in ways.values():
        fn(), fn()
    out = {name: per_call_ns(fn, 20, 5) for name, fn in ways.items()}
    out["dispatch_only_tuned_config_for"] = per_call_ns(lambda: tuned.config_for(args, {}), 100_000)
    return out


def populate(url: str) -> None:
    from sqlalchemy import insert

    from db import models, store
    from db.session import session_scope, upgrade
    from devices.fingerprint import live_fingerprint
    from devices.probe import probe
    from search_spaces import registry

    upgrade(url)
    spec = registry.get("matmul")
    dc, _ = probe("cpu")
    fp = live_fingerprint(dc)
    now = datetime.now(timezone.utc)
    with session_scope(url) as s:
        dc_id, fp_id = store.store_identity(s, dc.to_json(), {**fp.to_json(), "hash": fp.hash})
        rows, cfg = [], spec.default(spec.make_key({"M": 64, "N": 64, "K": 64}, "float16"), dc.target)
        for i in range(N_STORED):
            key = spec.make_key({"M": 16 + i, "N": 4096, "K": 4096}, "float16")
            rows.append(dict(kernel="matmul", kernel_version=spec.version, key_hash=key.stable_hash,
                             key=key.to_json(), dtype="float16", device_class_id=dc_id, fingerprint_id=fp_id,
                             config=cfg, config_hash=str(i), median_ms=1.0, default_ms=1.0, speedup=1.0,
                             cv=0.01, trials=1, job_id=None, created_at=now, superseded_at=None))
        s.execute(insert(models.BestConfig), rows)


COLD = r'''
import json, sys, time
import torch, triton  # a model process has these loaded before its first lookup
from tuner import runtime
t0 = time.perf_counter(); runtime.lookup("matmul", M=16, N=4096, K=4096, dtype="float16"); first = time.perf_counter() - t0
cold = []
for m in range(1000, 1100):
    t = time.perf_counter(); runtime.lookup("matmul", M=m, N=4096, K=4096, dtype="float16"); cold.append(time.perf_counter() - t)
t = time.perf_counter(); runtime.lookup("matmul", M=20000, N=4000, K=4100, dtype="float16"); nearest_first = time.perf_counter() - t
t = time.perf_counter(); runtime.lookup("matmul", M=30000, N=4000, K=4100, dtype="float16"); nearest_next = time.perf_counter() - t
cold.sort()
print(json.dumps({"first_lookup_in_process_ms": first * 1e3, "cold_exact_key_median_ms": cold[len(cold)//2] * 1e3,
                  "cold_exact_key_p90_ms": cold[int(len(cold)*0.9)] * 1e3,
                  "nearest_shape_first_scan_ms": nearest_first * 1e3, "nearest_shape_next_ms": nearest_next * 1e3}))
'''


def cold_lookup() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": f"sqlite:///{tmp}/tuner.db"}
        pg = os.environ.get("TUNER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
        try:
            from sqlalchemy import create_engine, text
            admin = create_engine(pg, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
            with admin.connect() as conn:
                conn.execute(text("DROP DATABASE IF EXISTS tuner_bench_lookup WITH (FORCE)"))
                conn.execute(text("CREATE DATABASE tuner_bench_lookup"))
            urls["postgresql"] = pg.rsplit("/", 1)[0] + "/tuner_bench_lookup"
        except Exception as exc:
            out["postgresql_skipped"] = str(exc).splitlines()[0]
        for name, url in urls.items():
            populate(url)
            env = {**os.environ, "TUNER_DB_URL": url, "TUNER_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
            proc = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, check=True)
            out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        if "postgresql" in urls:
            from db.session import dispose_all
            dispose_all()
            with admin.connect() as conn:
                conn.execute(text("DROP DATABASE IF EXISTS tuner_bench_lookup WITH (FORCE)"))
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    args = ap.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp())
    os.environ["TUNER_DEVICE"] = "cpu"
    result = {
        "benchmark": "lookup_overhead", "date": datetime.now(timezone.utc).isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "timing": "CPU; launches in the Triton interpreter (not GPU launch latency)",
        "warm_lookup": warm_lookup(), "launch_64x64x64_fp32_interpreter": launches(),
        "stored_best_configs": N_STORED, "cold_lookup": cold_lookup(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
