"""Hold each kernel's constraints against what the real compilers build, for GPUs not present.

For every configuration of a kernel's space on an architecture (sm_90 = H100, gfx942 = MI300X),
ask the kernel module's `check` whether it may run, then build it with Triton's compiler for
that architecture on this machine (harness/cross_compile.py) and read what the driver
would see: shared memory/LDS, registers, spills. The promise under test is that a configuration
the constraints accept never costs a trial by failing to build or load, and the price of it:
configurations they refuse that build cleanly (space the search never sees).

    .venv/bin/python bench/constraint_check.py                  # all kernels, sm_90 and gfx942
    .venv/bin/python bench/constraint_check.py --accepted 300 --refused 100 --arch gfx942

Writes bench/results/constraints.{json.gz,md} (--out names the pair). Builds use a fresh Triton
cache, so the compile seconds are real, but they are this host's CPU seconds, not a GPU host's.
Nothing here runs a kernel: whether a clean build is fast is for the sweeps to say. "Spills"
means more than 16 bytes a thread (harness/cross_compile.py says why).
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import queue
import random
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# kernel, shape, dtypes: shapes large enough that no block is refused for exceeding the problem
CASES = [("matmul", {"M": 4096, "N": 4096, "K": 4096}, ("bfloat16", "float32")),
         ("softmax", {"M": 4096, "N": 65536}, ("bfloat16", "float32")),
         # the LoRA kernels in the dtypes vLLM launches them in; attention at both head dimensions
         # LLMs use, causal (two loops) and full (one)
         ("lora_shrink", {"M": 4096, "K": 4096, "RANK": 128, "SLICES": 2, "LORAS": 4}, ("bfloat16",)),
         ("lora_expand", {"M": 4096, "N": 4096, "RANK": 128, "SLICES": 2, "LORAS": 4}, ("bfloat16",)),
         ("flash_attention", {"BH": 32, "N_CTX": 4096, "HEAD_DIM": 128, "STAGE": 3}, ("bfloat16",)),
         ("flash_attention", {"BH": 32, "N_CTX": 4096, "HEAD_DIM": 64, "STAGE": 1}, ("bfloat16",)),
         ("fused_moe", {"E": 8, "N": 14336, "K": 4096, "topk": 2, "M": 4096}, ("bfloat16", "float32")),
         # DeepSeek-V3 at TP 8 (vLLM's E=256,N=256 files) in each quantization scheme
         ("fused_moe_quant", {"E": 256, "N": 256, "K": 7168, "topk": 8, "M": 4096},
          ("fp8_w8a8", "fp8_w8a8_block128", "int8_w8a16"))]
# parameters that only reorder programs: held fixed, as they change no resource
FIXED = {"matmul": {"GROUP_M": 8}, "fused_moe": {"GROUP_SIZE_M": 8}, "fused_moe_quant": {"GROUP_SIZE_M": 8}}


def build_all(jobs: list[dict], workers: int, timeout_s: float) -> list[dict]:
    """Build every job in `workers` build processes sharing one fresh Triton cache."""
    from harness.cross_build import Builder
    from devices.targets import target_for

    cache = tempfile.mkdtemp(prefix="constraint-check-")
    todo: queue.Queue = queue.Queue()
    for i in range(len(jobs)):
        todo.put(i)
    answers: list[dict | None] = [None] * len(jobs)
    done = [0]

    def work() -> None:
        builder = Builder(cache)
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                break
            status, got = builder.build(jobs[i], timeout_s)
            if status != "ok":
                answers[i] = {"outcome": status, "why": got}
            else:
                refused = got.load_error(target_for(jobs[i]["arch"]), jobs[i]["config"].get("num_warps", 4))
                answers[i] = {"outcome": "refused" if refused else "spills" if got.spills else "clean",
                              "why": refused, "shared": got.shared_bytes, "registers": got.registers,
                              "spill": got.spill_bytes, "mma": got.mma, "occupancy": got.occupancy,
                              "compile_s": round(got.compile_s, 3)}
            done[0] += 1
            if done[0] % 100 == 0:
                print(f"  {done[0]}/{len(jobs)} built", file=sys.stderr, flush=True)
        builder.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers  # type: ignore[return-value]


# ---- what the model predicted vs what was built ------------------------------------------
def verdict_class(reason: str | None) -> str:
    """The constraint a refusal names: its text before the first ':', and before any '='."""
    if reason is None:
        return "accepted"
    head = reason.split(":")[0]
    return head.split("=")[0] if "=" in head else head


def summarize(rows: list[dict]) -> dict:
    table: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        table[verdict_class(r["check"])][r["outcome"]] += 1
    accepted = [r for r in rows if r["check"] is None]
    costly = [r for r in accepted if r["outcome"] in ("error", "refused", "timeout")]
    lost = [r for r in rows if r["check"] is not None and r["outcome"] == "clean"]
    times = sorted(r["compile_s"] for r in rows if "compile_s" in r)
    return {
        "configs": len(rows), "accepted": len(accepted),
        "accepted_but_failed": len(costly), "accepted_but_spill": sum(r["outcome"] == "spills" for r in accepted),
        "refused_but_clean": len(lost),
        "by_check": {k: dict(v) for k, v in sorted(table.items())},
        "examples_accepted_but_failed": [{"config": r["config"], "why": r["why"]} for r in costly[:5]],
        "examples_refused_but_clean": [{"config": r["config"], "check": r["check"]} for r in lost[:5]],
        "compile_s": {"median": times[len(times) // 2], "p90": times[int(len(times) * 0.9)], "max": times[-1]} if times else None,
    }


def markdown(result: dict) -> str:
    out = [f"# Constraints vs the real compilers ({result['date']})", "",
           f"Triton {result['triton']} building for each architecture on {result['host']} "
           "(no GPU: nothing was launched). A config is *clean* when it builds, fits the "
           "architecture's shared memory/LDS and registers, and spills at most 16 bytes a thread "
           "(ptxas stores a word or two even at 72 of 255 registers); *refused* when it "
           "builds but the driver would refuse it at load; *error* when the compiler fails; *timeout* "
           f"when the build took longer than {result['timeout_s']:g} s.",
           f"Command: `{result['command']}`", ""]
    for case in result["cases"]:
        s = case["summary"]
        out += [f"## {case['kernel']} {case['shape']} {case['dtype']} on {case['arch']}", "",
                f"{s['configs']} configs ({case['sampled']}), {s['accepted']} accepted by `check`: "
                f"**{s['accepted_but_failed']} accepted but fail to build or load** (each would cost a trial), "
                f"{s['accepted_but_spill']} accepted but spill, {s['refused_but_clean']} refused but build clean. "
                + (f"Compile s on this host: median {s['compile_s']['median']:.2f}, p90 {s['compile_s']['p90']:.2f}, "
                   f"max {s['compile_s']['max']:.2f}." if s["compile_s"] else ""), "",
                "| check says | clean | spills | refused | error | timeout |", "|---|---:|---:|---:|---:|---:|"]
        for verdict, counts in s["by_check"].items():
            out.append(f"| {verdict} | " + " | ".join(str(counts.get(o, 0)) for o in ("clean", "spills", "refused", "error", "timeout")) + " |")
        out.append("")
        for ex in s["examples_accepted_but_failed"]:
            out.append(f"- accepted but failed: `{json.dumps(ex['config'])}`: {ex['why']}")
        for ex in s["examples_refused_but_clean"]:
            out.append(f"- refused but clean: `{json.dumps(ex['config'])}`: {ex['check']}")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="sm_90,gfx942", help="comma-separated architectures")
    ap.add_argument("--kernel", default=None, help="only this kernel")
    ap.add_argument("--shape", default=None, help="with --kernel: the shape to build for, e.g. M=4096,N=8192")
    ap.add_argument("--dtype", default="bfloat16,float32", help="with --shape: comma-separated dtypes")
    ap.add_argument("--accepted", type=int, default=0,
                    help="build at most this many of the configs check accepts, per case (0: all)")
    ap.add_argument("--refused", type=int, default=0,
                    help="build at most this many of the configs check refuses, per case (0: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile processes")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds one build may take")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "constraints"))
    args = ap.parse_args()
    import triton

    from search_spaces import registry
    from devices.targets import target_for

    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "triton": triton.__version__,
              "host": f"{platform.machine()} CPU with {os.cpu_count()} cores",
              "command": "python bench/constraint_check.py " + " ".join(sys.argv[1:]), "timeout_s": args.timeout,
              "cases": []}
    cases = CASES
    if args.shape:
        if not args.kernel:
            ap.error("--shape needs --kernel")
        dims = dict(part.split("=", 1) for part in args.shape.split(","))
        cases = [(args.kernel, {k: int(v) for k, v in dims.items()}, tuple(args.dtype.split(",")))]
    for kernel, dims, dtypes in cases:
        if args.kernel and kernel != args.kernel:
            continue
        spec = registry.get(kernel)
        for arch in args.arch.split(","):
            target = target_for(arch)
            space = [c for c in spec.configs(target)
                     if all(c.get(p, v) == v for p, v in FIXED.get(kernel, {}).items())]
            for dtype in dtypes:
                key = spec.make_key(dims, dtype)
                rng = random.Random(args.seed)
                configs, sampled = [], []
                for side, limit in (("accepted", args.accepted), ("refused", args.refused)):
                    pool = [c for c in space if (spec.check(c, key, target) is None) == (side == "accepted")]
                    if limit and len(pool) > limit:
                        sampled.append(f"{limit} of {len(pool)} {side}")
                        pool = rng.sample(pool, limit)
                    else:
                        sampled.append(f"all {len(pool)} {side}")
                    configs += pool
                sampled = ", ".join(sampled) + (f"; {FIXED[kernel]} held" if kernel in FIXED else "")
                jobs = [{"kernel": kernel, "dims": dims, "dtype": dtype, "arch": arch, "config": c} for c in configs]
                t = time.monotonic()
                print(f"{kernel} {dtype} on {arch}: building {len(jobs)} configs", file=sys.stderr, flush=True)
                answers = build_all(jobs, args.jobs, args.timeout)
                rows = [{"config": c, "check": spec.check(c, key, target), **a} for c, a in zip(configs, answers)]
                shape = "x".join(str(v) for v in dims.values())
                result["cases"].append({"kernel": kernel, "shape": shape, "dtype": dtype, "arch": arch,
                                        "sampled": sampled, "wall_s": round(time.monotonic() - t, 1),
                                        "summary": summarize(rows), "rows": rows})
                s = result["cases"][-1]["summary"]
                print(f"  accepted {s['accepted']}/{s['configs']}, accepted but failed {s['accepted_but_failed']}, "
                      f"spill {s['accepted_but_spill']}, refused but clean {s['refused_but_clean']}",
                      file=sys.stderr, flush=True)
                write(result, args.out)  # after every case: a long run is readable while it goes
    print(markdown(result))


def write(result: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    # every build's row, gzipped like the sweeps in bench/data (a run is ~0.5 MB of JSON)
    with gzip.open(out + ".json.gz", "wt") as f:
        f.write(json.dumps(result, separators=(",", ":")) + "\n")
    Path(out + ".md").write_text(markdown(result) + "\n")


if __name__ == "__main__":
    main()
