"""The README's main job, timed: `bash scripts/demo` in a fresh TUNER_HOME.

    .venv/bin/python bench/main_job.py           # later runs (.venv installed), median of --rounds; writes
                                                 # bench/results/main_job.json
    .venv/bin/python bench/main_job.py --fresh   # also the first run, as a newcomer's: a fresh clone of HEAD, so
                                                 # scripts/setup creates .venv and installs everything first

Timings are Triton-interpreter timings on this machine's CPU, not GPU figures. A first run's
install time depends on the network and pip's cache; the result says which machine it was.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "main_job.json"


def demo(root: Path) -> tuple[float, dict]:
    """`bash scripts/demo` in root with a fresh TUNER_HOME: (wall seconds, its environment)."""
    # a fresh clone runs its own code (its .venv installs it); the working tree may need PYTHONPATH
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_") and (k != "PYTHONPATH" or root == ROOT)}
    env["TUNER_HOME"] = tempfile.mkdtemp(prefix="tuner-main-job-")
    t = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/demo"], cwd=root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return wall, env


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    ap.add_argument("--fresh", action="store_true", help="time the first run too, in a fresh clone of HEAD")
    ap.add_argument("--rounds", type=int, default=3, help="later runs timed; their median is wall_s")
    args = ap.parse_args()
    root, first = ROOT, None
    load = os.getloadavg()[0]  # other work on the machine slows both runs: recorded beside them
    setup = None
    if args.fresh:
        root = Path(tempfile.mkdtemp(prefix="tuner-fresh-clone-")) / "tuner"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(root)], check=True)
        t = time.perf_counter()  # the install alone, then the demo (whose own setup is then a no-op)
        subprocess.run(["bash", "scripts/setup"], cwd=root, check=True, capture_output=True)
        setup = time.perf_counter() - t
        first, _ = demo(root)
        first += setup
    later = [demo(root) for _ in range(max(1, args.rounds))]
    wall, env = statistics.median(w for w, _ in later), later[-1][1]
    best = json.loads(subprocess.run(
        [str(root / ".venv/bin/tuner"), "best", "matmul", "--shape", "M=256,N=256,K=256", "--dtype", "float32",
         "--json"], cwd=root, env=env, capture_output=True, text=True, check=True).stdout)[0]
    result = {
        "benchmark": "main_job", "command": "bash scripts/demo", "date": datetime.now(timezone.utc).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1m": {"start": round(load, 1), "end": round(os.getloadavg()[0], 1)},
        "timing": "triton-interpreter (CPU; not GPU figures)", "wall_s": round(wall, 1), "target_wall_s": 120,
        "later_runs_s": [round(w, 1) for w, _ in later],
        "first_run_s": round(first, 1) if first is not None else None,
        "first_run_install_s": round(setup, 1) if setup is not None else None,
        "first_run": "fresh clone: python3 -m venv and pip install -e .[dev] from pip's configured indexes, then the "
                     "demo" if first is not None else "not measured (--fresh)",
        "key": "matmul M=N=K=256 float32, 20 trials, seed 0", "best_config": best["config"],
        "best_ms": best["median_ms"], "default_ms": best["default_ms"], "speedup_over_default": best["speedup"],
        "trials": best["trials"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
