"""Runtime lookup overhead, as a model process pays it: the warm lookup and the warm @tuned
dispatch with miss counting on, a miss against a database that accepts connections and never
answers and against a `tuner serve` (TUNER_CONFIG_URL) that does the same (with and without its
copy on disk), the warm path while another thread is stuck in a miss, launches through @tuned
vs a fixed configuration vs triton.autotune, and cold lookups among 10,000 stored configurations.

    .venv/bin/python bench/lookup_overhead.py            # writes bench/results/lookup_overhead.json
    .venv/bin/python bench/lookup_overhead.py --only silent_config_server   # that part alone, merged in

Every figure is a median (min and max beside it). Launch timings run the Triton interpreter on
the CPU (label: interpreter): they show the dispatch layer's cost next to an interpreter launch,
not GPU launch latency. Targets: warm lookup <= 1 us, warm @tuned dispatch <= 2 us, a miss
against a silent database <= the deadline + 5 ms, the warm path unchanged while a miss is stuck.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "lookup_overhead.json"
N_STORED = 10_000
MISSES = 20  # misses timed against the silent database (all within its 3 s connect timeout)


def per_call_ns(stmt, number: int, repeat: int = 7) -> dict:
    runs = timeit.repeat(stmt, number=number, repeat=repeat)
    per = sorted(r / number * 1e9 for r in runs)
    return {"median_ns": statistics.median(per), "min_ns": per[0], "max_ns": per[-1], "calls": number * repeat}


def interleaved_ns(stmts: dict, number: int, repeat: int = 15) -> dict:
    """per_call_ns of several statements, their repeats taken in turn, so that a machine's load
    weighs on each alike (this machine is shared)."""
    runs: dict = {name: [] for name in stmts}
    for _ in range(repeat):
        for name, stmt in stmts.items():
            runs[name].append(timeit.timeit(stmt, number=number) / number * 1e9)
    return {name: {"median_ns": statistics.median(per), "min_ns": min(per), "max_ns": max(per),
                   "calls": number * repeat} for name, per in runs.items()}


def summary_ms(values: list[float]) -> dict:
    return {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values), "n": len(values)}


def use(**env: str) -> None:
    """Point the runtime at new settings (it reads them again after clear_cache)."""
    from tuner import runtime

    for k in ("TUNER_DB_URL", "TUNER_CONFIG_BUNDLE", "TUNER_CONFIG_URL", "TUNER_RUNTIME_DEADLINE_MS"):
        os.environ.pop(k, None)
    os.environ.update(env)
    runtime.clear_cache()


def write_bundle(path: Path) -> None:
    """One stored shape per kernel (matmul 4096^3 fp16, matmul 64^3 fp32), so that a lookup of any
    other shape is a nearest-shape miss: what is counted."""
    from devices.fingerprint import live_fingerprint
    from devices.probe import probe
    from search_spaces import registry

    spec, dc = registry.get("matmul"), probe("cpu")[0]
    fp = live_fingerprint(dc).hash
    entries = []
    for dims, dtype in (({"M": 4096, "N": 4096, "K": 4096}, "float16"), ({"M": 64, "N": 64, "K": 64}, "float32")):
        key = spec.make_key(dims, dtype)
        entries.append({"kernel": "matmul", "kernel_version": key.version, "key_hash": key.stable_hash,
                        "key": key.to_json(), "dtype": dtype, "device_class": dc.slug, "fingerprint": fp,
                        "config": spec.default(key, dc.target), "tuned_at": datetime.now(timezone.utc).isoformat()})
    path.write_text(json.dumps({"format": "tuner-bundle", "version": 1, "entries": entries}))


def warm(bundle: Path) -> dict:
    from tuner import runtime

    use(TUNER_CONFIG_BUNDLE=str(bundle), TUNER_RUNTIME_DEADLINE_MS="60000")
    keys = {"exact": dict(M=4096, N=4096, K=4096), "nearest_counted": dict(M=2048, N=4096, K=4096)}
    levels = {}
    for name, dims in keys.items():
        runtime.lookup("matmul", **dims, dtype="float16")
        runtime.settle(60)
        levels[name] = runtime.explain("matmul", **dims, dtype="float16").level
    # the floors on this machine at this moment: a dict hit on the same key, built from keywords,
    # and from positional values (what bind() does)
    names, values = ("M", "N", "K", "dtype"), (4096, 4096, 4096, "float16")
    table = {("matmul", names, values): 1}

    def bare(kernel, **key):
        return table.get((kernel, tuple(key), tuple(key.values())))

    def bare_bound(*values):
        return table.get(("matmul", names, values))

    lookup, get = runtime.lookup, runtime.bind("matmul", *names)
    get(2048, 4096, 4096, "float16")
    out = interleaved_ns({"exact": lambda: lookup("matmul", M=4096, N=4096, K=4096, dtype="float16"),
                          "nearest_counted": lambda: lookup("matmul", M=2048, N=4096, K=4096, dtype="float16"),
                          "bound_exact": lambda: get(4096, 4096, 4096, "float16"),
                          "bound_nearest_counted": lambda: get(2048, 4096, 4096, "float16"),
                          "baseline_dict_hit": lambda: bare("matmul", M=4096, N=4096, K=4096, dtype="float16"),
                          "baseline_positional_dict_hit": lambda: bare_bound(4096, 4096, 4096, "float16")},
                         100_000)
    for name, level in levels.items():
        out[name]["level"] = level
    out["miss_records_written"] = runtime.flush_misses()  # the counting was on
    return out


def launches(bundle: Path) -> dict:
    """A 64x64x64 fp32 matmul launched three ways in the interpreter (same config for all), and
    the @tuned dispatch alone for a nearest-shape miss (counted)."""
    import torch
    import triton

    from search_spaces import matmul
    from tuner import runtime

    use(TUNER_CONFIG_BUNDLE=str(bundle), TUNER_RUNTIME_DEADLINE_MS="60000")
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
    out["dispatch_only_tuned_exact"] = per_call_ns(lambda: tuned.config_for(args, {}), 100_000)
    miss = (a, b, c, 64, 48, 64, *a.stride(), *b.stride(), *c.stride())  # N=48: a nearest-shape miss
    tuned.config_for(miss, {})
    runtime.settle(60)
    out["dispatch_only_tuned_nearest_counted"] = {
        "level": runtime.explain("matmul", M=64, N=48, K=64, dtype="float32").level,
        **per_call_ns(lambda: tuned.config_for(miss, {}), 100_000)}
    return out


class SilentDatabase:
    """Accepts every TCP connection and never answers: PostgreSQL's driver waits for its reply."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://tuner@127.0.0.1:{self.sock.getsockname()[1]}/tuner"

    @property
    def http_url(self) -> str:  # the same listener as a `tuner serve` that never answers
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"


def silent_database(bundle: Path) -> dict:
    """Misses against a database that never answers (deadline: the default 50 ms), then the warm
    path while another thread waits for such a miss, against the warm path alone."""
    from tuner import runtime

    db = SilentDatabase()
    use(TUNER_DB_URL=db.url)
    t = time.perf_counter()
    runtime.lookup("matmul", M=1, N=4096, K=4096, dtype="float16")
    first = (time.perf_counter() - t) * 1e3
    times = []
    for m in range(2, 2 + MISSES):
        t = time.perf_counter()
        runtime.lookup("matmul", M=m, N=4096, K=4096, dtype="float16")
        times.append((time.perf_counter() - t) * 1e3)
    out = {"deadline_ms": 50.0, "first_miss_in_process_ms": first, "miss": summary_ms(times),
           "answer": runtime.explain("matmul", M=2, N=4096, K=4096, dtype="float16").reason}

    # the warm path alone, then while a thread waits (deadline raised) on a question the database never answers
    use(TUNER_DB_URL=db.url, TUNER_RUNTIME_DEADLINE_MS="600000")
    warm_key = dict(M=4096, N=4096, K=4096, dtype="float8_e4m3fn")  # served without asking the database
    runtime.lookup("matmul", **warm_key)
    out["warm_alone"] = per_call_ns(lambda: runtime.lookup("matmul", **warm_key), 200_000, 5)
    stuck = threading.Thread(target=lambda: runtime.lookup("matmul", M=7, N=4096, K=4096, dtype="float16"),
                             daemon=True)
    stuck.start()
    time.sleep(0.5)  # let it reach the database (the connect timeout is 3 s)
    out["warm_while_a_miss_is_stuck"] = per_call_ns(lambda: runtime.lookup("matmul", **warm_key), 200_000, 5)
    out["stuck_thread_still_waiting_after"] = stuck.is_alive()
    use(TUNER_CONFIG_BUNDLE=str(bundle))
    return out


def timed_misses(first_m: int) -> dict:
    """The first miss of a fresh runtime state, then MISSES more, each a new key (ms)."""
    from tuner import runtime

    t = time.perf_counter()
    runtime.lookup("matmul", M=first_m, N=4096, K=4096, dtype="float16")
    first = (time.perf_counter() - t) * 1e3
    times = []
    for m in range(first_m + 1, first_m + 1 + MISSES):
        t = time.perf_counter()
        runtime.lookup("matmul", M=m, N=4096, K=4096, dtype="float16")
        times.append((time.perf_counter() - t) * 1e3)
    return {"first_miss_in_process_ms": first, "miss": summary_ms(times),
            "answer": runtime.explain("matmul", M=first_m + 1, N=4096, K=4096, dtype="float16").describe()}


def silent_config_server(bundle: Path) -> dict:
    """Misses against a `tuner serve` (TUNER_CONFIG_URL) that accepts and never answers (deadline:
    the default 50 ms; the fetch's own timeout is 10 s): without a copy on disk, then with the copy
    a restart finds, which answers while the refresh waits on the server."""
    from devices.probe import probe
    from tuner import runtime
    from tuner.runtime.client import Options
    from tuner.runtime.sources import HttpSource

    server = SilentDatabase()
    use(TUNER_CONFIG_URL=server.http_url)
    out = {"deadline_ms": 50.0, "without_copy": timed_misses(100)}
    copy = HttpSource(server.http_url, Options(), Path(os.environ["TUNER_HOME"])).copy_path(probe("cpu")[0].slug)
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(json.dumps({**json.loads(bundle.read_text()), "served_by": {"url": server.http_url}}))
    use(TUNER_CONFIG_URL=server.http_url)
    out["with_copy_on_disk"] = timed_misses(200)
    copy.unlink()
    runtime.clear_cache()
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


# a cold lookup waits for its answer here (deadline raised): what is timed is the source's latency
COLD = r'''
import json, statistics, time
import torch, triton  # a model process has these loaded before its first lookup
from tuner import runtime
t0 = time.perf_counter(); runtime.lookup("matmul", M=16, N=4096, K=4096, dtype="float16"); first = time.perf_counter() - t0
cold = []
for m in range(1000, 1100):
    t = time.perf_counter(); runtime.lookup("matmul", M=m, N=4096, K=4096, dtype="float16"); cold.append(time.perf_counter() - t)
t = time.perf_counter(); runtime.lookup("matmul", M=20000, N=4000, K=4100, dtype="float16"); nearest_first = time.perf_counter() - t
t = time.perf_counter(); runtime.lookup("matmul", M=30000, N=4000, K=4100, dtype="float16"); nearest_next = time.perf_counter() - t
print(json.dumps({"first_lookup_in_process_ms": first * 1e3, "cold_exact_key_median_ms": statistics.median(cold) * 1e3,
                  "cold_exact_key_p90_ms": sorted(cold)[int(len(cold) * 0.9)] * 1e3,
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
            env = {**os.environ, "TUNER_DB_URL": url, "TUNER_DEVICE": "cpu", "PYTHONPATH": str(ROOT),
                   "TUNER_RUNTIME_DEADLINE_MS": "60000", "TUNER_MISS_FLUSH_S": "0"}
            env.pop("TUNER_CONFIG_BUNDLE", None)
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
    ap.add_argument("--only", choices=["silent_config_server"],
                    help="run this part alone and replace its figures in the results file")
    args = ap.parse_args()
    for k in [k for k in os.environ if k.startswith("TUNER_")]:
        del os.environ[k]
    os.environ.update(TUNER_HOME=tempfile.mkdtemp(), TUNER_DEVICE="cpu")
    bundle = Path(os.environ["TUNER_HOME"]) / "bundle.json"
    write_bundle(bundle)
    if args.only:
        result = json.loads(args.out.read_text())
        result[args.only] = {"date": datetime.now(timezone.utc).isoformat(), "load_average_at_start": os.getloadavg(),
                             **silent_config_server(bundle)}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result[args.only], indent=2))
        return
    result = {
        "benchmark": "lookup_overhead", "date": datetime.now(timezone.utc).isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_start": os.getloadavg(),
        "timing": "CPU; medians of 7 (5) repeats; launches in the Triton interpreter (not GPU launch latency)",
        "warm_lookup": warm(bundle), "launch_64x64x64_fp32_interpreter": launches(bundle),
        "silent_database": silent_database(bundle), "silent_config_server": silent_config_server(bundle),
        "stored_best_configs": N_STORED, "cold_lookup": cold_lookup(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
