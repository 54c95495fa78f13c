"""Timing a launch: warm-up, repetitions until a minimum time, early stop, robust statistics,
rotating input sets, and (on a GPU) CUDA-graph replays."""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable, Iterator, Sequence


def summarize(samples_ms: list[float]) -> tuple[float, float, float, float]:
    """(median, p20, p80, coefficient of variation) of the samples."""
    xs = sorted(samples_ms)
    n = len(xs)

    def pct(p: float) -> float:  # linear interpolation between closest ranks
        if n == 1:
            return xs[0]
        pos = p * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)

    mean = statistics.fmean(xs)
    cv = statistics.pstdev(xs) / mean if n > 1 and mean > 0 else 0.0
    return statistics.median(xs), pct(0.2), pct(0.8), cv


def _repeat(run_once: Callable[[], float], reps: int, min_time_s: float,
            early_stop_ms: float | None) -> tuple[list[float], bool]:
    samples: list[float] = []
    spent = 0.0
    while len(samples) < max(1, reps) or spent < min_time_s * 1e3:
        ms = run_once()
        samples.append(ms)
        spent += ms
        if early_stop_ms is not None and len(samples) == 1 and ms > early_stop_ms:
            return samples, True  # clearly slower than the best so far: one sample says enough
        if len(samples) >= max(1, reps) * 10:
            break
    return samples, False


Launch = Callable[[], object]


def _rotation(fn: Launch | Sequence[Launch]) -> Iterator[Launch]:
    """One launch per repetition, cycling through the input sets (a single callable: one set)."""
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    if not fns:
        raise ValueError("nothing to time: no launch given")
    return itertools.cycle(fns)


def time_cpu(fn: Launch | Sequence[Launch], warmup: int, reps: int, min_time_s: float = 0.0,
             early_stop_ms: float | None = None) -> tuple[list[float], bool]:
    """Wall time of fn with perf_counter (the Triton interpreter runs synchronously).

    fn may be a list of launches, one per input set: repetitions take them in turn."""
    launches = _rotation(fn)
    for _ in range(warmup):
        next(launches)()

    def once() -> float:
        f = next(launches)
        t = time.perf_counter()
        f()
        return (time.perf_counter() - t) * 1e3

    return _repeat(once, reps, min_time_s, early_stop_ms)


_flush_buffers: dict[str, object] = {}


def capture_graphs(fns: Sequence[Launch], device: str = "cuda") -> list[Launch]:
    """One CUDA graph per launch, returned as their replay functions (GPU only).

    Every launch runs once on a side stream first, so compilation, module loading and the
    caching allocator's first allocation happen outside the capture (as torch's docs and
    Triton's do_bench_cudagraph do); the output a launch allocates during capture lives in the
    graph's private pool, and its pointers are baked into the graph, so a rotated input set
    needs a graph of its own.
    """
    import torch

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for f in fns:
            f()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    graphs = []
    for f in fns:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            f()
        graphs.append(g)
    torch.cuda.synchronize(device)
    return [g.replay for g in graphs]


def time_cuda(fn: Launch | Sequence[Launch], warmup: int, reps: int, min_time_s: float = 0.0,
              early_stop_ms: float | None = None, device: str = "cuda",
              cuda_graph: bool = False) -> tuple[list[float], bool]:
    """Device time of fn with CUDA events, L2 flushed before every repetition (not timed).

    fn may be a list of launches, one per input set: repetitions take them in turn. With
    cuda_graph, each launch is captured once and its replays are timed, which leaves out the
    host-side launch cost (Python, argument packing) that eager timing of a short kernel includes.

    Written to the CUDA event and graph APIs as Triton's do_bench and do_bench_cudagraph use
    them; this machine has no GPU, so it runs only where the device tool lends one.
    """
    import torch

    if device not in _flush_buffers:  # larger than any L2 (H100: 50 MB, MI300X: 256 MB Infinity Cache)
        _flush_buffers[device] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    flush = _flush_buffers[device]
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    if cuda_graph:
        fns = capture_graphs(fns, device)
    launches = _rotation(fns)
    for _ in range(warmup):
        next(launches)()
    torch.cuda.synchronize(device)

    def once() -> float:
        f = next(launches)
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        f()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    return _repeat(once, reps, min_time_s, early_stop_ms)


def interleaved(launch: dict[str, Launch], device: str, rounds: int) -> dict[str, list[float]]:
    """The median of each contender per round, the contenders' order rotating between rounds so
    that none always runs first (warm caches, clocks): the benchmarks' comparisons of a tuned
    configuration with its rivals. On the interpreter perf_counter, on a GPU CUDA events with
    the L2 flushed."""
    names = list(launch)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if device == "cpu":
                samples, _ = time_cpu(launch[name], warmup=1, reps=5)
            else:
                samples, _ = time_cuda(launch[name], warmup=10, reps=50, min_time_s=0.1, device=device)
            per_round[name].append(statistics.median(samples))
    return per_round


def interpreter_do_bench(fn, quantiles=None, warmup=25, rep=100) -> list[float]:
    """triton.testing.do_bench's call counts on perf_counter, for @triton.autotune in the
    interpreter (which has no driver to time with): one call, five to estimate, then warm-up and
    repetitions sized to 25 ms and 100 ms. Returns [median, p20, p80] in ms."""
    fn()
    t = time.perf_counter()
    for _ in range(5):
        fn()
    estimate_ms = (time.perf_counter() - t) / 5 * 1e3
    for _ in range(max(1, int(warmup / estimate_ms))):
        fn()
    times = []
    for _ in range(max(1, int(rep / estimate_ms))):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    median, p20, p80, _ = summarize(times)
    return [median, p20, p80]

