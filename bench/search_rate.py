"""The live search's rate: trials per minute of `tuner tune`'s search loop (search/loop.py
run_batch on a fresh database), and where its time goes: blocked on the benchmark process, or
in the search's own work (store, tell, propose) while the benchmark process waits or measures.

    .venv/bin/python bench/search_rate.py                          # the interpreter, 128^3 fp32
    .venv/bin/python bench/search_rate.py --device cuda:0          # a GPU, 4096^3 fp16
    OMP_NUM_THREADS=1 .venv/bin/python bench/search_rate.py --depths 1,2

--depths overrides how many trials the search keeps in flight (default: the harness's width,
the compile pool's size on a GPU, 1 on the interpreter). With two or more, the harness hands
the next built trial to the benchmark process before the search's turn, so the two overlap
where there is a core for each. Each depth runs --rounds times, alternating, each round a new
database and seed; the fastest round is kept. Appends to bench/results/search_rate.md.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "search_rate.md"


def one(device: str, shape: str, dtype: str, trials: int, depth: int | None, seed: int) -> dict:
    from harness.harness import Harness
    from search import strategies
    from tuner import settings as settings_mod
    from tuner.request import build_request
    from tuner.tune import prepare, tune_local

    os.environ["TUNER_HOME"] = tempfile.mkdtemp(prefix="tuner-search-rate-")
    settings_mod.get.cache_clear()
    blocked = []
    receive, width = Harness._receive, Harness.width

    def timed_receive(self, sent):  # the search loop blocked on the benchmark process
        t = time.perf_counter()
        try:
            return receive(self, sent)
        finally:
            blocked.append(time.perf_counter() - t)

    Harness._receive = timed_receive
    if depth is not None:
        Harness.width = lambda self, device: depth
    try:
        req = build_request("matmul", [shape], [dtype], trials, strategies.DEFAULT, seed)
        out = tune_local(prepare(req, settings_mod.get(), device))
    finally:
        Harness._receive, Harness.width = receive, width
    key = out.keys[0]
    waited = sum(blocked[:key.trials])  # the search's trials come first, then the final re-measurement
    return {"trials": key.trials, "search_s": key.search_s, "blocked_s": waited,
            "own_s": key.search_s - waited, "startup_s": out.startup_s, "best_ms": key.median_ms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape")
    ap.add_argument("--dtype")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--depths", default="", help="trials in flight, comma-separated (default: the harness's)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the markdown file to write (default: %(default)s)")
    args = ap.parse_args()
    cpu = args.device == "cpu"
    if cpu:
        os.environ["TRITON_INTERPRET"] = "1"
    shape = args.shape or ("M=128,N=128,K=128" if cpu else "M=4096,N=4096,K=4096")
    dtype = args.dtype or ("float32" if cpu else "float16")
    depths: list[int | None] = [int(d) for d in args.depths.split(",") if d] or [None]
    runs: dict = {d: [] for d in depths}
    for r in range(args.rounds):
        for d in (depths if r % 2 == 0 else depths[::-1]):
            runs[d].append(one(args.device, shape, dtype, args.trials, d, seed=r))
            x = runs[d][-1]
            print(f"round {r + 1}, depth {d or 'default'}: {x['trials']} trials in {x['search_s']:.2f} s "
                  f"({x['trials'] / x['search_s'] * 60:.0f}/min), blocked {x['blocked_s']:.2f} s, "
                  f"own {x['own_s']:.2f} s", flush=True)
    label = "triton-interpreter (CPU; not GPU figures)" if cpu else _gpu_name(args.device)
    lines = [f"## {label}: matmul {shape} {dtype}, {args.trials} trials",
             "", f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}; {os.cpu_count()} cores; "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; fastest of {args.rounds} rounds", "",
             "| in flight | search s | trials/min | blocked on the benchmark s | search's own s | harness start s |",
             "|---|---:|---:|---:|---:|---:|"]
    for d, xs in runs.items():
        x = min(xs, key=lambda x: x["search_s"] / x["trials"])
        lines.append(f"| {d or 'default'} | {x['search_s']:.2f} | {x['trials'] / x['search_s'] * 60:.0f} | "
                     f"{x['blocked_s']:.2f} | {x['own_s']:.2f} | {x['startup_s']:.1f} |")
    section = "\n".join(lines) + "\n"
    head = "# The live search's rate (bench/search_rate.py)\n\n"
    old = args.results.read_text() if args.results.exists() else head
    args.results.write_text(old.rstrip("\n") + "\n\n" + section)
    print(section)


def _gpu_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(torch.device(device))


if __name__ == "__main__":
    main()
