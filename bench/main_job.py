"""The README's main job, timed: `bash scripts/demo` in a fresh TUNER_HOME.

    .venv/bin/python bench/main_job.py        # writes bench/results/main_job.json

Timings are Triton-interpreter timings on this machine's CPU, not GPU figures.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "main_job.json"


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="results file (default: %(default)s)")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="tuner-main-job-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    env["TUNER_HOME"] = home
    t = time.perf_counter()
    proc = subprocess.run(["bash", "scripts/demo"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    best = json.loads(subprocess.run(
        [str(ROOT / ".venv/bin/tuner"), "best", "matmul", "--shape", "M=256,N=256,K=256", "--dtype", "float32",
         "--json"], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout)[0]
    result = {
        "benchmark": "main_job", "command": "bash scripts/demo", "date": datetime.now(timezone.utc).isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "timing": "triton-interpreter (CPU; not GPU figures)", "wall_s": round(wall, 1), "target_wall_s": 120,
        "key": "matmul M=N=K=256 float32, 20 trials, seed 0", "best_config": best["config"],
        "best_ms": best["median_ms"], "default_ms": best["default_ms"], "speedup_over_default": best["speedup"],
        "trials": best["trials"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
