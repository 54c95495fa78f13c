"""How long the harness takes to start: the benchmark process alone, and with a compile pool.

    .venv/bin/python bench/startup.py                       # the interpreter, a forced pool of 1 and 2
    .venv/bin/python bench/startup.py --device cuda:0       # a GPU, pools of 1 and 8

Startup is what a one-off `tuner tune` pays before its first trial (a worker pays it once, before
its first message): each process imports torch and triton and, on a GPU, opens the device. The
benchmark process is started first and waited for last, so its startup overlaps the pool's;
`--sequential` times the old order (the benchmark process, then the pool) for comparison.
Every start is repeated --rounds times, alternating the orders; the fastest of each is kept.
Writes bench/results/startup.md (one section per device, replaced on a re-run).
"""
from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "startup.md"


def start(device: str, pool: int, overlapped: bool) -> float:
    from harness.harness import Harness

    with Harness(compile_workers=pool or None, precompile=pool > 0) as h:
        t = time.perf_counter()
        if overlapped or not pool:
            h.start(device)
        else:  # the order before the overlap: wait for the benchmark process, then start the pool
            h._child(device)
            h._pool(device)
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--pools", default=None, help="compile pool sizes, comma-separated (default: 1,2 on the "
                                                  "CPU, 1,8 on a GPU)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, default=RESULTS, help="the markdown file to write (default: %(default)s)")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    pools = [int(p) for p in (args.pools or ("1,2" if args.device == "cpu" else "1,8")).split(",")]
    cases = [(0, True)] + [(p, o) for p in pools for o in (False, True)]
    best = {c: float("inf") for c in cases}
    for r in range(args.rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            best[case] = min(best[case], start(args.device, *case))
            print(f"round {r + 1}: pool {case[0]}, {'overlapped' if case[1] else 'sequential'}: "
                  f"{best[case]:.2f} s", flush=True)
    label = "triton-interpreter (CPU)" if args.device == "cpu" else _gpu_name(args.device)
    lines = [f"## {label}", "", f"- date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
             f"- {os.cpu_count()} cores; fastest of {args.rounds} rounds", "",
             "| compile pool | benchmark process, then pool | side by side |", "|---:|---:|---:|",
             f"| none | {best[(0, True)]:.2f} s | |"]
    lines += [f"| {p} | {best[(p, False)]:.2f} s | {best[(p, True)]:.2f} s |" for p in pools]
    section = "\n".join(lines) + "\n"
    old = args.results.read_text() if args.results.exists() else "# Harness startup (bench/startup.py)\n\n"
    parts = [p for p in old.split("\n## ")[1:] if not p.startswith(label + "\n")]
    head = old.split("\n## ")[0].rstrip("\n") + "\n\n"
    args.results.write_text(head + "".join("## " + p.rstrip("\n") + "\n\n" for p in parts) + section)
    print(section)


def _gpu_name(device: str) -> str:
    import torch
    return torch.cuda.get_device_name(torch.device(device))


if __name__ == "__main__":
    main()
